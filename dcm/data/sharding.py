"""The shard stage: clips → WebDataset tar shards + a manifest.

One job writes one shard, so jobs run in parallel (the Prefect flow maps them) and a killed run keeps
every finished shard: each shard has a sidecar JSON with the fingerprint of its inputs and params, and
a re-run reuses any shard whose sidecar and bytes still match. Shard bytes are a pure function of the
job (sorted inputs, fixed tar metadata, lossless PNG), so the same inputs give byte-identical shards.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcm.config import DCMConfig, config_to_dict
from dcm.data.clip_codec import encode_clip
from dcm.data.ingest import Skip, VideoInput, check_both_splits, discover_videos
from dcm.data.shapes import make_sample
from dcm.data.video_io import VideoError, decode_clips
from dcm.errors import StageError
from dcm.data.shardfiles import MANIFEST, SPLITS, finished_sidecar, remove_stale, shard_paths, shard_writer
from dcm.io import atomic_path, sha256_file, sha256_json, write_json_atomic

CLIP_FORMAT = "png-filmstrip"
SHAPES_ATTRIBUTES = ("shape", "colour", "background", "direction")


class ShardStageError(StageError):
    """The stage cannot finish (e.g. too many inputs skipped); finished shards stay for the re-run."""


@dataclass(frozen=True)
class ShardJob:
    split: str
    index: int
    shapes_range: tuple[int, int] | None = None  # shapes: [start, stop) sample indices
    videos: tuple[VideoInput, ...] = ()  # real videos: the input files of this shard
    fingerprint: str = ""

    @property
    def name(self) -> str:
        return f"{self.split}-{self.index:06d}"


@dataclass
class ShardResult:
    name: str
    split: str
    samples: int
    sha256: str
    bytes: int
    fingerprint: str
    skipped: list[dict] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    reused: bool = False

    def sidecar(self) -> dict:
        record = dict(self.__dict__)
        record.pop("reused")
        return record


def _data_fingerprint(cfg: DCMConfig) -> dict:
    """Everything that changes shard bytes (and nothing else: worker counts do not)."""
    return {"seed": cfg.seed, "data": config_to_dict(cfg.data), "png_compression": cfg.shard.png_compression,
            "format": CLIP_FORMAT}


def plan_shards(cfg: DCMConfig, videos_dir: Path | None = None) -> tuple[list[ShardJob], list[Skip]]:
    """The list of shards this config produces, and the inputs skipped before decoding."""
    base = _data_fingerprint(cfg)
    jobs: list[ShardJob] = []
    if cfg.data.source == "shapes":
        per = cfg.shard.samples_per_shard
        for split, total in (("train", cfg.data.shapes.train_samples), ("val", cfg.data.shapes.val_samples)):
            for index, start in enumerate(range(0, total, per)):
                span = (start, min(start + per, total))
                jobs.append(ShardJob(split, index, shapes_range=span,
                                     fingerprint=sha256_json({**base, "split": split, "range": span})))
        return jobs, []
    folder = Path(videos_dir or cfg.data.videos.dir)
    inputs, skips = discover_videos(folder, cfg.data.videos)
    try:
        check_both_splits(inputs, cfg.data.videos.val_fraction)
    except ValueError as error:
        raise ShardStageError(f"{folder}: {error}") from None
    per = cfg.shard.videos_per_shard
    for split in SPLITS:
        chosen = [v for v in inputs if v.split == split]
        for index, start in enumerate(range(0, len(chosen), per)):
            group = tuple(chosen[start:start + per])
            content = [(v.path, v.caption, sha256_file(folder / v.path)) for v in group]
            jobs.append(ShardJob(split, index, videos=group,
                                 fingerprint=sha256_json({**base, "split": split, "inputs": content})))
    return jobs, skips


def _samples_of(job: ShardJob, cfg: DCMConfig, videos_dir: Path, skipped: list[dict]):
    """Yield (key, clip, caption, metadata) for one job; undecodable videos land in `skipped`."""
    if job.shapes_range is not None:
        for index in range(*job.shapes_range):
            sample, clip = make_sample(cfg.seed, job.split, index, cfg.data)
            yield sample.key, clip, sample.caption, sample.metadata()
        return
    for video in job.videos:
        try:
            clips = decode_clips(videos_dir / video.path, cfg.data)
        except VideoError as reason:
            skipped.append(Skip(video.path, str(reason)).as_dict())
            continue
        stem = sha256_json(video.path)[:16]
        for number, clip in enumerate(clips):
            meta = {"source": "video", "path": video.path, "clip_index": number, "caption": video.caption}
            yield f"{stem}-{number:04d}", clip, video.caption, meta


def write_shard(job: ShardJob, cfg: DCMConfig, out_dir: Path, videos_dir: Path | None = None) -> ShardResult:
    """Write (or reuse, if a finished identical one is on disk) the shard of one job."""
    out_dir = Path(out_dir)
    previous = finished_sidecar(out_dir, job.name, job.fingerprint)
    if previous is not None:
        return ShardResult(**previous, reused=True)
    tar_path, sidecar_path = shard_paths(out_dir, job.name)
    videos_dir = Path(videos_dir or cfg.data.videos.dir)
    skipped: list[dict] = []
    counts: dict[str, Counter] = {a: Counter() for a in SHAPES_ATTRIBUTES}
    pixel_sum, pixel_sq, pixels, samples = np.zeros(3), np.zeros(3), 0, 0
    with atomic_path(tar_path) as tmp, open(tmp, "wb") as handle:
        writer = shard_writer(handle, job.split, job.index)
        for key, clip, caption, meta in _samples_of(job, cfg, videos_dir, skipped):
            meta = {**meta, "key": key, "frames": int(clip.shape[0]), "height": int(clip.shape[1]),
                    "width": int(clip.shape[2]), "fps": cfg.data.fps, "format": CLIP_FORMAT}
            writer.write({"__key__": key, "clip.png": encode_clip(clip, cfg.shard.png_compression),
                          "caption.txt": caption.encode(), "meta.json": json.dumps(meta, sort_keys=True).encode()})
            flat = clip.reshape(-1, 3).astype(np.float64)
            pixel_sum += flat.sum(0)
            pixel_sq += (flat**2).sum(0)
            pixels += len(flat)
            samples += 1
            for attribute in SHAPES_ATTRIBUTES:
                if attribute in meta:
                    counts[attribute][meta[attribute]] += 1
        writer.close()
    result = ShardResult(
        name=job.name, split=job.split, samples=samples, sha256=sha256_file(tar_path),
        bytes=tar_path.stat().st_size, fingerprint=job.fingerprint, skipped=skipped,
        stats={"pixel_sum": pixel_sum.tolist(), "pixel_sq_sum": pixel_sq.tolist(), "pixels": pixels,
               "attributes": {a: dict(sorted(c.items())) for a, c in counts.items() if c}},
    )
    write_json_atomic(sidecar_path, result.sidecar())
    return result


def _dataset_stats(results: list[ShardResult]) -> dict:
    pixels = sum(r.stats.get("pixels", 0) for r in results)
    stats: dict = {}
    if pixels:
        total = np.sum([r.stats["pixel_sum"] for r in results], axis=0)
        squares = np.sum([r.stats["pixel_sq_sum"] for r in results], axis=0)
        mean = total / pixels
        stats["pixel_mean"] = [round(float(v), 4) for v in mean]
        stats["pixel_std"] = [round(float(v), 4) for v in np.sqrt(np.maximum(squares / pixels - mean**2, 0))]
    attributes: dict[str, Counter] = {}
    for result in results:
        for name, counts in result.stats.get("attributes", {}).items():
            attributes.setdefault(name, Counter()).update(counts)
    stats["attributes"] = {name: dict(sorted(c.items())) for name, c in sorted(attributes.items())}
    return stats


def finalize(cfg: DCMConfig, jobs: list[ShardJob], results: list[ShardResult], skips: list[Skip],
             out_dir: Path) -> dict:
    """Check the skip budget, drop shards no longer in the plan, and write the manifest (last)."""
    out_dir = Path(out_dir)
    skipped = [s.as_dict() for s in skips] + [s for r in results for s in r.skipped]
    total_inputs = (len(skips) + sum(len(j.videos) for j in jobs)) if cfg.data.source == "videos" else 0
    if total_inputs and len(skipped) / total_inputs > cfg.data.videos.max_skip_fraction:
        listing = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped[:10])
        raise ShardStageError(
            f"{len(skipped)} of {total_inputs} videos skipped, above data.videos.max_skip_fraction="
            f"{cfg.data.videos.max_skip_fraction} (finished shards are kept for the re-run). {listing}")
    if cfg.data.source == "videos" and sum(r.samples for r in results) == 0:
        raise ShardStageError(f"no clips came out of {cfg.data.videos.dir}: add videos or check data.videos")
    for split in SPLITS:  # every usable video of a split was skipped while decoding
        if cfg.data.source == "videos" and not any(r.samples for r in results if r.split == split):
            lost = [s for r in results if r.split == split for s in r.skipped]
            reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in lost[:5])
            raise ShardStageError(f"no clips came out for the {split} split (its videos were skipped: {reasons}); "
                                  "later stages need both splits: add videos or change data.videos.val_fraction")
    removed = remove_stale(out_dir, {j.name for j in jobs})
    splits = {}
    for split in SPLITS:
        chosen = [r for r in results if r.split == split]
        splits[split] = {
            "samples": sum(r.samples for r in chosen),
            "shards": [{"name": r.name, "path": f"{split}/{r.name}.tar", "samples": r.samples,
                        "sha256": r.sha256, "bytes": r.bytes} for r in chosen],
        }
    manifest = {
        "stage": "shard",
        "source": cfg.data.source,
        "fingerprint": sha256_json(_data_fingerprint(cfg)),
        "clip": {"frames": cfg.data.frames, "height": cfg.data.height, "width": cfg.data.width,
                 "fps": cfg.data.fps, "format": CLIP_FORMAT},
        "splits": splits,
        "inputs": {"total": total_inputs, "skipped": len(skipped)},
        "skipped": sorted(skipped, key=lambda s: s["path"]),
        "stats": _dataset_stats(results),
    }
    write_json_atomic(out_dir / MANIFEST, manifest)
    manifest["removed_stale"] = removed
    return manifest
