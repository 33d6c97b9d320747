"""Schedule and losses against values computed by hand."""

import math

import pytest
import torch

from dcm.config import ScheduleConfig
from dcm.train.loop import lr_factor
from dcm.losses import (clip_accuracy, discriminator_accuracy, feature_matching, hinge_discriminator, hinge_generator, hinge_terms,
                        l2, pseudo_huber,
                        temporal_coherence)
from dcm.schedule import (END, add_noise, euler_nodes, euler_step, expert_threshold, inference_sigmas, inner_edges,
                          nodes_above, phase_tops, reference_pcm_sigmas, renoise, sampling_sigmas, segment_edges,
                          shift_sigmas, steps_per_segment, target_node, training_nodes)

pytestmark = pytest.mark.fast

REFERENCE = ScheduleConfig(train_sigmas=1000, euler_nodes=50, shift=17.0)


def test_shift_17_nodes_by_hand():
    nodes = euler_nodes(REFERENCE)
    assert len(nodes) == 50
    # node n is training sigma index 20(n + 1) − 1, i.e. raw s = 20(n + 1)/1000, then shifted
    assert float(nodes[37]) == pytest.approx(17 * 0.76 / (1 + 16 * 0.76))  # 0.98176…
    assert float(nodes[37]) == pytest.approx(0.981763, abs=1e-6)
    assert float(nodes[49]) == pytest.approx(1.0)
    assert float(nodes[0]) == pytest.approx(17 * 0.02 / (1 + 16 * 0.02))  # 0.257575…
    assert torch.all(nodes[1:] > nodes[:-1])


def shifted(raw: float, shift: float = 17.0) -> float:
    return shift * raw / (1 + (shift - 1) * raw)


def test_segments_and_targets_by_hand():
    assert segment_edges("dcm", REFERENCE, 37, 4) == [END, 37]
    assert segment_edges("lcm", REFERENCE, 37, 4) == [END]
    assert segment_edges("pcm", REFERENCE, 37, 4) == [END, 11, 24, 36]  # 50k/4 − 1, floored
    assert segment_edges("single", REFERENCE, 37, 4) == [END, 37]  # DCM's segments, one expert
    assert training_nodes("single", REFERENCE, 37) == list(range(50))
    # semantic nodes jump to κ, detail nodes (κ included) to the end, LCM always to the end
    assert target_node(49, [END, 37]) == 37 and target_node(38, [END, 37]) == 37
    assert target_node(37, [END, 37]) == END and target_node(0, [END, 37]) == END
    assert target_node(30, [END, 11, 24, 36]) == 24 and target_node(12, [END, 11, 24, 36]) == 11
    assert training_nodes("semantic", REFERENCE, 37) == list(range(38, 50))
    assert training_nodes("detail", REFERENCE, 37) == list(range(0, 38))
    # the routing threshold lies between σ_37 = 0.981763 and σ_38 = shifted(0.78)
    assert expert_threshold(REFERENCE, 37) == pytest.approx((0.981763 + shifted(0.78)) / 2, abs=1e-6)


def test_inference_sigmas_split_evenly_between_experts_by_hand():
    dcm = [END, 37]
    # 4 steps: semantic starts at nodes 49 and 49 − 12//2 = 43, detail at 37 and 37 − 38//2 = 18, then 0
    assert inference_sigmas(REFERENCE, 4, dcm).tolist() == pytest.approx(
        [1.0, shifted(0.88), 0.981763, shifted(0.38), 0.0], abs=1e-6)
    assert inference_sigmas(REFERENCE, 4, dcm)[1] == pytest.approx(0.992042, abs=1e-6)
    assert inference_sigmas(REFERENCE, 4, dcm)[3] == pytest.approx(0.912429, abs=1e-6)
    assert inference_sigmas(REFERENCE, 2, dcm).tolist() == pytest.approx([1.0, 0.981763, 0.0], abs=1e-6)
    assert inference_sigmas(REFERENCE, 1, dcm).tolist() == pytest.approx([1.0, 0.0])  # no detail step
    assert len(inference_sigmas(REFERENCE, 8, dcm)) == 9
    assert steps_per_segment(5, 2) == [3, 2] and steps_per_segment(1, 4) == [1, 0, 0, 0]
    with pytest.raises(ValueError, match="only 12 nodes"):
        inference_sigmas(REFERENCE, 26, dcm)  # 13 steps into the 12-node semantic segment


