"""Semantic-stage training step at Wan2.1-T2V-1.3B (or 14B) size: step time, peak memory and model-FLOPs
utilisation against the bf16 matmul ceiling measured in the same run, teacher online vs precomputed
trajectories, and the sharded checkpoint's save and load times. Random-init weights of the real
architecture (timing does not depend on them).

    python benchmarks/wan_train_step.py [--size 1.3b|14b] [--frames 81 --height 480 --width 832] [--steps 6]
    torchrun --nproc_per_node 4 benchmarks/wan_train_step.py --size 14b ...   # FSDP2, one sample per GPU

The step is the project's own: dcm.train.loop.train running ConsistencyDistillation("semantic") on a
Student around a WanTransformer3DModel, bf16 compute, fp32 master weights, fused AdamW, activation
checkpointing per block (train.gradient_checkpointing), the frozen teacher stored in bf16
(train.frozen_dtype), batch 1 per GPU; under torchrun every model is sharded with FSDP2 as the stages
shard them (dcm/train/sharding.py).

Model FLOPs of one transformer forward over S video tokens and T text tokens (L layers, width d, FFN f):
    F = L · [2·S·(6·d² + 2·d·f) + 4·T·d² + 4·S²·d + 4·S·T·d]
(self-attention q/k/v/o and cross-attention q/o on S tokens, cross-attention k/v on T tokens, the FFN,
then the two attention products of self- and cross-attention). A semantic step costs
    online:     3·F (student forward + backward) + 2·F (teacher, CFG) + 1·F (target network jump)
    trajectory: 3·F + 1·F (the teacher's step is read from disk)
Recomputation under gradient checkpointing is not counted (it is overhead, not model work).
"""

from __future__ import annotations

import copy
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from wan_scale import SIZES, TEXT_TOKENS, as_loaded, card, peak_gib, synchronize, wan_arguments  # this folder's sampling benchmark

from dcm.config import load_config
from dcm.models.dual_expert import Student
from dcm.models.wan import WanFamily
from dcm.train.consistency import ConsistencyDistillation
from dcm.train.distributed import init_from_env, rank_and_world
from dcm.train.loop import train

REPO = Path(__file__).resolve().parents[1]


def forward_flops(tokens: int, text_tokens: int, layers: int, width: int, ffn: int) -> float:
    per_layer = (2 * tokens * (6 * width**2 + 2 * width * ffn) + 4 * text_tokens * width**2
                 + 4 * tokens**2 * width + 4 * tokens * text_tokens * width)
    return float(layers * per_layer)


def matmul_ceiling(device: torch.device, size: int = 8192, repeats: int = 20) -> float:
    """bf16 TFLOP/s of a large square matmul: the ceiling MFU is measured against."""
    if device.type != "cuda":
        size, repeats = 512, 2
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


class RepeatedBatch:
    """A Stream (dcm.train.loop) that serves the same synthetic batch: the step, not the loader, is measured."""

    def __init__(self, sample: dict):
        self.sample = sample

    def batches(self, size: int):
        while True:
            yield [self.sample] * size

    def state(self) -> dict:
        return {}

    def restore(self, state: dict) -> None:
        pass


def synthetic_sample(latent_shape: tuple[int, ...], nodes: int) -> dict:
    latents = torch.randn(latent_shape)
    return {"key": "synthetic", "caption": "", "meta": {}, "tensors": {
        "latents": latents, "text.embeds": torch.randn(TEXT_TOKENS, 4096), "text.mask": torch.ones(TEXT_TOKENS, dtype=torch.bool),
        "trajectory": latents.expand(nodes, *latent_shape).clone(), "trajectory_x0": latents.clone(),
        "trajectory_nodes": torch.arange(nodes - 1, -1, -1)}}


