"""Distillation: per-sample routing, exact resume of both stages, resolution independence, trajectory
and online teachers, baselines, the exported pipeline and its LoRA, and `dcm generate` at any step count."""

import copy
import json
import time
from pathlib import Path

import av
import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file

from dcm.ops.cli import main as cli
from dcm.stages.shard import run_shard_stage
from dcm.errors import StageError
from dcm.models.dual_expert import Student
from dcm.models.lora_io import MODULES_FILE
from dcm.pipeline import DCMPipeline
from dcm.stages.precompute import run_precompute_stage
from dcm.schedule import expert_threshold
from dcm.stages.distill import finish_baselines, method_settings, run_distill_stage
from dcm.stages.teacher import load_teacher
from dcm.train.adversarial import AdversarialLoss
from dcm.train.checkpoint import checkpoint_tensors, latest_checkpoint
from tests.conftest import REPO

pytestmark = pytest.mark.fast

def perturbed_student(cfg, kind: str) -> Student:
    """A dual-expert student whose detail expert differs from its semantic expert."""
    teacher = load_teacher(cfg)
    student = Student(teacher, copy.deepcopy(teacher.transformer))
    student.add_detail_expert(kind, teacher.detail_modules, cfg.distill.lora, expert_threshold(cfg.schedule, 4))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in student.detail_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return student.eval()