def test_the_reference_pcm_placement_by_hand():
    # fastvideo's InferencePCMFMScheduler: descending node indices floor(linspace(0, 50, 4, endpoint=False)) =
    # 0, 12, 25, 37, i.e. nodes 49, 37, 24, 12 — one node off PCM's own phase edges (49, 36, 24, 11) twice
    nodes = euler_nodes(REFERENCE)
    assert reference_pcm_sigmas(REFERENCE, 4).tolist() == pytest.approx(
        [1.0, 0.981763, float(nodes[24]), float(nodes[12]), 0.0], abs=1e-6)
    assert float(nodes[24]) == pytest.approx(shifted(0.5)) and float(nodes[12]) == pytest.approx(shifted(0.26))
    assert inference_sigmas(REFERENCE, 4, segment_edges("pcm", REFERENCE, 35, 4)).tolist() == pytest.approx(
        [1.0, shifted(0.74), shifted(0.5), shifted(0.24), 0.0], abs=1e-6)
    assert reference_pcm_sigmas(REFERENCE, 1).tolist() == pytest.approx([1.0, 0.0])
    assert reference_pcm_sigmas(REFERENCE, 50)[:-1].tolist() == pytest.approx(nodes.flip(0).tolist())
    with pytest.raises(ValueError, match="between 1 and"):
        reference_pcm_sigmas(REFERENCE, 51)


def test_detail_phases_cut_the_detail_segment_like_pcm_by_hand():
    assert inner_edges(36, 3) == [11, 23] and inner_edges(36, 1) == []  # 36·k//3 − 1
    phased = segment_edges("dcm", REFERENCE, 35, 4, 3)
    assert phased == [END, 11, 23, 35] and segment_edges("single", REFERENCE, 35, 4, 3) == phased
    assert segment_edges("dcm", REFERENCE, 35, 4, 1) == [END, 35]  # the paper's DCM
    assert segment_edges("pcm", REFERENCE, 35, 4, 3) == [END, 11, 24, 36]  # PCM ignores detail phases
    # semantic nodes still jump to κ; detail nodes to their phase's lower edge
    assert [target_node(n, phased) for n in (49, 36, 35, 24, 23, 12, 11, 0)] == [35, 35, 23, 23, 11, 11, END, END]
    # 4 steps: one per segment, each starting at its top node (49, 35, 23, 11), as PCM-4 does
    nodes = euler_nodes(REFERENCE)
    assert inference_sigmas(REFERENCE, 4, phased).tolist() == pytest.approx(
        [1.0, float(nodes[35]), float(nodes[23]), float(nodes[11]), 0.0])
    assert steps_per_segment(2, 4) == [1, 1, 0, 0]  # 2 steps: semantic, then the detail expert from σ_35 to 0
    assert inference_sigmas(REFERENCE, 2, phased).tolist() == pytest.approx([1.0, float(nodes[35]), 0.0])


def test_renoise_by_hand():
    x, noise = torch.full((2, 1), 2.0), torch.full((2, 1), -1.0)
    # from 0.5 to 0.75: (0.25·2 + 0.25·(−1)) / 0.5 = 0.5; from 0 to 0.75 it is add_noise: 0.75·(−1) + 0.25·2
    out = renoise(x, noise, torch.tensor([0.5, 0.0]), torch.tensor([0.75, 0.75]))
    assert out.flatten().tolist() == pytest.approx([0.5, -0.25])
    assert torch.allclose(renoise(x, noise, torch.zeros(2), torch.tensor([0.3, 0.9])),
                          add_noise(x, noise, torch.tensor([0.3, 0.9])))
    # a clean x (x = x0 at s_from = 0.5 means x = 0.5·eps + 0.5·x0): the result is s_to·eps + (1 − s_to)·x0
    eps, x0 = torch.tensor([[1.0]]), torch.tensor([[3.0]])
    assert renoise(0.5 * eps + 0.5 * x0, eps, torch.tensor([0.5]), torch.tensor([0.8])).item() == pytest.approx(
        0.8 * 1.0 + 0.2 * 3.0)


