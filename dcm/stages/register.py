"""Stages `register` and `promote`: what a registered version carries, and the champion gate.

The evaluated DCM student becomes a registry version with its evaluation metrics and lineage (git commit,
DVC hashes of its inputs), so every promotion decision can be re-checked from the registry alone. The
gate is a pure function of two versions' metrics; talking to the MLflow registry is the ops layer's job
(dcm.ops.registry).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dcm.config import DCMConfig, GateMetric, RegistryConfig
from dcm.errors import StageError
from dcm.io import read_json
from dcm.stages.paths import EVAL_METRICS, OUTPUT_NAMES, output_folder
from dcm.stages.spec import Output, StageSpec

CHAMPION, CHALLENGER = "champion", "challenger"
LINEAGE_STAGES = ("precompute", "distill_semantic", "distill_detail", "evaluate")

SPEC = StageSpec(
    name="register", command="dcm register", flow="dcm.ops.flows.register",
    params=("teacher.family", "registry.model_prefix", "serving"),  # serving: the limits stored with the version
    deps=(f"${{distill.out_dir}}/{OUTPUT_NAMES['detail']}", f"${{evaluate.out_dir}}/{EVAL_METRICS}"),
    outs=(Output("${registry.out}", cache=False),))


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


def dvc_lineage(root: Path) -> dict[str, str]:
    """DVC's hashes of the outputs this version was built from, read from dvc.lock."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    stages = yaml.safe_load(lock.read_text()).get("stages", {})
    return {f"dvc.{stage}.{out['path']}": out.get("md5", "") for stage in LINEAGE_STAGES
            for out in stages.get(stage, {}).get("outs", [])}


@dataclass(frozen=True)
class Registration:
    name: str  # the registered model, dcm-<family>
    folder: Path  # the DCMPipeline folder to register
    metrics: dict  # the evaluation's metrics.json


def run_register_stage(cfg: DCMConfig) -> Registration:
    """What the register flow puts into the registry: the evaluated DCM student and its metrics."""
    folder, metrics = output_folder(cfg, OUTPUT_NAMES["detail"]), Path(cfg.evaluate.out_dir) / EVAL_METRICS
    for path, stage in ((folder, "distill_detail"), (metrics, "evaluate")):
        if not path.exists():
            raise StageError(f"{path} not found: registration needs the evaluated DCM student; run the pipeline "
                             f"first (dvc repro {stage})")
    return Registration(model_name(cfg), folder, read_json(metrics))


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)


def decide(gate: RegistryConfig, source: str, challenger: dict[str, float],
           champion: dict[str, float] | None) -> Decision:
    """The champion gate of data.source `source` as a pure function of the two versions' metrics."""
    rules = getattr(gate.gates, source)
    reasons, ok = [f"gate of data.source {source}: primary {rules.primary.metric}"], True
    speedup = challenger.get(gate.speedup_metric)
    if speedup is None or speedup < gate.min_speedup:
        ok = False
        reasons.append(f"{gate.speedup_metric} = {speedup} is below the minimum {gate.min_speedup}")
    if champion is None:
        return Decision(ok, reasons + ([] if not ok else ["no champion yet: the first passing version becomes champion"]))
    for role, rule in [("primary", rules.primary)] + [("guard", g) for g in rules.guards]:
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
