"""Sampling and detail-step cost at Wan2.1-T2V-1.3B size, measured in one run on one GPU.

    python benchmarks/wan_scale.py [--frames 81 --height 480 --width 832] [--parts sampling,detail]
                                   [--compile] [--json out.json]

Timing does not depend on weight values, so the models are random-initialised from the real
architecture (diffusers' WanTransformer3DModel with the 1.3B config and AutoencoderKLWan's default, the
Wan2.1 VAE); nothing is downloaded. Prompt embeddings are given directly (text encoding is a separate,
once-per-prompt cost and is not part of either figure).

  sampling  the stock diffusers WanPipeline (50 steps, CFG 5, UniPC, fp32 VAE as its model card loads it,
            eager) vs our DCMPipeline at 4 steps (two semantic + two detail steps, detail weights merged,
            bf16 VAE decode; with --compile, DCMPipeline.compile()), both from the same latents to
            decoded frames on the GPU; and the floor, 4 × one transformer forward + one VAE decode with
            our settings, measured in the same run.
  text      one prompt through UMT5-XXL (Wan's text encoder): once per prompt, outside both figures.
  detail    one detail step (LoRA applied on the fly; LoRA merged into a second weight set) vs one plain
            forward of the semantic expert.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

from dcm.config import LoraConfig, load_config
from dcm.models.dual_expert import DETAIL, Student
from dcm.models.wan import WanFamily
from dcm.pipeline import DCMPipeline
from dcm.schedule import euler_nodes, method_edges

REPO = Path(__file__).resolve().parents[1]
# Wan2.1-T2V-1.3B's transformer/config.json
WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024)
WAN_14B = {**WAN_1_3B, "num_attention_heads": 40, "ffn_dim": 13824, "num_layers": 40}  # Wan2.1-T2V-14B's config
SIZES = {"1.3b": WAN_1_3B, "14b": WAN_14B}
TEXT_TOKENS = 512


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def card(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke run, not a figure)"


def peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def timed(run, repeats: int) -> float:
    """Median seconds of `repeats` calls (after the caller's warm-up)."""
    seconds = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        run()
        synchronize()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def as_loaded(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast as from_pretrained(torch_dtype=dtype) does: the model's _keep_in_fp32_modules stay float32."""
    model.to(dtype)
    keep = {name for m in model.modules() for name in (getattr(m, "_keep_in_fp32_modules", None) or [])}
    for name, module in model.named_modules():
        if any(part in keep for part in name.split(".")):
            module.float()
    return model


def text_encoding_seconds(device: torch.device, repeats: int) -> float:
    """One prompt (512 tokens) through Wan2.1's text encoder, UMT5-XXL's encoder (5.7 B, bf16): the
    once-per-prompt cost both pipelines share, reported beside the sampling figures, not in them."""
    from transformers import UMT5Config, UMT5EncoderModel
    config = UMT5Config(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                        feed_forward_proj="gated-gelu")
    with device:
        encoder = UMT5EncoderModel(config).to(torch.bfloat16).eval().requires_grad_(False)
        ids = torch.randint(0, config.vocab_size, (1, TEXT_TOKENS))
    with torch.no_grad():
        encoder(ids)
        seconds = timed(lambda: encoder(ids), repeats)
    del encoder
    return seconds


def merged_detail(student: Student) -> torch.nn.Module:
    """What DCMPipeline.from_pretrained(detail_weights="merged") builds: the LoRA fused into a copy."""
    merged = copy.deepcopy(student.transformer)
    merged.fuse_lora(adapter_names=[DETAIL])
    merged.unload_lora()
    return merged


def wan_arguments(description: str) -> argparse.ArgumentParser:
    """The shape, model and output arguments both Wan-size benchmarks take."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--size", choices=sorted(SIZES), default="1.3b", help="Wan2.1 architecture: 1.3b or 14b")
    parser.add_argument("--layers", type=int, help="fewer than the architecture's, for a smoke run")
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run of the code path, not a figure")
    parser.add_argument("--json", type=Path)
    parser.add_argument("-S", dest="overrides", action="append", default=[])
    return parser


def main() -> None:
    parser = wan_arguments(__doc__.splitlines()[0])
    parser.add_argument("--teacher-steps", type=int, default=50)
    parser.add_argument("--student-steps", type=int, default=4)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--lora-rank", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--parts", default="text,sampling,detail")
    parser.add_argument("--compile", action="store_true", help="DCMPipeline.compile(): expert blocks + VAE decoder")
    args = parser.parse_args()
    config = {**SIZES[args.size], "num_layers": args.layers or SIZES[args.size]["num_layers"]}
    device = torch.device(args.device)
    results: dict = {"card": card(device), "size": args.size, "layers": config["num_layers"], "torch": torch.__version__, "compile": args.compile,
                     "shape": {"frames": args.frames, "height": args.height, "width": args.width}}
    cfg = load_config(REPO / "params.yaml", args.overrides)
    torch.manual_seed(0)
    with device:  # initialise on the GPU: a 1.3B random init on the CPU takes minutes
        base = as_loaded(WanTransformer3DModel(**config), torch.bfloat16).eval().requires_grad_(False)
        vae_fp32 = AutoencoderKLWan().eval().requires_grad_(False)
    family = WanFamily(base, copy.deepcopy(vae_fp32).to(torch.bfloat16), {}, TEXT_TOKENS)
    latent_shape = (1, *family.latent_shape(args.frames, args.height, args.width))
    tokens = latent_shape[2] * (latent_shape[3] // 2) * (latent_shape[4] // 2)
    results["latents"], results["tokens"] = list(latent_shape), tokens
    print(f"{results['card']}: latents {latent_shape} = {tokens} tokens", flush=True)
    generator = torch.Generator(device).manual_seed(0)
    noise = torch.randn(latent_shape, generator=generator, device=device)
    embeds = torch.randn(1, TEXT_TOKENS, 4096, generator=generator, device=device).to(torch.bfloat16)
    negative = torch.randn(1, TEXT_TOKENS, 4096, generator=generator, device=device).to(torch.bfloat16)
    cond = {"embeds": embeds, "mask": torch.ones(1, TEXT_TOKENS, dtype=torch.bool, device=device)}
    threshold = float(euler_nodes(cfg.schedule)[cfg.distill.kappa])
    detail_sigma = torch.full((1,), threshold / 2, device=device)

    # The detail expert as training leaves it: a LoRA (plus copied conditioning layers) on a copy.
    lora = LoraConfig(**{**cfg.distill.lora.model_dump(), "rank": args.lora_rank, "alpha": args.lora_rank})
    with_lora = Student(family, copy.deepcopy(base))
    with_lora.add_detail_expert("lora", family.detail_modules, lora, threshold)
    as_loaded(with_lora.to(device), torch.bfloat16).eval().requires_grad_(False)
    merged = merged_detail(with_lora)
    plain = Student(family, base)  # the semantic expert alone

    if "text" in args.parts:
        results["text"] = {"umt5_xxl_encode_s": text_encoding_seconds(device, args.repeats)}
        print(json.dumps(results["text"]), flush=True)

    if "detail" in args.parts:
        runs = {"plain_forward_s": lambda: plain.expert_velocity("semantic", noise, detail_sigma, cond),
                "detail_lora_unmerged_s": lambda: with_lora.expert_velocity("detail", noise, detail_sigma, cond)}
        merged_student = Student(family, base)
        merged_student.detail_kind, merged_student.threshold, merged_student.detail_transformer = "full", threshold, merged
        runs["detail_merged_s"] = lambda: merged_student.expert_velocity("detail", noise, detail_sigma, cond)
        for run in runs.values():
            run()
        detail = {name: timed(run, args.repeats) for name, run in runs.items()}
        detail["unmerged_vs_plain"] = detail["detail_lora_unmerged_s"] / detail["plain_forward_s"]
        detail["merged_vs_plain"] = detail["detail_merged_s"] / detail["plain_forward_s"]
        results["detail"] = detail
        print(json.dumps(detail, indent=1), flush=True)
    del with_lora
    if device.type == "cuda":
        torch.cuda.empty_cache()

    if "sampling" in args.parts:
        stock = WanPipeline(tokenizer=None, text_encoder=None, vae=vae_fp32, transformer=base,
                            scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                              num_train_timesteps=1000, flow_shift=3.0))
        stock.set_progress_bar_config(disable=True)

        def teacher(steps: int):
            return stock(prompt_embeds=embeds, negative_prompt_embeds=negative, height=args.height, width=args.width,
                         num_frames=args.frames, num_inference_steps=steps, guidance_scale=args.guidance,
                         latents=noise.clone(), output_type="pt").frames

        teacher(2)  # warm-up before anything is compiled: the stock path runs eager
        stock_decode = timed(lambda: stock.vae.decode(noise).sample, 2)
        teacher_s = timed(lambda: teacher(args.teacher_steps), 1)

        student = Student(family, base)  # as DCMPipeline.from_pretrained(detail_weights="merged") builds it
        student.detail_kind, student.threshold, student.detail_transformer = "full", threshold, merged
        edges = method_edges("dcm", cfg.schedule, cfg.distill)
        info = {"family": "wan", "method": "dcm", "edges": edges, "threshold": threshold, "guidance": None,
                "detail": "full", "schedule": cfg.schedule.model_dump(), "max_text_tokens": TEXT_TOKENS,
                "defaults": {"frames": args.frames, "height": args.height, "width": args.width}}
        ours = DCMPipeline(family, student, info)

        def student_run():
            return ours(num_inference_steps=args.student_steps, latents=noise.clone(), output_type="pt",
                        prompt_embeds=cond).frames

        if args.compile:
            start = time.perf_counter()
            ours.compile()  # both experts' blocks and the VAE decoder
            student_run()
            synchronize()
            results["compile_s"] = time.perf_counter() - start
        student_run()
        forward_s = timed(lambda: plain.expert_velocity("semantic", noise, torch.full((1,), 0.9, device=device), cond),
                          args.repeats)
        decode_s = timed(lambda: family.decode_latents(noise), args.repeats)
        student_s = timed(student_run, args.repeats)
        floor = args.student_steps * forward_s + decode_s
        results["sampling"] = {
            "teacher_stock_s": teacher_s, "teacher_steps": args.teacher_steps, "stock_vae_decode_fp32_s": stock_decode,
            "dcm_s": student_s, "dcm_steps": args.student_steps, "forward_s": forward_s, "vae_decode_bf16_s": decode_s,
            "floor_s": floor, "speedup": teacher_s / student_s, "dcm_vs_floor": student_s / floor,
            "peak_memory_gib": peak_gib(device)}
        print(json.dumps(results["sampling"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