def test_nodes_above_the_edge_by_hand():
    edges, top = torch.tensor([END, END, 23, 23, 23]), 35
    uniform = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.9999])
    # END: 0 + ⌊u·36⌋; edge 23: 24 + ⌊u·12⌋
    assert nodes_above(edges, uniform, top).tolist() == [0, 18, 24, 30, 35]


def test_nodes_within_each_phase_by_hand():
    # the detail segment of κ = 35 in three phases: edges END, 11, 23 and κ on top
    edges = torch.tensor([END, END, 11, 11, 23, 23])
    tops = phase_tops(edges, [END, 11, 23, 35])
    assert tops.tolist() == [11, 11, 23, 23, 35, 35]
    uniform = torch.tensor([0.5, 0.9999, 0.0, 0.5, 0.25, 0.9999])
    # END: 0 + ⌊u·12⌋; edge 11: 12 + ⌊u·12⌋; edge 23: 24 + ⌊u·12⌋
    assert nodes_above(edges, uniform, tops).tolist() == [6, 11, 12, 18, 27, 35]
    with pytest.raises(KeyError):  # κ is the detail segment's top, never an edge a detail sample lands on
        phase_tops(torch.tensor([35]), [END, 11, 23, 35])


def test_shift_one_is_identity_and_sampling_grid():
    s = torch.tensor([0.0, 0.25, 1.0])
    assert torch.equal(shift_sigmas(s, 1.0), s)
    grid = sampling_sigmas(ScheduleConfig(train_sigmas=1000, euler_nodes=50, shift=1.0), 4)
    # nodes 49, 33, 16, 0 (evenly spaced in index) then 0
    assert grid.tolist() == pytest.approx([1.0, 0.68, 0.34, 0.02, 0.0])
    with pytest.raises(ValueError, match="between 1 and"):
        sampling_sigmas(REFERENCE, 51)


def test_euler_step_by_hand():
    x, v = torch.full((2, 1), 3.0), torch.full((2, 1), 2.0)
    out = euler_step(x, v, torch.tensor([1.0, 0.5]), torch.tensor([0.5, 0.0]))
    assert out.flatten().tolist() == [2.0, 2.0]  # 3 + (−0.5)·2


def test_pseudo_huber_and_l2_by_hand():
    pred, target = torch.tensor([0.0, 3.0]), torch.tensor([0.0, -1.0])  # differences 0 and 4
    c = 3.0
    assert float(pseudo_huber(pred, target, c)) == pytest.approx(((3 - 3) + (5 - 3)) / 2)  # sqrt(16 + 9) = 5
    assert float(l2(pred, target)) == pytest.approx(8.0)


def test_temporal_coherence_by_hand():
    target = torch.zeros(1, 1, 4, 1, 1)
    pred = torch.tensor([0.0, 1.0, 1.0, 3.0]).view(1, 1, 4, 1, 1)
    # stride 1: pred diffs 1, 0, 2 vs 0 → (1 + 0 + 4) / 3
    assert float(temporal_coherence(pred, target, 1)) == pytest.approx(5 / 3)
    # stride 3: one pair, 3 − 0 = 3 → 9
    assert float(temporal_coherence(pred, target, 3)) == pytest.approx(9.0)
    # a constant offset has no temporal error
    assert float(temporal_coherence(target + 5.0, target, 1)) == 0.0


def test_temporal_coherence_shorter_than_stride_is_zero_and_differentiable():
    pred = torch.ones(1, 1, 3, 1, 1, requires_grad=True)
    loss = temporal_coherence(pred, torch.zeros_like(pred), 3)
    assert float(loss) == 0.0
    loss.backward()
    assert pred.grad is not None and not math.isnan(float(pred.grad.sum()))


