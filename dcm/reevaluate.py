"""Champion re-evaluation: the registered `champion` evaluated again, as registered, against the current
teacher, code and libraries on the same prompts and noise, and held to the champion gate against its own
recorded metrics. A failure is a regression — of the environment, the teacher or the evaluation, since
the weights did not change — recorded on the version and raised to the caller.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from dcm.config import DCMConfig
from dcm.errors import StageError
from dcm.eval.evaluate import evaluate_students
from dcm.eval.vbench_weights import check_weights
from dcm.registry import CHAMPION, decide, flatten_metrics, model_name, registry_client, version_at, version_metrics
from dcm.serving.pyfunc import PIPELINE_ARTIFACT

TAG = "dcm.reevaluation."


def download_champion(cfg: DCMConfig, dest: Path) -> tuple[int, Path]:
    """The champion's DCMPipeline folder, fetched from the registry into `dest` (replaced)."""
    import mlflow
    client, name = registry_client(cfg), model_name(cfg)
    champion = version_at(client, name, CHAMPION)
    if champion is None:
        raise StageError(f"{name} has no '{CHAMPION}' version to re-evaluate: run the pipeline first (make run)")
    if dest.exists():
        shutil.rmtree(dest)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}@{CHAMPION}", dst_path=str(dest)))
    artifacts = mlflow.models.Model.load(str(local)).flavors["python_function"]["artifacts"]
    return int(champion.version), local / artifacts[PIPELINE_ARTIFACT]["path"]


def reevaluate_champion(cfg: DCMConfig, on_result: Callable[[str, dict], None] | None = None) -> dict:
    check_weights(cfg.evaluate.vbench.dimensions)  # before the download and the teacher's generation
    out = Path(cfg.registry.reevaluation_dir)
    version, folder = download_champion(cfg, out / "champion")
    # resume=False: the point is to measure again, never to reuse an earlier night's rows
    result = evaluate_students(cfg, {"dcm": folder}, out, on_result, resume=False)
    client, name = registry_client(cfg), model_name(cfg)
    recorded = version_metrics(client.get_model_version(name, str(version)))
    decision = decide(cfg.registry, flatten_metrics(result["metrics"]), recorded)
    verdict = "ok" if decision.promote else "regression"
    for key, value in {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "result": verdict,
                       "reasons": "; ".join(decision.reasons)[:4900]}.items():
        client.set_model_version_tag(name, str(version), TAG + key, value)
    return {"name": name, "version": version, "regression": not decision.promote, "reasons": decision.reasons,
            "metrics": result["metrics"], "files": result["files"]}
