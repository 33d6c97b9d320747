"""Student folders that stock diffusers loads without this package.

diffusers' WanPipeline already routes two transformers by timestep (Wan2.2's `transformer` above
`boundary_ratio`, `transformer_2` below it): that is DCM's semantic/detail split. A Wan-family student is
therefore written as a WanPipeline folder: the semantic expert as `transformer`, the detail expert merged into
plain weights as `transformer_2`, `boundary_ratio` at the expert threshold, and a FlowMatchEuler scheduler
fitted so that the stock sampler puts its steps where DCM does (dcm/stock_scheduler.py). Guidance was
distilled in: callers pass guidance_scale=1.0 (the model card says so).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import diffusers
from diffusers import FlowMatchEulerDiscreteScheduler

from dcm.config import ScheduleConfig
from dcm.models.lora_io import merged_detail_transformer
from dcm.schedule import inference_sigmas, steps_per_segment
from dcm.stock_scheduler import StockPlacement, fit_flow_match

DETAIL_DIR = "detail"
SCHEDULER_DIR = "scheduler"
DETAIL_TRANSFORMER = "transformer_2"
INDEX = "model_index.json"
INFO = "dcm_student.json"  # what DCMPipeline needs beyond the weights (dcm/pipeline.py)


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem, or links not allowed
        shutil.copy2(source, target)


def copy_component(source: Path, target: Path, link: bool) -> None:
    """A teacher component inside the student folder: hard links for real teachers' multi-GB encoders (no
    second copy on disk, and unlike symlinks they survive moving the folder), plain copies otherwise."""
    shutil.copytree(source, target, symlinks=False, copy_function=_link_or_copy if link else shutil.copy2)


def placement(info: dict) -> StockPlacement:
    """The stock scheduler for a student: exact on the first segment boundary (DCM: the expert switch) and on
    the last step, within `max_deviation` elsewhere."""
    schedule = ScheduleConfig(**info["schedule"])
    edges, steps = list(info["edges"]), info["sample_steps"]
    native = [float(s) for s in inference_sigmas(schedule, steps, edges)]
    exact = steps_per_segment(steps, len(edges))[0] if len(edges) > 1 else 1
    return fit_flow_match(native, min(exact, max(steps - 1, 1)))


def _library(obj) -> list[str]:
    return [type(obj).__module__.split(".")[0], type(obj).__name__]


def write_stock_pipeline(folder: Path, family, info: dict) -> StockPlacement:
    """Turn a written student folder (transformer/, detail/, the teacher's components) into one that
    `diffusers.<family.stock_pipeline>.from_pretrained` loads."""
    fitted = placement(info)
    FlowMatchEulerDiscreteScheduler(**fitted.config).save_pretrained(folder / SCHEDULER_DIR)
    transformer_class = type(family.transformer)
    two_experts = info["detail"] in ("lora", "full")
    if info["detail"] == "lora":
        semantic = transformer_class.from_pretrained(folder / "transformer", use_safetensors=True)
        merged_detail_transformer(semantic, folder / DETAIL_DIR).save_pretrained(folder / DETAIL_TRANSFORMER,
                                                                               safe_serialization=True)
    elif info["detail"] == "full":
        shutil.copytree(folder / DETAIL_DIR / "transformer", folder / DETAIL_TRANSFORMER)
    index = {"_class_name": family.stock_pipeline, "_diffusers_version": diffusers.__version__,
             "transformer": _library(family.transformer),
             "transformer_2": _library(family.transformer) if two_experts else [None, None],
             "scheduler": ["diffusers", FlowMatchEulerDiscreteScheduler.__name__],
             **{name: _library(component) for name, component in family.stock_components().items()},
             "boundary_ratio": info["threshold"] if two_experts else None, "expand_timesteps": False}
    (folder / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return fitted


def stock_placement(folder: Path) -> tuple[str, StockPlacement] | None:
    """(pipeline class, placement) of a student folder written as a stock pipeline, else None."""
    index = json.loads((folder / INDEX).read_text())
    info = json.loads((folder / INFO).read_text())
    if index.get("_class_name") == "DCMPipeline":
        return None
    return index["_class_name"], placement(info)