@pytest.mark.parametrize("kind", ["lora", "full"])
def test_mixed_batch_routes_each_sample_like_two_separate_calls(config, kind):
    cfg = config()
    student = perturbed_student(cfg, kind)
    teacher = load_teacher(cfg)
    x = torch.randn(4, 3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    threshold = student.threshold
    sigma = torch.tensor([0.99, threshold * 0.5, 1.0, threshold])  # semantic, detail, semantic, detail (boundary)
    cond = teacher.encode_prompts(["a red circle moving left"] * 4)
    with torch.no_grad():
        mixed = student(x, sigma, cond)
        semantic = student.expert_velocity("semantic", x[[0, 2]], sigma[[0, 2]], {k: v[[0, 2]] for k, v in cond.items()})
        detail = student.expert_velocity("detail", x[[1, 3]], sigma[[1, 3]], {k: v[[1, 3]] for k, v in cond.items()})
        detail_as_semantic = student.expert_velocity("semantic", x[[1, 3]], sigma[[1, 3]],
                                                     {k: v[[1, 3]] for k, v in cond.items()})
    assert torch.equal(mixed[[0, 2]], semantic) and torch.equal(mixed[[1, 3]], detail)
    assert not torch.allclose(detail, detail_as_semantic, atol=1e-4)  # the experts really differ


def resumed_losses(cfg, method: str, stop_after: int) -> list[float]:
    with pytest.raises(StageError, match="stopped at step"):
        run_distill_stage(cfg, method, stop_after=stop_after)
    return run_distill_stage(cfg, method)["losses"]


def test_both_stages_resume_to_the_uninterrupted_loss_sequence(config, tmp_path):
    straight = config()
    semantic = run_distill_stage(straight, "semantic")["losses"]
    detail = run_distill_stage(straight, "detail")["losses"]
    assert len(semantic) == 4 and len(detail) == 4

    resumed = config(f"distill.out_dir={tmp_path / 'resumed'}", f"distill.checkpoint_dir={tmp_path / 'ckpt-resumed'}")
    assert resumed_losses(resumed, "semantic", 3) == semantic  # checkpoint at 2, stop at 3, resume from 3
    assert resumed_losses(resumed, "detail", 1) == detail


def test_detail_stage_runs_at_another_resolution_and_frame_count(config, prepared, tmp_path):
    cfg = config()
    run_distill_stage(cfg, "semantic")
    other = config("data.frames=6", "data.height=24", "data.width=32", f"shard.dir={tmp_path / 'shards2'}",
                   f"precompute.dir={tmp_path / 'latents2'}")
    run_shard_stage(other)
    run_precompute_stage(other)
    small = run_distill_stage(cfg, "detail")
    large = run_distill_stage(config("data.frames=6", "data.height=24", "data.width=32",
                                     f"shard.dir={tmp_path / 'shards2'}", f"precompute.dir={tmp_path / 'latents2'}",
                                     f"distill.checkpoint_dir={tmp_path / 'ckpt2'}"), "detail")
    assert small["clips"].shape[1:4] == (4, 16, 16) and large["clips"].shape[1:4] == (6, 24, 32)
    assert all(torch.isfinite(torch.tensor(r["losses"])).all() for r in (small, large))


def test_trajectory_and_online_teachers_both_train(config, tmp_path, capsys):
    timings = {}
    for mode in ("online", "trajectory"):
        cfg = config(f"distill.teacher_mode={mode}", f"distill.checkpoint_dir={tmp_path / mode}")
        start = time.perf_counter()
        result = run_distill_stage(cfg, "semantic")
        timings[mode] = (time.perf_counter() - start) / result["steps"]
        assert result["steps"] == 4 and all(loss == loss and loss > 0 for loss in result["losses"])
    with capsys.disabled():
        print(f"\nsemantic stage, tiny config, CPU: {timings}")


def test_trajectory_mode_refuses_other_guidance(config):
    with pytest.raises(StageError, match="make them equal"):
        run_distill_stage(config("distill.teacher_mode=trajectory", "distill.guidance_scale=2.5"), "semantic")


def test_detail_phases_train_a_phased_detail_expert_with_the_gan(config):
    """κ = 4 on a 10-node grid, 2 detail phases: edges END, 1, 4; the GAN re-noises from each phase's edge
    (its heads here 3 tokens wide: discriminator.kernel)."""
    cfg = config("distill.detail_phases=2", "distill.discriminator.kernel=3")
    run_distill_stage(cfg, "semantic")
    result = run_distill_stage(cfg, "detail")
    assert len(result["losses"]) == 4 and all(torch.isfinite(torch.tensor(result["losses"])))
    pipe = DCMPipeline.from_pretrained(result["folder"], torch.device("cpu"))
    assert pipe.edges == [-1, 1, 4]
    semantic_info = json.loads((Path(cfg.distill.out_dir) / "semantic" / "dcm_student.json").read_text())
    assert semantic_info["edges"] == [-1, 4]  # the semantic stage's output does not depend on detail phases


def judged_nodes(monkeypatch) -> list[tuple[int, int]]:
    """(segment edge, node of the re-noise sigma) of every clip the detail stage's heads judge, recorded around
    the real AdversarialLoss (its features still come from the teacher)."""
    judged, generator_loss, features = [], AdversarialLoss.generator_loss, AdversarialLoss.features

    def recording_loss(self, pred, target, real, edges, *rest):
        self.recorded_edges = edges
        return generator_loss(self, pred, target, real, edges, *rest)

    def recording_features(self, x, sigma, cond):
        nodes = [int(torch.isclose(self.detail_sigmas, s.cpu()).nonzero()) for s in sigma]
        judged.extend(zip(self.recorded_edges.tolist(), nodes))
        return features(self, x, sigma, cond)

    monkeypatch.setattr(AdversarialLoss, "generator_loss", recording_loss)
    monkeypatch.setattr(AdversarialLoss, "features", recording_features)
    return judged


def test_the_heads_judge_each_clip_within_its_phase_with_pcms_window(config, monkeypatch):
    """κ = 4, 2 detail phases (edges END, 1, 4): with noise_window = phase a clip at the end is re-noised to
    node 0 or 1 and one at edge 1 to nodes 2–4; with detail, a clip at the end may go anywhere up to κ."""
    judged = judged_nodes(monkeypatch)
    run_distill_stage(config("distill.detail_phases=2"), "semantic")
    run_distill_stage(config("distill.detail_phases=2", "distill.discriminator.noise_window=phase"), "detail")
    assert {edge for edge, _ in judged} == {-1, 1}
    assert all((0 <= node <= 1) if edge == -1 else (2 <= node <= 4) for edge, node in judged)
    judged.clear()
    run_distill_stage(config("distill.detail_phases=2", "distill.discriminator.noise_window=detail"), "detail")
    assert any(edge == -1 and node > 1 for edge, node in judged)
    assert all(edge < node <= 4 for edge, node in judged)


def test_discriminator_takes_its_updates_on_every_generator_step(config, capsys):
    """discriminator.updates_per_step = 3: the heads' optimiser stepped 3 times per detail step (its AdamW
    step counts in the checkpoint). Its health is logged as the mean over the logging window, the window the
    end-of-stage verdict reads. A stage whose heads end at or below chance_accuracy (here 1.0: always) says
    so in its log and metrics."""
    cfg = config("distill.discriminator.updates_per_step=3", "distill.discriminator.chance_accuracy=1.0",
                 "distill.detail.log_every=2")
    run_distill_stage(cfg, "semantic")
    logged = {}
    result = run_distill_stage(cfg, "detail", on_log=lambda step, metrics: logged.update({step: metrics}))
    assert sorted(logged) == [2, 4]
    assert logged[4]["d_accuracy"] == pytest.approx(result["metrics"]["discriminator_accuracy"], abs=1e-6)
    tensors = checkpoint_tensors(latest_checkpoint(Path(cfg.distill.checkpoint_dir) / "detail"))
    counts = {float(v) for k, v in tensors.items() if ":discriminator_optimizer/" in k and k.endswith("/step")}
    assert counts == {3.0 * cfg.distill.detail.steps}
    assert 0.0 <= result["metrics"]["discriminator_accuracy"] <= 1.0
    assert result["metrics"]["discriminator_at_chance"] == 1.0
    assert "the discriminator stayed at chance" in capsys.readouterr().out


def test_the_hinge_term_reaches_the_student_only_after_the_heads_warm_up(config, tmp_path):
    """discriminator.warmup_steps = 2 of 4 steps, feature matching off: steps 1–2 the GAN's share of the
    gradient at the prediction is exactly 0 (the hinge is computed, logged, and weighted 0), from step 3 it is
    not; the heads train on every step (their step count, checkpointed, reaches 4). A run stopped after step 1
    resumes with the count it had, so its warm-up ends at the same step as the uninterrupted run's."""
    overrides = ("distill.discriminator.warmup_steps=2", "distill.fm_weight=0.0", "distill.detail.log_every=1")
    cfg = config(*overrides)
    run_distill_stage(cfg, "semantic")
    logged = {}
    run_distill_stage(cfg, "detail", on_log=lambda step, metrics: logged.update({step: metrics}))
    assert [logged[step]["gan_on"] for step in (1, 2, 3, 4)] == [0.0, 0.0, 1.0, 1.0]
    assert logged[1]["gan_grad_share"] == 0.0 and logged[2]["gan_grad_share"] == 0.0
    assert logged[3]["gan_grad_share"] > 0.0 and logged[4]["gan_grad_share"] > 0.0
    tensors = checkpoint_tensors(latest_checkpoint(Path(cfg.distill.checkpoint_dir) / "detail"))
    assert [int(v) for k, v in tensors.items() if k.endswith("steps_trained")] == [4]

    resumed = config(*overrides, f"distill.out_dir={tmp_path / 'resumed'}",
                     f"distill.checkpoint_dir={tmp_path / 'ckpt-resumed'}")
    run_distill_stage(resumed, "semantic")
    with pytest.raises(StageError, match="stopped at step"):
        run_distill_stage(resumed, "detail", stop_after=1)
    logged.clear()
    run_distill_stage(resumed, "detail", on_log=lambda step, metrics: logged.update({step: metrics}))
    assert [logged[step]["gan_on"] for step in (2, 3, 4)] == [0.0, 1.0, 1.0]


def test_a_stop_request_checkpoints_where_training_stops_and_the_next_run_goes_on(config):
    """request_stop (research/run_matrix.py's SIGTERM handler) ends training at the next step with a
    checkpoint of it, not of the last checkpoint_every step; the next run starts from there and is not stopped."""
    from dcm.train.loop import request_stop
    cfg = config("distill.semantic.checkpoint_every=4")
    with pytest.raises(StageError, match="stopped at step 2 of 4"):
        run_distill_stage(cfg, "semantic", on_log=lambda step, metrics: step == 1 and request_stop())
    assert latest_checkpoint(Path(cfg.distill.checkpoint_dir) / "semantic").name == "step-00000002"
    logged = []
    run_distill_stage(cfg, "semantic", on_log=lambda step, metrics: logged.append(step))
    assert logged == [3, 4]


def test_every_update_of_the_heads_reads_the_weights_the_last_one_stepped():
    """Autocast keeps bf16 copies of the weights it casts until its outermost region ends: heads updated several
    times inside one region (as the loop once ran the discriminator's step, under its own autocast) kept reading
    their first weights, so 4 updates were one gradient applied 4 times. train_heads runs each forward in a
    region of its own without that cache, so a caller's region changes nothing. (On CPU here: CUDA autocast
    caches the same way.)"""
    from contextlib import nullcontext

    from dcm.config import DiscriminatorConfig
    from dcm.models.discriminator import Discriminator
    from dcm.train.adversarial import train_heads

    def fresh_heads() -> Discriminator:
        torch.manual_seed(0)
        return Discriminator([16, 16], DiscriminatorConfig(
            tap_every=1, hidden=8, groups=2, residual=True, kernel=1, real="data", noise_window="detail",
            leaky_slope=0.01, chance_accuracy=0.55, lr=1e-2, betas=(0.0, 0.999), weight_decay=0.0,
            updates_per_step=3, warmup_steps=0))

    def trained(outer) -> list[torch.Tensor]:
        heads = fresh_heads()
        optimizer = torch.optim.AdamW(heads.parameters(), lr=1e-2, betas=(0.0, 0.999))
        pending = [([torch.randn(3, 8, 16) for _ in range(2)], [torch.randn(3, 8, 16) + 1 for _ in range(2)], (2, 2, 2))]
        with outer:
            train_heads(heads, optimizer, pending, 3,
                        lambda: torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False))
        return [p.detach().clone() for p in heads.parameters()]

    alone, inside = trained(nullcontext()), trained(torch.autocast("cpu", dtype=torch.bfloat16))
    assert all(torch.allclose(a, b) for a, b in zip(alone, inside))
    assert not all(torch.allclose(a, b) for a, b in zip(alone, fresh_heads().parameters()))


