"""MLflow model registry: register the evaluated student as `challenger`, gate it against `champion`, and
re-evaluate the champion.

Aliases only (registry stages are deprecated). A version carries its evaluation metrics as tags
`metric.<name>` and its lineage (git commit, DVC hashes of the inputs), so every promotion decision
can be re-checked from the registry alone; the decision itself is recorded as tags on the challenger.
The gate itself is dcm.stages.register.decide.
"""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

import mlflow
from mlflow.exceptions import MlflowException

from dcm.config import DCMConfig
from dcm.errors import StageError
from dcm.model_card import CARD, write_model_card
from dcm.ops.serving.pyfunc import PIPELINE_ARTIFACT
from dcm.ops.tracking import tracking_uri
from dcm.stages.reevaluate import check_reevaluation, run_reevaluate_stage
from dcm.stages.register import CHALLENGER, CHAMPION, decide, flatten_metrics, model_name
from dcm.stock_export import INFO, copy_component, stock_placement

METRIC_TAG = "metric."
REEVALUATION_TAG = "dcm.reevaluation."
MODEL_CODE = Path(__file__).resolve().parent / "serving" / "model_code.py"
PACKAGE = Path(__file__).resolve().parents[1]  # the dcm package: the served model's code
REQUIREMENTS = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "av", "numpy", "pandas",
                "pydantic", "pyyaml", "scipy", "webdataset", "mlflow")


def registry_client(cfg: DCMConfig):
    mlflow.set_tracking_uri(tracking_uri(cfg.tracking))
    return mlflow.MlflowClient()


def version_metrics(version) -> dict[str, float]:
    return {k[len(METRIC_TAG):]: float(v) for k, v in version.tags.items() if k.startswith(METRIC_TAG)}


def version_at(client, name: str, alias: str):
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def alias_version(cfg: DCMConfig, alias: str) -> int | None:
    version = version_at(registry_client(cfg), model_name(cfg), alias)
    return int(version.version) if version is not None else None


def signature():
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema
    inputs = Schema([ColSpec("string", "prompt"), *[ColSpec("long", key, required=False)
                                                    for key in ("seed", "steps", "height", "width", "frames")]])
    outputs = Schema([ColSpec("string", "video_mp4_base64"),
                      *[ColSpec("long", key) for key in ("frames", "height", "width", "steps")]])
    return ModelSignature(inputs=inputs, outputs=outputs)


def requirements() -> list[str]:
    pins = []
    for name in REQUIREMENTS:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return pins


