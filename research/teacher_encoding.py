"""What a packed teacher's storage encoding costs: the same held-out prompts and noise sampled by the teacher as
trained (fp32), decoded from its int8 pack, and rounded to bf16 (the yardstick: what storing it in bf16 would
cost), each scored by the judge, with each clip's PSNR against the fp32 teacher's clip of the same prompt. First,
one step's velocity error of each against the fp32 teacher, beside that of the fp32 teacher under the bf16
autocast the training stages run it with (the error distillation already lives with).

    python research/teacher_encoding.py --parts weights/toy-teacher-gpu --shard-dir SHARDS [--prompts 64] \
        [-S profile=gpu ...]

SHARDS: a shard stage's output of the teacher's profile (the held-out prompts and their real clips), e.g.
`python research/run_stages.py --out OUT --work WORK --stages shard -S profile=gpu` (its WORK/shards).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dcm.config import load_config
from dcm.data.tensors import video_to_clips
from dcm.eval.prompts import heldout_samples
from dcm.eval.scores import clip_scores
from dcm.models.int8_weights import decode_file, encode_file
from dcm.models.packed import unpack_verified
from dcm.models.toy import ToyFamily
from dcm.sampling import generate
from dcm.schedule import sampling_sigmas

REPO = Path(__file__).resolve().parents[1]
VELOCITY_SIGMAS = [0.98, 0.7, 0.4, 0.1]


def int8_round_trip(folder: Path) -> None:
    for path in folder.rglob("*.safetensors"):
        encode_file(path, path.with_name(path.name + ".enc"))
        decode_file(path.with_name(path.name + ".enc"), path)
        path.with_name(path.name + ".enc").unlink()


def psnr(clips: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per clip, in dB, for uint8 clips."""
    error = ((clips.astype(np.float64) - reference.astype(np.float64)) ** 2).reshape(len(clips), -1).mean(axis=1)
    return 10 * np.log10(255.0 ** 2 / np.maximum(error, 1e-12))


@torch.no_grad()
def velocity_errors(variants: dict, prompts: list[dict], real: np.ndarray, sigmas: list[float]) -> dict[str, list[float]]:
    """Per sigma, |v − v_fp32| / |v_fp32| on the real clips noised to that sigma (seeded noise)."""
    reference = variants["fp32"]
    clean = torch.from_numpy(real).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # uint8 (B,F,H,W,C) → [-1, 1] (B,C,F,H,W)
    cond = reference.encode_prompts([p["caption"] for p in prompts])
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    errors: dict[str, list[float]] = {}
    for sigma in sigmas:
        s = torch.full((len(clean),), sigma)
        noised = (1 - sigma) * clean + sigma * noise
        exact = reference.velocity(noised, s, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = reference.velocity(noised, s, cond).float()
        found = {name: teacher.velocity(noised, s, cond) for name, teacher in variants.items() if name != "fp32"}
        for name, velocity in {**found, "fp32 under bf16 autocast": autocast}.items():
            errors.setdefault(name, []).append(round(((velocity - exact).norm() / exact.norm()).item(), 5))
    return errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", type=Path, required=True)
    parser.add_argument("--shard-dir", type=Path, required=True)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    cfg = load_config(REPO / "params.yaml", args.overrides)
    sampling = cfg.teacher.sampling
    prompts, real = heldout_samples(args.shard_dir, args.prompts)
    with tempfile.TemporaryDirectory() as tmp:
        exact = Path(tmp) / "fp32"
        unpack_verified(args.parts, exact)
        shutil.copytree(exact, Path(tmp) / "int8")
        int8_round_trip(Path(tmp) / "int8")
        variants = {name: ToyFamily.load(Path(tmp) / name, cfg.teacher.max_text_tokens, "cpu", torch.float32)
                    for name in ("fp32", "int8")}
        variants["bf16"] = ToyFamily.load(exact, cfg.teacher.max_text_tokens, "cpu", torch.float32)
        for parameter in variants["bf16"].transformer.parameters():
            parameter.data = parameter.data.bfloat16().float()
        print(json.dumps({"sigmas": VELOCITY_SIGMAS, "relative_velocity_error":
                          velocity_errors(variants, prompts[:8], real[:8], VELOCITY_SIGMAS)}), flush=True)
        clips = {}
        for name, teacher in variants.items():
            start = time.perf_counter()
            videos = generate(teacher, [p["caption"] for p in prompts], [p["seed"] for p in prompts], cfg.data.frames,
                              cfg.data.height, cfg.data.width, sampling_sigmas(cfg.schedule, sampling.steps),
                              sampling.guidance_scale, cfg.teacher.negative_prompt, sampling.batch_size)
            clips[name] = video_to_clips(videos)
            scores = clip_scores(clips[name], prompts, real, cfg.data, cfg.judge)
            line = {"weights": name, "seconds": round(time.perf_counter() - start, 1),
                    **{k: round(v, 4) for k, v in scores.items()}}
            if name != "fp32":
                db = psnr(clips[name], clips["fp32"])
                line |= {"psnr_vs_fp32_mean": round(float(db.mean()), 2), "psnr_vs_fp32_min": round(float(db.min()), 2)}
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