def test_detail_stage_needs_the_semantic_expert(config):
    with pytest.raises(StageError, match="run distill_semantic first"):
        run_distill_stage(config(), "detail")


@pytest.mark.parametrize("method", ["lcm", "pcm", "single"])
def test_baselines_train_and_export_a_single_expert(config, method):
    cfg = config()
    result = run_distill_stage(cfg, method)
    assert Path(result["folder"]) == Path(cfg.distill.out_dir) / "baselines" / method
    pipe = DCMPipeline.from_pretrained(result["folder"])
    assert pipe.info["method"] == method and pipe.student.detail_kind is None
    # pcm: 4 phases over 10 nodes; single: DCM's segments (κ = 4) learnt by one expert
    expected = {"lcm": [-1], "pcm": [-1, 1, 4, 6], "single": [-1, 4]}[method]
    assert pipe.edges == expected


def test_baselines_folder_holds_exactly_the_listed_baselines(config):
    cfg = config("distill.baselines=[lcm]")
    run_distill_stage(cfg, "lcm")
    run_distill_stage(cfg, "single")  # trained, but not listed: not this configuration's baseline
    folder = finish_baselines(cfg)
    assert sorted(p.name for p in folder.iterdir()) == ["index.json", "lcm", "lcm.json"]
    assert json.loads((folder / "index.json").read_text()) == {"baselines": ["lcm"]}
    with pytest.raises(StageError, match=r"\['pcm'\] are listed .* run `dcm distill baselines`"):
        finish_baselines(config("distill.baselines=[lcm,pcm]"))
    assert json.loads((finish_baselines(config("distill.baselines=[]")) / "index.json").read_text()) == {"baselines": []}