def test_hinge_losses_by_hand():
    real = [torch.tensor([2.0, 0.0])]  # relu(1 − 2) = 0, relu(1 − 0) = 1 → 0.5
    fake = [torch.tensor([-2.0, 1.0])]
    # discriminator: 0.5 + mean(relu(1 + fake)) = 0.5 + (0 + 2)/2 = 1.5
    assert float(hinge_discriminator(real, fake)) == pytest.approx(1.5)
    # generator: mean(relu(1 − fake)) = (3 + 0)/2 = 1.5
    assert float(hinge_generator(fake)) == pytest.approx(1.5)
    assert [float(term) for term in hinge_terms(real, fake)] == pytest.approx([0.5, 1.0])


def test_discriminator_accuracy_by_hand():
    real = [torch.tensor([2.0, -1.0]), torch.tensor([1.0, 1.0, 1.0, -1.0])]  # right: 1/2, 3/4
    fake = [torch.tensor([-2.0, 1.0]), torch.tensor([-1.0, -1.0])]           # right: 1/2, 2/2
    # heads: (0.5 + 0.5) / 2 = 0.5 and (0.75 + 1) / 2 = 0.875 → mean 0.6875
    assert float(discriminator_accuracy(real, fake)) == pytest.approx(0.6875)
    zeros = [torch.zeros(3)]
    assert float(discriminator_accuracy(zeros, zeros)) == 0.0  # 0 is on neither side: no credit


def test_clip_accuracy_by_hand():
    # two heads, two clips of two tokens; a clip's verdict is its mean logit over heads and tokens
    real = [torch.tensor([[3.0, -1.0], [-1.0, -1.0]]), torch.tensor([[1.0, 1.0], [-2.0, 2.0]])]
    # clip 0: (1 + 1) / 2 = 1 > 0 right; clip 1: (−1 + 0) / 2 = −0.5 wrong → 1/2
    fake = [torch.tensor([[-1.0, -1.0], [4.0, 0.0]]), torch.tensor([[0.0, 0.0], [-1.0, -1.0]])]
    # clip 0: (−1 + 0) / 2 < 0 right; clip 1: (2 − 1) / 2 > 0 wrong → 1/2
    assert float(clip_accuracy(real, fake)) == pytest.approx(0.5)
    assert float(clip_accuracy([torch.zeros(2, 3)], [torch.zeros(2, 3)])) == 0.0  # 0 is on neither side
    assert float(clip_accuracy([torch.ones(2, 3)], [-torch.ones(2, 3)])) == 1.0


def test_feature_matching_by_hand_and_real_is_detached():
    fake = [torch.tensor([1.0, 1.0], requires_grad=True), torch.tensor([0.0], requires_grad=True)]
    real = [torch.tensor([0.0, 2.0], requires_grad=True), torch.tensor([2.0], requires_grad=True)]
    loss = feature_matching(fake, real)  # block MSEs 1 and 4 → 2.5
    assert float(loss) == pytest.approx(2.5)
    loss.backward()
    assert real[0].grad is None and fake[0].grad is not None


def test_lr_factor_warm_up_then_constant_or_cosine():
    assert [lr_factor(s, 4, 12, "none") for s in (0, 1, 3, 4, 11, 50)] == [0.25, 0.5, 1.0, 1.0, 1.0, 1.0]
    # cosine over the 8 steps after warm-up: 0.5 * (1 + cos(pi * (step - 4) / 8))
    assert lr_factor(4, 4, 12, "cosine") == 1.0
    assert lr_factor(8, 4, 12, "cosine") == pytest.approx(0.5)
    assert lr_factor(6, 4, 12, "cosine") == pytest.approx(0.5 * (1 + math.sqrt(0.5)))  # cos(pi/4)
    assert lr_factor(12, 4, 12, "cosine") == 0.0 and lr_factor(20, 4, 12, "cosine") == 0.0
    assert lr_factor(0, 0, 10, "cosine") == 1.0  # no warm-up
