"""The model card (README.md) of an exported student folder: what it is, how to load it, how it was made and
how it scored. Hugging Face's front matter keys, so hubs and tools read it too."""

from __future__ import annotations

from pathlib import Path

import yaml

from dcm.stock_scheduler import StockPlacement

CARD = "README.md"
METHODS = {"dcm": "Dual-Expert Consistency Model (semantic expert + LoRA detail expert)",
           "semantic": "DCM's semantic expert alone (stage 1)", "lcm": "latent consistency model (one segment)",
           "pcm": "phased consistency model", "single": "one expert trained on DCM's two segments"}


def _number(value: float) -> str:
    return f"{value:.4g}"


def model_card(info: dict, metrics: dict[str, float], metrics_source: str,
               stock: tuple[str, StockPlacement] | None) -> str:
    """info: the folder's dcm_student.json; metrics: flat name → value; stock: (pipeline class, placement)."""
    method, steps = info["method"], info["sample_steps"]
    front = {"library_name": "diffusers", "pipeline_tag": "text-to-video",
             "tags": ["dcm", "consistency-distillation", "few-step", info["family"]]}
    d = info["defaults"]
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# {info['family']} student: {METHODS.get(method, method)}", "",
             f"A {steps}-step generator distilled from a {info['family']} teacher (content hash "
             f"`{info['teacher_hash'][:16]}`) by dcm's pipeline at {d['frames']}×{d['height']}×{d['width']} "
             "(frames × height × width). Guidance is distilled in: sample with guidance_scale=1.", "", "## Use", ""]
    if stock:
        pipeline, fitted = stock
        lines += ["Stock diffusers, no other package:", "", "```python",
                  f"from diffusers import {pipeline}",
                  f"pipe = {pipeline}.from_pretrained(\"path/to/this/folder\")",
                  f"video = pipe(prompt, num_inference_steps={fitted.steps}, guidance_scale=1.0, "
                  f"num_frames={d['frames']}, height={d['height']}, width={d['width']}, "
                  f"max_sequence_length={info['max_text_tokens']}).frames[0]", "```", "",
                  f"The scheduler places the {fitted.steps} steps at sigmas "
                  f"{', '.join(_number(s) for s in fitted.sigmas)}; DCM's own sampler uses "
                  f"{', '.join(_number(s) for s in fitted.native)} (equal at step indices {fitted.exact}, the expert "
                  f"switch among them; largest difference {_number(fitted.max_deviation)}). Other step counts run the "
                  "scheduler's own spacing. With dcm installed, `DCMPipeline` samples any step count with DCM's "
                  "placement:", ""]
    lines += ["```python", "from dcm.pipeline import DCMPipeline",
              "pipe = DCMPipeline.from_pretrained(\"path/to/this/folder\")",
              f"video = pipe(prompt, num_inference_steps={steps}).frames[0]", "```", "",
              "## How it was made", "",
              f"- method: {method}; expert split at Euler node κ={info['kappa']} of {info['schedule']['euler_nodes']} "
              f"(sigma threshold {_number(info['threshold']) if info['threshold'] is not None else 'none'}); "
              f"segment edges {info['edges']}",
              f"- detail expert: {info['detail'] or 'none'}; training steps of this stage: {info['train_steps']}",
              f"- schedule: {info['schedule']}", "", f"## Scores ({metrics_source})", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|", *(f"| {k} | {_number(v)} |" for k, v in sorted(metrics.items()))]
    else:
        lines += ["None measured at export (no ground truth in the held-out prompts); the evaluate stage's numbers "
                  "travel with the registered version."]
    return "\n".join(lines) + "\n"


def write_model_card(folder: Path, info: dict, metrics: dict[str, float], metrics_source: str,
                     stock: tuple[str, StockPlacement] | None) -> Path:
    path = Path(folder) / CARD
    path.write_text(model_card(info, metrics, metrics_source, stock))
    return path
