"""MLflow model registry: register the evaluated student as `challenger`, gate it against `champion`.

Aliases only (registry stages are deprecated). A version carries its evaluation metrics as tags
`metric.<name>` and its lineage (git commit, DVC hashes of the inputs), so every promotion decision
can be re-checked from the registry alone; the decision itself is recorded as tags on the challenger.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from pathlib import Path

from dcm.config import DCMConfig, GateMetric, RegistryConfig
from dcm.errors import StageError
from dcm.tracking import tracking_uri

CHAMPION, CHALLENGER = "champion", "challenger"
METRIC_TAG = "metric."
MODEL_CODE = Path(__file__).resolve().parent / "serving" / "model_code.py"
PACKAGE = Path(__file__).resolve().parent
REQUIREMENTS = ("torch", "diffusers", "transformers", "peft", "accelerate", "safetensors", "av", "numpy", "pandas",
                "pydantic", "pyyaml", "scipy", "webdataset", "mlflow")


def model_name(cfg: DCMConfig) -> str:
    return f"{cfg.registry.model_prefix}-{cfg.teacher.family}"


def flatten_metrics(metrics: dict) -> dict[str, float]:
    """{"dcm_4": {"judge_overall": 0.8}} → {"dcm_4.judge_overall": 0.8} (numbers only)."""
    flat = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": float(v) for k, v in value.items() if isinstance(v, (int, float))})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = float(value)
    return flat


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)


def decide(gate: RegistryConfig, challenger: dict[str, float], champion: dict[str, float] | None) -> Decision:
    """The champion gate as a pure function of the two versions' metrics."""
    reasons, ok = [], True
    speedup = challenger.get(gate.speedup_metric)
    if speedup is None or speedup < gate.min_speedup:
        ok = False
        reasons.append(f"{gate.speedup_metric} = {speedup} is below the minimum {gate.min_speedup}")
    if champion is None:
        return Decision(ok, reasons + ([] if not ok else ["no champion yet: the first passing version becomes champion"]))
    for role, rule in [("primary", gate.primary)] + [("guard", g) for g in gate.guards]:
        verdict = _compare(rule, challenger, champion)
        reasons.append(f"{role} {verdict[1]}")
        ok = ok and verdict[0]
    return Decision(ok, reasons)


def _compare(rule: GateMetric, challenger: dict[str, float], champion: dict[str, float]) -> tuple[bool, str]:
    new, old = challenger.get(rule.metric), champion.get(rule.metric)
    if new is None:
        return False, f"{rule.metric}: the challenger has no value"
    if old is None:
        return True, f"{rule.metric}: the champion has no value; {new:.4g} accepted"
    worse_by = (old - new) if rule.higher_is_better else (new - old)
    passed = worse_by <= rule.tolerance + 1e-12
    sign = "≥" if rule.higher_is_better else "≤"
    bound = old - rule.tolerance if rule.higher_is_better else old + rule.tolerance
    return passed, f"{rule.metric}: {new:.4g} {'passes' if passed else 'fails'} ({sign} {bound:.4g} = champion {old:.4g} ± {rule.tolerance})"


def registry_client(cfg: DCMConfig):
    import mlflow
    mlflow.set_tracking_uri(tracking_uri(cfg.tracking))
    return mlflow.MlflowClient()


def version_metrics(version) -> dict[str, float]:
    return {k[len(METRIC_TAG):]: float(v) for k, v in version.tags.items() if k.startswith(METRIC_TAG)}


def version_at(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException
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


def register_challenger(cfg: DCMConfig, folder: Path, metrics: dict, lineage: dict[str, str]) -> dict:
    """Log the pipeline folder as a pyfunc (models-from-code, with this package as code), register a new
    version of dcm-<family>, tag it with metrics and lineage, and point `challenger` at it."""
    import mlflow
    client = registry_client(cfg)
    name = model_name(cfg)
    info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_CODE), artifacts={"pipeline": str(folder)},
                                   code_paths=[str(PACKAGE)], signature=signature(), pip_requirements=requirements(),
                                   model_config=cfg.serving.model_dump(mode="json"))
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
    decision = decide(cfg.registry, version_metrics(challenger),
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
    from mlflow.exceptions import MlflowException
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
