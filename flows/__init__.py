"""Prefect flows: orchestration around the `dcm` stage functions (retries, parallel tasks, artifacts)."""

from dcm.env import apply_runtime_defaults

# Before any flow module imports prefect: project-local PREFECT_HOME, analytics off, hub offline.
apply_runtime_defaults()
