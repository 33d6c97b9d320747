"""Process environment the pipeline needs before Prefect, MLflow or Hugging Face libraries are imported.

Defaults only (an explicit setting always wins): Prefect keeps its database inside the project, sends
no analytics, and ships the flows' log lines to the API rather than the terminal, nothing is ever fetched from a model hub, and vbench reads weights from a
project-local cache that users fill themselves.
"""

from __future__ import annotations

import os
from pathlib import Path

# Set by the pipeline flow for the stage commands DVC starts: their flow runs carry PIPELINE_RUN_TAG + its value.
PIPELINE_RUN_ENV = "DCM_PIPELINE_FLOW_RUN_ID"
PIPELINE_RUN_TAG = "pipeline-run:"


def runtime_defaults(root: Path) -> dict[str, str]:
    return {
        "PREFECT_HOME": str(root / ".prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # The flows' INFO lines (training steps, shard counts) go to the flow-run logs in Prefect's UI; the
        # terminal gets warnings only (and progress bars), not Prefect's own chatter about each run.
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",
        "PREFECT_SERVER_EPHEMERAL_ENABLED": "true",
        # The first start of a fresh project migrates Prefect's database; 20 s (the default) is not
        # always enough on a 2-core machine.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "HF_HUB_OFFLINE": "1",
        "VBENCH_CACHE_DIR": str(root / ".cache" / "vbench"),
        "GIT_PYTHON_REFRESH": "quiet",
        "GRADIO_ANALYTICS_ENABLED": "False",  # dcm demo: nothing leaves the machine
    }


def apply_runtime_defaults(root: Path | None = None) -> None:
    for key, value in runtime_defaults(Path(root or Path.cwd()).resolve()).items():
        os.environ.setdefault(key, value)
