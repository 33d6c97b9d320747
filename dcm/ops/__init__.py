"""The operations layer: the only code that imports Prefect or MLflow (CLI, flows, tracking, registry,
serving, status). Layers, top to bottom: dcm.ops → dcm.stages → the library (everything else in dcm)."""

from dcm.ops.env import apply_runtime_defaults

# Before anything imports prefect or a Hugging Face library: project-local PREFECT_HOME, analytics off,
# nothing fetched from a model hub.
apply_runtime_defaults()
