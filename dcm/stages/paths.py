"""Where every stage writes what later stages read: the one place that knows the layout of data/.

The folders come from params.yaml (`shard.dir`, `teacher.out_dir`, ...); the names inside them are fixed
here. Each function returns the path for a config; the DVC templates in the stage specs are built from the
same names (`${teacher.out_dir}/model` ↔ teacher_model_dir). Files only one stage's own writer knows (the
evaluation report's charts, say) are named by that writer and listed in the stage's spec.
"""

from __future__ import annotations

from pathlib import Path

from dcm.config import DCMConfig
from dcm.data.shardfiles import MANIFEST

METRICS = "metrics.json"
TEACHER_MODEL = "model"  # the toy teacher's diffusers folder (real teachers: a SOURCE.json pointing at teacher.path)
EMPTY_PROMPT = "negative_prompt.safetensors"  # the CFG prompt's embedding, beside the latents
BASELINES = ("lcm", "pcm", "single")
BASELINES_DIR, BASELINES_INDEX = "baselines", "index.json"
# method → the name of its exported student (folder `<distill.out_dir>/<name>`, metrics `<name>.json`)
OUTPUT_NAMES = {"semantic": "semantic", "detail": "dcm", **{name: name for name in BASELINES}}
EVAL_METRICS = "metrics.json"  # the evaluation's metrics (DVC metrics; what the registry records)

__all__ = ["MANIFEST", "METRICS", "TEACHER_MODEL", "EMPTY_PROMPT", "BASELINES", "BASELINES_DIR", "BASELINES_INDEX",
           "OUTPUT_NAMES", "shard_manifest", "teacher_model_dir", "teacher_manifest", "latents_manifest",
           "output_folder", "checkpoint_folder", "student_metrics_file", "baselines_folder"]


def shard_manifest(cfg: DCMConfig) -> Path:
    return Path(cfg.shard.dir) / MANIFEST


def teacher_model_dir(cfg: DCMConfig) -> Path:
    """The folder later stages load the teacher from: the trained toy, or the real teacher's teacher.path."""
    return Path(cfg.teacher.out_dir) / TEACHER_MODEL if cfg.teacher.family == "toy" else Path(cfg.teacher.path)


def teacher_manifest(cfg: DCMConfig) -> Path:
    return Path(cfg.teacher.out_dir) / MANIFEST


def latents_manifest(cfg: DCMConfig) -> Path:
    return Path(cfg.precompute.dir) / MANIFEST


def output_folder(cfg: DCMConfig, name: str) -> Path:
    """Where a student's pipeline folder lives: semantic, dcm, or baselines/<lcm|pcm|single>."""
    root = Path(cfg.distill.out_dir)
    return root / BASELINES_DIR / name if name in BASELINES else root / name


def student_metrics_file(cfg: DCMConfig, name: str) -> Path:
    return output_folder(cfg, name).with_name(f"{name}.json")


def baselines_folder(cfg: DCMConfig) -> Path:
    return Path(cfg.distill.out_dir) / BASELINES_DIR


def checkpoint_folder(cfg: DCMConfig, method: str) -> Path:
    root = Path(cfg.distill.checkpoint_dir)
    return root / BASELINES_DIR / method if method in BASELINES else root / method