def test_temporal_coherence_weighs_in_the_semantic_stage_only(config, tmp_path):
    def losses(method: str, weight: float) -> list[float]:
        cfg = config(f"distill.tc_weight={weight}", f"distill.checkpoint_dir={tmp_path / f'{method}-{weight}'}",
                     f"distill.out_dir={tmp_path / f'out-{method}-{weight}'}")
        return run_distill_stage(cfg, method)["losses"]

    assert losses("semantic", 0.0) != losses("semantic", 50.0)
    assert losses("lcm", 0.0) == losses("lcm", 50.0)  # LCM/PCM and the detail stage: consistency (+ GAN) alone


def test_distill_seed_changes_the_students_draws_and_defaults_to_the_seed(config, tmp_path):
    def losses(*extra: str) -> list[float]:
        name = "-".join(extra) or "default"
        cfg = config(*extra, f"distill.checkpoint_dir={tmp_path / name}", f"distill.out_dir={tmp_path / f'out-{name}'}")
        return run_distill_stage(cfg, "lcm")["losses"]

    default = losses()
    assert losses("distill.seed=0") == default  # null means the top-level seed (0)
    assert losses("distill.seed=1") != default


def test_exported_lora_and_copies_turn_a_plain_diffusers_transformer_into_the_detail_expert(config):
    cfg = config()
    run_distill_stage(cfg, "semantic")
    folder = Path(run_distill_stage(cfg, "detail")["folder"])
    pipe = DCMPipeline.from_pretrained(folder)
    plain = WanTransformer3DModel.from_pretrained(folder / "transformer")
    plain.load_lora_adapter(folder / "detail", adapter_name="detail", use_safetensors=True)
    missing, unexpected = plain.load_state_dict(load_file(folder / "detail" / MODULES_FILE), strict=False)
    assert not unexpected
    x = torch.randn(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.3, 0.1])
    cond = pipe.family.encode_prompts(["a blue square moving up", "a green diamond not moving"])
    with torch.no_grad():
        expert = pipe.student.expert_velocity("detail", x, sigma, cond)
        semantic = pipe.student.expert_velocity("semantic", x, sigma, cond)
        plain_out = plain(hidden_states=x, timestep=sigma * 1000, encoder_hidden_states=cond["embeds"],
                          return_dict=False)[0]
        merged = DCMPipeline.from_pretrained(folder, detail_weights="merged").student(x, sigma, cond)
    assert torch.allclose(plain_out, expert, atol=1e-5)
    assert torch.allclose(merged, expert, atol=1e-5)
    assert not torch.allclose(expert, semantic, atol=1e-6)  # training moved the detail expert


