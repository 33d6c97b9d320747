"""Teacher stage on a tiny toy: exact resume, diffusers-layout output, judge metrics, `dcm generate`."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import av
import pytest

from dcm.config import ConfigError
from dcm.stages.shard import run_shard_stage
from dcm.errors import StageError
from dcm.models.packed import unpack_verified
from dcm.models.toy import ToyFamily
from dcm.stages.teacher import run_teacher_stage
from tests.conftest import REPO, TINY_TEACHER

pytestmark = pytest.mark.fast


@pytest.fixture
def tiny(make_config):
    cfg = make_config(*TINY_TEACHER)
    run_shard_stage(cfg)
    return cfg


def test_stop_and_resume_reproduces_the_uninterrupted_losses(tmp_path, make_config, tiny):
    straight = run_teacher_stage(tiny)
    other = make_config(*TINY_TEACHER, f"teacher.out_dir={tmp_path / 't2'}",
                        f"teacher.checkpoint_dir={tmp_path / 'c2'}")
    with pytest.raises(StageError, match="stopped at step 2 of 4"):
        run_teacher_stage(other, stop_after=2)
    resumed = run_teacher_stage(other)
    assert resumed["resumed_from"] == 2
    assert resumed["losses"] == straight["losses"] and len(straight["losses"]) == 4


def test_gradient_checkpointing_trades_memory_for_time_and_changes_nothing(tmp_path, make_config, tiny):
    straight = run_teacher_stage(tiny)
    recomputed = run_teacher_stage(make_config(*TINY_TEACHER, f"teacher.out_dir={tmp_path / 't2'}",
                                               f"teacher.checkpoint_dir={tmp_path / 'c2'}",
                                               "teacher.toy.train.gradient_checkpointing=true"))
    assert recomputed["losses"] == pytest.approx(straight["losses"], rel=1e-6)


def test_output_is_a_diffusers_folder_with_judge_metrics(tiny):
    result = run_teacher_stage(tiny)
    folder = tiny.teacher.out_dir + "/model"
    index = json.loads(open(f"{folder}/model_index.json").read())
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    teacher = ToyFamily.load(folder, max_text_tokens=0)
    assert teacher.transformer.config.num_layers == 1
    metrics = json.loads(open(f"{tiny.teacher.out_dir}/metrics.json").read())
    assert set(metrics) >= {"final_loss", "judge_overall", "judge_colour", "judge_shape", "judge_motion"}
    assert result["clips"].shape == (3, 4, 16, 16, 3)


def test_generate_writes_a_playable_mp4(tmp_path, tiny):
    run_teacher_stage(tiny)
    overrides = [f"shard.dir={tiny.shard.dir}", f"teacher.out_dir={tiny.teacher.out_dir}", *TINY_TEACHER]
    out = tmp_path / "clip.mp4"
    result = subprocess.run([sys.executable, "-m", "dcm.ops.cli", "generate", "a red circle moving left", "--model", "teacher", "--steps", "5",
                             "--out", str(out), "--params", str(REPO / "params.yaml"),
                             *sum((["-S", o] for o in overrides), [])], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (16, 16, 3)


SHIPPED = REPO / "weights" / "toy-teacher-gpu"


def test_the_shipped_teacher_is_installed_checked_and_scored(make_config):
    """The default's teacher: unpacked from weights/, its hash checked against its record, then scored on the
    held-out prompts (two prompts, two sampler steps: the wiring, not the quality, which its record states)."""
    cfg = make_config("teacher.sampling.eval_prompts=2", "teacher.sampling.steps=2", "teacher.sampling.batch_size=2")
    run_shard_stage(cfg)
    result = run_teacher_stage(cfg)
    record = json.loads((SHIPPED / "teacher_metrics.json").read_text())
    manifest = result["manifest"]
    assert manifest["content_hash"] == record["content_hash"] and manifest["steps"] == 10000
    assert result["metrics"]["pretrained_judge_overall"] == record["metrics"]["judge_overall"] > 0.9
    assert 0 <= result["metrics"]["judge_overall"] <= 1 and manifest["eval_prompts"] == 2
    assert ToyFamily.load(f"{cfg.teacher.out_dir}/model", 16).transformer.config.num_layers == 8


def test_the_shipped_textured_teacher_installs_on_its_profile(make_config):
    """weights/toy-teacher-textured: a partial teacher finished where it stopped (its record says where and how it
    judged), installed with its hash checked on the textured data and scored (the wiring: two prompts, two steps)."""
    textured = REPO / "weights" / "toy-teacher-textured"
    record = json.loads((textured / "teacher_metrics.json").read_text())
    assert "partial" not in record and record["stopped"]["steps"] == 7625 and record["eval_prompts"] == 64
    cfg = make_config(f"teacher.toy.pretrained={textured}", "data.shapes.textures=[plain,striped,checked,speckled]",
                      "data.shapes.train_samples=16", "data.shapes.val_samples=6", "shard.samples_per_shard=8",
                      "teacher.sampling.eval_prompts=2", "teacher.sampling.steps=2", "teacher.sampling.batch_size=2")
    run_shard_stage(cfg)
    result = run_teacher_stage(cfg)
    assert result["manifest"]["content_hash"] == record["content_hash"]
    assert result["metrics"]["pretrained_judge_overall"] == record["metrics"]["judge_overall"] > 0.9
    assert "judge_texture" in result["metrics"]  # judged as the textured domain


def test_finetune_starts_from_the_shipped_teacher(make_config):
    """init: finetune trains (one step at a negligible lr here) from the packed teacher's weights, not from a
    fresh initialisation, and records which teacher it started from."""
    cfg = make_config("teacher.toy.init=finetune", "teacher.toy.train.steps=1", "teacher.toy.train.batch_size=2",
                      "teacher.toy.train.lr=1e-9", "teacher.toy.train.warmup_steps=0", "teacher.toy.train.device=cpu",
                      "teacher.toy.train.shuffle_buffer=4", "teacher.sampling.eval_prompts=0")
    run_shard_stage(cfg)
    result = run_teacher_stage(cfg)
    record = json.loads((SHIPPED / "teacher_metrics.json").read_text())
    assert result["manifest"]["finetuned_from"]["content_hash"] == record["content_hash"]
    assert result["manifest"]["content_hash"] != record["content_hash"]  # trained on, however little
    tuned = ToyFamily.load(f"{cfg.teacher.out_dir}/model", 16).transformer.state_dict()
    unpack_verified(SHIPPED, Path(cfg.teacher.out_dir) / "shipped")
    shipped = ToyFamily.load(Path(cfg.teacher.out_dir) / "shipped", 16).transformer.state_dict()
    fresh = ToyFamily.build(cfg, cfg.seed).transformer.state_dict()
    assert max((tuned[k] - shipped[k]).abs().max().item() for k in tuned) < 1e-5
    assert max((fresh[k] - shipped[k]).abs().max().item() for k in fresh) > 0.1


def test_a_shipped_teacher_of_another_architecture_or_damaged_is_refused(tmp_path, make_config):
    cfg = make_config("teacher.toy.model.num_layers=4", "teacher.toy.text.dim=32")
    with pytest.raises(ConfigError, match=r"teacher.toy.model.num_layers: 4 here, 8 in the folder; "
                                          r"teacher.toy.text.dim: 32 here, 64 in the folder.*teacher.toy.init: scratch"):
        run_teacher_stage(cfg)
    damaged = tmp_path / "damaged"
    shutil.copytree(SHIPPED, damaged)
    part = damaged / "teacher_model.tar.part2"
    data = bytearray(part.read_bytes())
    data[-20000] ^= 0xFF  # inside the weights, so the tar still reads
    part.write_bytes(bytes(data))
    with pytest.raises(StageError, match="the parts were changed or damaged"):
        run_teacher_stage(make_config(f"teacher.toy.pretrained={damaged}"))


@pytest.mark.integration
def test_a_stopped_teacher_continues_on_another_machine(tmp_path, make_config):
    """research/run_stages.py --resumable: a teacher its time limit stops comes back as a packed partial teacher
    (how far it got in its record); --continue-teacher on a machine without the checkpoint trains it on for the
    steps it lacks; the partial teacher itself is refused as a finished one."""
    def run_stages(work: str, *extra: str) -> subprocess.CompletedProcess:
        overrides = [*TINY_TEACHER, "data.shapes.train_samples=16", "data.shapes.val_samples=6",
                     "shard.samples_per_shard=8"]
        return subprocess.run([sys.executable, str(REPO / "research" / "run_stages.py"), "--work", str(tmp_path / work),
                               "--workers", "1", "--stages", "shard,teacher", "--resumable", *extra,
                               *[arg for o in overrides for arg in ("-S", o)]], capture_output=True, text=True)

    stopped = run_stages("first", "--out", str(tmp_path / "out1"), "-S", "teacher.toy.train.time_limit_s=0.001")
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    partial = tmp_path / "out1" / "teacher_partial"
    record = json.loads((partial / "teacher_metrics.json").read_text())
    assert record["partial"] == {"steps": 1, "of": 4} and record["encoding"] == "int8"
    unpack_verified(partial, tmp_path / "unpacked")  # the record's hash is what the parts decode to

    with pytest.raises(ConfigError, match="stopped at step 1 of 4, not a finished one.*--continue-teacher"):
        run_teacher_stage(make_config(*TINY_TEACHER, "teacher.toy.init=pretrained", f"teacher.toy.pretrained={partial}"))

    refused = run_stages("first", "--out", str(tmp_path / "out4"), "--teacher-parts", str(partial))
    assert refused.returncode != 0 and "is a teacher stopped at step 1 of 4, not a finished one: continue it" in refused.stderr

    # or finished where it stopped: judged, then installed like any packed teacher
    ended = tmp_path / "ended"
    finish = subprocess.run([sys.executable, str(REPO / "research" / "finish_teacher.py"), "--partial", str(partial),
                             "--out", str(ended), "--shard-dir", str(tmp_path / "first" / "shards"),
                             *[arg for o in TINY_TEACHER for arg in ("-S", o)]], capture_output=True, text=True)
    assert finish.returncode == 0, finish.stderr[-3000:]
    ended_record = json.loads((ended / "teacher_metrics.json").read_text())
    assert ended_record["stopped"]["steps"] == 1 and "partial" not in ended_record and ended_record["eval_prompts"] == 3
    installed = run_teacher_stage(make_config(*TINY_TEACHER, "teacher.toy.init=pretrained", f"teacher.toy.pretrained={ended}",
                                              f"teacher.out_dir={tmp_path / 'installed'}",
                                              f"shard.dir={tmp_path / 'first' / 'shards'}"))
    assert installed["manifest"]["content_hash"] == record["content_hash"]
    assert installed["metrics"]["pretrained_judge_overall"] == ended_record["metrics"]["judge_overall"]

    finished = run_stages("second", "--out", str(tmp_path / "out2"), "--continue-teacher", str(partial))
    assert finished.returncode == 0, finished.stderr[-3000:]
    report = json.loads((tmp_path / "out2" / "teacher_metrics.json").read_text())
    assert report["steps"] == 3 and report["total_steps"] == 4 and report["continued"]["steps_before"] == 1
    assert report["finetuned_from"]["content_hash"] == record["content_hash"]
    assert not (tmp_path / "out2" / "teacher_partial").exists()

    done = run_stages("third", "--out", str(tmp_path / "out3"), "--continue-teacher", str(tmp_path / "out2"))
    assert done.returncode != 0 and "holds a finished teacher, not a stopped one" in done.stderr
