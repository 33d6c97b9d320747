"""The stock scheduler fit against diffusers' own FlowMatchEulerDiscreteScheduler and hand-computed sigmas, and
the model card's content. The full round trip (WanPipeline vs DCMPipeline) is in test_videos_pipeline."""

import pytest
import torch
import yaml

from dcm.config import ScheduleConfig
from dcm.model_card import model_card
from dcm.schedule import inference_sigmas, segment_edges, shift_sigmas
from dcm.stock_scheduler import fit_flow_match, stock_sigmas

pytestmark = pytest.mark.fast

SCHEDULE = ScheduleConfig(train_sigmas=1000, euler_nodes=50, shift=3.0)
DCM_EDGES = segment_edges("dcm", SCHEDULE, 35, 4)


def native(steps: int, edges=DCM_EDGES) -> list[float]:
    return [float(s) for s in inference_sigmas(SCHEDULE, steps, edges)]


def test_stock_sigmas_by_hand():
    # shift 1, no terminal: linspace(1000, 1, 3) / 1000, then 0
    assert stock_sigmas({"num_train_timesteps": 1000, "shift": 1.0}, 3) == pytest.approx([1.0, 0.5005, 0.001, 0.0])
    # the terminal stretch: 1 − (1 − s)·(1 − T)/(1 − s_last) pins the last step on T
    assert stock_sigmas({"shift": 1.0, "shift_terminal": 0.5}, 2) == pytest.approx([1.0, 0.5, 0.0])


def test_two_steps_are_exact():
    # DCM with 2 steps: one per expert, the second starts at σ_35 = shift(36/50) = 3·0.72/(1 + 2·0.72)
    fitted = fit_flow_match(native(2), exact=1)
    assert fitted.sigmas == pytest.approx([1.0, 2.16 / 2.44, 0.0], abs=1e-6)
    assert fitted.max_deviation < 1e-6


@pytest.mark.parametrize("steps", [4, 6, 8])
def test_the_expert_switch_and_the_last_step_are_exact(steps):
    target = native(steps)
    fitted = fit_flow_match(target, exact=steps // 2)
    assert fitted.sigmas[steps // 2] == pytest.approx(target[steps // 2], abs=1e-6)
    assert fitted.sigmas[steps - 1] == pytest.approx(target[steps - 1], abs=1e-6)
    assert fitted.sigmas == stock_sigmas(fitted.config, steps)  # what the real scheduler runs
    assert all(a > b for a, b in zip(fitted.sigmas, fitted.sigmas[1:]))
    # the other steps stay in their expert's segment: the switch is crossed exactly once, at the same step
    threshold = float(shift_sigmas(torch.tensor(35.5 / 50), 3.0))
    assert [s > threshold for s in fitted.sigmas] == [s > threshold for s in target]


def test_single_segment_students_match_first_and_last_steps():
    target = native(4, segment_edges("lcm", SCHEDULE, 35, 4))
    fitted = fit_flow_match(target, exact=1)
    assert fitted.sigmas[1] == pytest.approx(target[1], abs=1e-6)
    assert fitted.sigmas[3] == pytest.approx(target[3], abs=1e-6)
    assert 0 < fitted.max_deviation < 0.05


def test_bad_placements_are_refused():
    with pytest.raises(ValueError, match="from 1 to 0"):
        fit_flow_match([0.9, 0.5, 0.0], exact=1)
    with pytest.raises(ValueError, match="no shift"):
        fit_flow_match([1.0, 0.999999, 0.99, 0.5, 0.0], exact=2)  # would need σ_2 ≈ 1: beyond any shift


def test_the_model_card_says_how_to_load_and_what_was_measured():
    info = {"method": "dcm", "family": "wan", "teacher_hash": "ab" * 32, "kappa": 35, "threshold": 0.88,
            "edges": [-1, 35], "detail": "lora", "train_steps": 60, "sample_steps": 4, "max_text_tokens": 512,
            "schedule": {"train_sigmas": 1000, "euler_nodes": 50, "shift": 3.0},
            "defaults": {"frames": 5, "height": 16, "width": 16}}
    fitted = fit_flow_match(native(4), exact=2)
    card = model_card(info, {"judge_overall_4_steps": 0.8123}, "the distill stage", ("WanPipeline", fitted))
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "diffusers" and "dcm" in front["tags"]
    assert "WanPipeline.from_pretrained" in card and "guidance_scale=1.0" in card and "max_sequence_length=512" in card
    assert "| judge_overall_4_steps | 0.8123 |" in card and "κ=35" in card
    toy = model_card({**info, "family": "toy"}, {}, "the distill stage", None)
    assert "WanPipeline" not in toy and "DCMPipeline.from_pretrained" in toy and "None measured" in toy
