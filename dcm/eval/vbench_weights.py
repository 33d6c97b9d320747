"""What each VBench dimension reads from VBENCH_CACHE_DIR, checked before vbench runs.

vbench 0.1.5 answers a missing checkpoint by shelling out to wget; on a machine without internet that
fails deep inside a dimension with an unrelated message. We check first and name the file instead.

Stand-ins: a random checkpoint with the real architecture, placed at vbench's own path with a
`<file>.stand-in` marker beside it. They exercise the wiring on machines that cannot download weights
(ours, CI); every score computed from one is labelled meaningless.
"""

from __future__ import annotations

from pathlib import Path

from dcm.errors import StageError

# Paths relative to VBENCH_CACHE_DIR, as vbench.utils.init_submodules(local=True) expects them.
REQUIRED: dict[str, tuple[str, ...]] = {
    "temporal_flickering": (),
    "motion_smoothness": ("amt_model/amt-s.pth",),
    "dynamic_degree": ("raft_model/models/raft-things.pth",),
    "subject_consistency": ("dino_model/facebookresearch_dino_main", "dino_model/dino_vitbase16_pretrain.pth"),
    "background_consistency": ("clip_model/ViT-B-32.pt",),
    "aesthetic_quality": ("clip_model/ViT-L-14.pt", "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"),
    "imaging_quality": ("pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",),
    "human_action": ("umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth",),
    "temporal_style": ("ViCLIP/ViClip-InternVid-10M-FLT.pth",),
    "overall_consistency": ("ViCLIP/ViClip-InternVid-10M-FLT.pth",),
}
# Dimensions whose architecture ships inside vbench, so a stand-in can be built without downloads.
STAND_IN_BUILDABLE = ("motion_smoothness", "dynamic_degree")
MARKER = ".stand-in"


def cache_dir() -> Path:
    """The folder vbench itself reads: vbench.utils fixes it from VBENCH_CACHE_DIR when first imported."""
    import vbench.utils
    return Path(vbench.utils.CACHE_DIR)


def check_weights(dimensions: list[str], cache: Path | None = None) -> None:
    if not dimensions:
        return  # vbench may not even be installed (a bare GPU box)
    cache = cache or cache_dir()
    missing = [(d, cache / rel) for d in dimensions for rel in REQUIRED[d] if not (cache / rel).exists()]
    if missing:
        listed = "; ".join(f"{d}: {path}" for d, path in missing)
        raise StageError(f"VBench weights missing ({listed}). Download them into VBENCH_CACHE_DIR={cache} "
                         "(see vbench's README for the URLs), or drop those dimensions from "
                         "evaluate.vbench.dimensions in params.yaml")


def stand_in_dimensions(dimensions: list[str], cache: Path | None = None) -> list[str]:
    """The dimensions at least one of whose weights is a stand-in."""
    if not dimensions:
        return []
    cache = cache or cache_dir()
    return [d for d in dimensions if any((cache / f"{rel}{MARKER}").exists() for rel in REQUIRED[d])]


def write_stand_ins(cache: Path, dimensions: tuple[str, ...] = STAND_IN_BUILDABLE, seed: int = 0) -> list[Path]:
    """Random checkpoints with the real architectures at vbench's paths, each marked as a stand-in."""
    import torch
    unknown = set(dimensions) - set(STAND_IN_BUILDABLE)
    if unknown:
        raise ValueError(f"no stand-in builder for {sorted(unknown)}; buildable: {list(STAND_IN_BUILDABLE)}")
    torch.manual_seed(seed)
    written = []
    for dimension in dimensions:
        path = cache / REQUIRED[dimension][0]
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(_random_checkpoint(dimension), path)
        Path(f"{path}{MARKER}").write_text("random weights: scores computed from this file are meaningless\n")
        written.append(path)
    return written


def _random_checkpoint(dimension: str) -> dict:
    """State dicts in the layout each vbench loader reads (AMT: under 'state_dict'; RAFT: DataParallel keys)."""
    if dimension == "motion_smoothness":
        import vbench
        from omegaconf import OmegaConf
        from vbench.third_party.amt.utils.build_utils import build_from_cfg
        config = Path(vbench.__file__).parent / "third_party" / "amt" / "cfgs" / "AMT-S.yaml"
        return {"state_dict": build_from_cfg(OmegaConf.load(config).network).state_dict()}
    from easydict import EasyDict
    from vbench.third_party.RAFT.core.raft import RAFT
    raft = RAFT(EasyDict(model="", small=False, mixed_precision=False, alternate_corr=False))
    return {f"module.{key}": value for key, value in raft.state_dict().items()}