def test_semantic_stage_as_lora_merges_into_plain_weights(config):
    cfg = config("distill.semantic_weights=lora")
    result = run_distill_stage(cfg, "semantic")
    pipe = DCMPipeline.from_pretrained(result["folder"])
    assert not any("lora" in name for name in pipe.student.transformer.state_dict())
    teacher = load_teacher(cfg)
    changed = [n for n, p in pipe.student.transformer.state_dict().items()
               if not torch.equal(p, teacher.transformer.state_dict()[n])]
    assert changed and all("attn" in n for n in changed)  # only the LoRA-targeted attention weights moved


@pytest.mark.parametrize("steps", [1, 2, 4, 8])
def test_generate_writes_a_playable_mp4_at_any_step_count(config, prepared, tmp_path, steps):
    cfg = config()
    if not (Path(cfg.distill.out_dir) / "dcm").is_dir():
        run_distill_stage(cfg, "semantic")
        run_distill_stage(cfg, "detail")
    out = tmp_path / f"clip-{steps}.mp4"
    overrides = [*prepared, f"distill.out_dir={cfg.distill.out_dir}"]
    code = cli(["generate", "a red circle moving left over black", "--steps", str(steps), "--out", str(out),
                "--params", str(REPO / "params.yaml"), *sum((["-S", o] for o in overrides), [])])
    assert code == 0
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 4 and frames[0].shape == (16, 16, 3)