@contextmanager
def registered_folder(folder: Path, metrics: dict) -> Iterator[Path]:
    """The student folder as the registry stores it: a copy (hard links where the filesystem allows, so a large
    student costs no second copy on disk) with any symlinks resolved, since a version must hold everything it
    loads, and its model card rewritten with the evaluate stage's numbers of this student."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / folder.name
        copy_component(folder, copy, link=True)
        (copy / CARD).unlink(missing_ok=True)  # a linked card must not be rewritten in place
        info = json.loads((copy / INFO).read_text())
        own = {k: v for k, v in flatten_metrics(metrics).items() if k.startswith(f"{info['method']}_")}
        write_model_card(copy, info, own, "the evaluate stage, teacher vs students on the same prompts and noise",
                         stock_placement(copy))
        yield copy


def register_challenger(cfg: DCMConfig, folder: Path, metrics: dict, lineage: dict[str, str]) -> dict:
    """Log the pipeline folder as a pyfunc (models-from-code, with this package as code), register a new
    version of dcm-<family>, tag it with metrics and lineage, and point `challenger` at it."""
    client = registry_client(cfg)
    name = model_name(cfg)
    with registered_folder(folder, metrics) as logged:
        info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_CODE), artifacts={"pipeline": str(logged)},
                                       code_paths=[str(PACKAGE)], signature=signature(),
                                       pip_requirements=requirements(), model_config=cfg.serving.model_dump(mode="json"))
    version = mlflow.register_model(info.model_uri, name)
    tags = {**{f"{METRIC_TAG}{k}": str(v) for k, v in flatten_metrics(metrics).items()}, **lineage}
    try:
        for key, value in tags.items():
            client.set_model_version_tag(name, version.version, key, value)
        client.set_registered_model_alias(name, CHALLENGER, version.version)
    except Exception:
        # A version without its metrics could never pass the gate honestly: leave no half-registered version.
        client.delete_model_version(name, version.version)
        raise
    return {"name": name, "version": int(version.version), "model_uri": info.model_uri}


def promote(cfg: DCMConfig) -> dict:
    """Move `champion` to the challenger if it passes the gate; record the decision either way."""
    client, name = registry_client(cfg), model_name(cfg)
    challenger = version_at(client, name, CHALLENGER)
    if challenger is None:
        raise StageError(f"{name} has no '{CHALLENGER}' version: run the pipeline (dvc repro) to register one")
    champion = version_at(client, name, CHAMPION)
    if champion is not None and champion.version == challenger.version:
        return {"name": name, "challenger": int(challenger.version), "champion": int(champion.version),
                "promoted": False, "reasons": ["the challenger already is the champion"]}
    decision = decide(cfg.registry, cfg.data.source, version_metrics(challenger),
                      version_metrics(champion) if champion is not None else None)
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, challenger.version)
    record = {"dcm.promotion.decision": "promoted" if decision.promote else "rejected",
              "dcm.promotion.compared_to": str(champion.version) if champion is not None else "none",
              "dcm.promotion.reasons": "; ".join(decision.reasons)[:4900]}
    for key, value in record.items():
        client.set_model_version_tag(name, challenger.version, key, value)
    now = version_at(client, name, CHAMPION)
    return {"name": name, "challenger": int(challenger.version), "promoted": decision.promote,
            "champion": int(now.version) if now is not None else None, "reasons": decision.reasons}


def rollback(cfg: DCMConfig, version: int) -> dict:
    """Point `champion` back at an earlier version (it must exist); recorded on that version."""
    client, name = registry_client(cfg), model_name(cfg)
    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise StageError(f"{name} has no version {version}; `mlflow ui` lists the registered versions") from None
    previous = version_at(client, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, str(version))
    client.set_model_version_tag(name, str(version), "dcm.promotion.decision",
                                 f"rollback from {previous.version if previous else 'none'}")
    return {"name": name, "champion": version, "previous": int(previous.version) if previous else None}


def download_version(cfg: DCMConfig, dest: Path, version: int | None = None) -> tuple[int, Path]:
    """A registered version's pipeline folder (default: the champion's), fetched from the registry into `dest`
    (replaced)."""
    client, name = registry_client(cfg), model_name(cfg)
    if version is None:
        champion = version_at(client, name, CHAMPION)
        if champion is None:
            raise StageError(f"{name} has no '{CHAMPION}' version: run the pipeline first (make run)")
        version = int(champion.version)
    if dest.exists():
        shutil.rmtree(dest)
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dest)))
    except MlflowException as error:
        raise StageError(f"{name} version {version} cannot be fetched ({error.message}); `mlflow ui` lists the "
                         "registered versions") from None
    artifacts = mlflow.models.Model.load(str(local)).flavors["python_function"]["artifacts"]
    return version, local / artifacts[PIPELINE_ARTIFACT]["path"]


def download_champion(cfg: DCMConfig, dest: Path) -> tuple[int, Path]:
    """The champion's DCMPipeline folder, fetched from the registry into `dest` (replaced)."""
    return download_version(cfg, dest)


def registered_versions(cfg: DCMConfig) -> tuple[list[int], int | None]:
    """Every registered version of the model (newest first) and the champion's number."""
    client, name = registry_client(cfg), model_name(cfg)
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return [], None
    champion = version_at(client, name, CHAMPION)
    return sorted((int(v.version) for v in versions), reverse=True), int(champion.version) if champion else None


def reevaluate_champion(cfg: DCMConfig, on_result: Callable[[str, dict], None] | None = None) -> dict:
    """The champion evaluated again and held to the gate against its recorded metrics; the verdict is tagged
    on the version (`dcm.reevaluation.result`: ok or regression, with reasons)."""
    check_reevaluation(cfg)  # before the download and the teacher's generation
    version, folder = download_champion(cfg, Path(cfg.registry.reevaluation_dir) / "champion")
    client, name = registry_client(cfg), model_name(cfg)
    recorded = version_metrics(client.get_model_version(name, str(version)))
    result = run_reevaluate_stage(cfg, folder, recorded, on_result)
    verdict = "regression" if result["regression"] else "ok"
    for key, value in {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "result": verdict,
                       "reasons": "; ".join(result["reasons"])[:4900]}.items():
        client.set_model_version_tag(name, str(version), REEVALUATION_TAG + key, value)
    return {"name": name, "version": version, **result}
