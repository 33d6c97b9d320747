"""Champion re-evaluation: the registered `champion`, as registered, evaluated again against the current
teacher, code and libraries on the same prompts and noise, and held to the champion gate against its own
recorded metrics. A failure is a regression — of the environment, the teacher or the evaluation, since
the weights did not change. Fetching the champion and recording the verdict on it is dcm.ops.registry's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from dcm.config import DCMConfig
from dcm.eval.vbench_weights import check_weights
from dcm.stages.evaluate import evaluate_students
from dcm.stages.register import decide, flatten_metrics


def check_reevaluation(cfg: DCMConfig) -> None:
    """What can fail at once, before the champion is downloaded and the teacher generates."""
    check_weights(cfg.evaluate.vbench.dimensions)


def run_reevaluate_stage(cfg: DCMConfig, folder: Path, recorded: dict[str, float],
                         on_result: Callable[[str, dict], None] | None = None) -> dict:
    """Evaluate the champion's pipeline `folder` and decide it against the metrics it was registered with."""
    check_reevaluation(cfg)
    # resume=False: the point is to measure again, never to reuse an earlier night's rows
    result = evaluate_students(cfg, {"dcm": folder}, Path(cfg.registry.reevaluation_dir), on_result, resume=False)
    decision = decide(cfg.registry, cfg.data.source, flatten_metrics(result["metrics"]), recorded)
    return {"regression": not decision.promote, "reasons": decision.reasons, "metrics": result["metrics"],
            "files": result["files"]}