def measure(mode: str, args, base: torch.nn.Module, vae, sample: dict, work: Path, device: torch.device) -> dict:
    _, world = rank_and_world()
    overrides = [*args.overrides, f"distill.teacher_mode={mode}", f"distill.semantic.steps={args.steps}",
                 f"distill.semantic.batch_size={world}", "distill.semantic.log_every=1", "distill.semantic.precision=bf16",
                 f"distill.semantic.checkpoint_every={args.steps}", "distill.semantic.prefetch=thread",
                 "distill.semantic.gradient_checkpointing=true", f"distill.semantic.device={device}",
                 f"distill.semantic.frozen_dtype={'bfloat16' if device.type == 'cuda' else 'float32'}",
                 "distill.semantic.keep_checkpoints=1"]
    cfg = load_config(REPO / "params.yaml", overrides)
    family = WanFamily(copy.deepcopy(base), vae, {}, TEXT_TOKENS)  # the loop shards this teacher in place
    student = Student(family, copy.deepcopy(base).float())
    student.train_only("semantic")
    uncond = {"embeds": torch.zeros(1, TEXT_TOKENS, 4096, device=device),
              "mask": torch.ones(1, TEXT_TOKENS, dtype=torch.bool, device=device)}
    method = ConsistencyDistillation(student, family, cfg, "semantic", uncond,
                                     stored_nodes=list(range(cfg.schedule.euler_nodes)))
    stamps: list[float] = []

    def on_log(step: int, logs: dict) -> None:
        synchronize()
        stamps.append(time.perf_counter())

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    trained = train(method, RepeatedBatch(sample), cfg.distill.semantic, work / mode, cfg.seed, on_log=on_log)
    times = [b - a for a, b in zip(stamps[:-1], stamps[1:])][1:]  # the first steps warm up
    del method, student
    peak = peak_gib(device)
    resumed = None
    if args.resume:  # the same state again, resumed from the checkpoint the run wrote (then nothing to train)
        family = WanFamily(copy.deepcopy(base), vae, {}, TEXT_TOKENS)
        student = Student(family, copy.deepcopy(base).float())
        student.train_only("semantic")
        method = ConsistencyDistillation(student, family, cfg, "semantic", uncond,
                                         stored_nodes=list(range(cfg.schedule.euler_nodes)))
        resumed = train(method, RepeatedBatch(sample), cfg.distill.semantic, work / mode, cfg.seed)
        del method, student
    del family
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"step_s": statistics.median(times), "peak_memory_gib": peak, "steps_timed": len(times),
            "checkpoint_save_s": trained.checkpoint_s[-1],
            **({"checkpoint_load_s": resumed.resume_s, "resumed_from": resumed.resumed_from} if resumed else {})}


def main() -> None:
    parser = wan_arguments(__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--modes", default="online,trajectory")
    parser.add_argument("--resume", action="store_true", help="also time loading the checkpoint the run wrote")
    parser.add_argument("--checkpoint-dir", type=Path, help="where checkpoints go (default: a temporary folder)")
    args = parser.parse_args()
    config = {**SIZES[args.size], "num_layers": args.layers or SIZES[args.size]["num_layers"]}
    rank, world = init_from_env()
    torch.manual_seed(0)
    device = torch.device(f"cuda:{torch.cuda.current_device()}" if args.device == "cuda" else args.device)
    with device:  # initialise on the GPU: a 1.3B random init on the CPU takes minutes
        base = as_loaded(WanTransformer3DModel(**config), torch.bfloat16).requires_grad_(False)
        vae = AutoencoderKLWan().requires_grad_(False)  # its config gives the latent shape; training never decodes
    family = WanFamily(base, vae, {}, TEXT_TOKENS)
    latent_shape = family.latent_shape(args.frames, args.height, args.width)
    tokens = latent_shape[1] * (latent_shape[2] // 2) * (latent_shape[3] // 2)
    flops = forward_flops(tokens, TEXT_TOKENS, config["num_layers"],
                          config["num_attention_heads"] * config["attention_head_dim"], config["ffn_dim"])
    ceiling = matmul_ceiling(device)
    results = {"card": card(device), "gpus": world, "per_gpu_batch": 1, "size": args.size, "layers": config["num_layers"], "torch": torch.__version__, "latents": list(latent_shape),
               "tokens": tokens, "forward_tflop": flops / 1e12, "bf16_matmul_ceiling_tflops": ceiling}
    if rank == 0:
        print(json.dumps(results), flush=True)
    sample = synthetic_sample(latent_shape, load_config(REPO / "params.yaml", args.overrides).schedule.euler_nodes)
    with tempfile.TemporaryDirectory() as tmp:
        work = args.checkpoint_dir or Path(tmp)  # under torchrun every rank must see the same folder
        for mode in args.modes.split(","):
            measured = measure(mode, args, base, vae, sample, work, device)
            model_flops = (6 if mode == "online" else 4) * flops
            measured["model_tflops_per_step"] = model_flops / 1e12
            measured["mfu"] = model_flops / measured["step_s"] / (ceiling * 1e12)
            results[mode] = measured
            if rank == 0:
                print(mode, json.dumps(measured), flush=True)
    if "online" in results and "trajectory" in results:
        results["trajectory_saving"] = 1 - results["trajectory"]["step_s"] / results["online"]["step_s"]
    if args.json and rank == 0:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