@pytest.mark.parametrize("steps", [0, 11])
def test_generate_refuses_a_step_count_the_sampler_cannot_take(config, prepared, tmp_path, capsys, steps):
    out = tmp_path / "clip.mp4"
    code = cli(["generate", "a red circle moving left over black", "--steps", str(steps), "--out", str(out),
                "--params", str(REPO / "params.yaml"), *sum((["-S", o] for o in prepared), [])])
    assert code == 2 and not out.exists()
    assert f"--steps must be between 1 and schedule.euler_nodes=10, got {steps}" in capsys.readouterr().err


def test_each_method_is_fingerprinted_by_the_settings_it_reads(config):
    base = config()
    gan_off, tc_off, kappa = (config("distill.adversarial=none"), config("distill.tc_weight=0"),
                              config("distill.kappa=5"))
    assert method_settings(gan_off, "semantic") == method_settings(base, "semantic")
    assert method_settings(gan_off, "detail") != method_settings(base, "detail")
    assert method_settings(tc_off, "semantic") != method_settings(base, "semantic")
    assert method_settings(tc_off, "detail") == method_settings(base, "detail")
    assert method_settings(kappa, "lcm") == method_settings(base, "lcm")
    assert method_settings(kappa, "single") != method_settings(base, "single")
    assert "lora" not in method_settings(base, "semantic") and "lora" in method_settings(base, "detail")
    phased = config("distill.detail_phases=2")  # the semantic expert is shared, detail and single train anew
    assert method_settings(phased, "semantic") == method_settings(base, "semantic")
    assert method_settings(phased, "pcm") == method_settings(base, "pcm")
    assert method_settings(phased, "detail") != method_settings(base, "detail")
    assert method_settings(phased, "single") != method_settings(base, "single")


def test_changed_settings_train_anew_while_more_steps_resume(config):
    first = run_distill_stage(config(), "semantic")
    changed = run_distill_stage(config("distill.semantic.lr=0.0001"), "semantic")
    assert changed["resumed_from"] == 0 and changed["losses"] != first["losses"]  # not the old checkpoint
    assert list((Path(config().distill.checkpoint_dir) / "semantic").glob("superseded-*/step-*"))
    longer = run_distill_stage(config("distill.semantic.lr=0.0001", "distill.semantic.steps=6"), "semantic")
    assert longer["resumed_from"] == 4 and longer["losses"][:4] == changed["losses"]


@pytest.mark.integration  # compiling costs a minute on the CPU
def test_compiled_blocks_take_the_eager_steps(config, tmp_path):
    """compile: all compiles the student's and the frozen teacher's blocks (the critic taps the teacher's through
    hooks): both stages take the eager steps, to float rounding."""
    eager = config()
    compiled = config("distill.semantic.compile=all", "distill.detail.compile=all",
                      f"distill.out_dir={tmp_path / 'compiled'}", f"distill.checkpoint_dir={tmp_path / 'ckpt-compiled'}")
    for method in ("semantic", "detail"):
        expected = run_distill_stage(eager, method)["losses"]
        found = run_distill_stage(compiled, method)["losses"]
        assert found == pytest.approx(expected, rel=1e-3) and len(found) == 4
