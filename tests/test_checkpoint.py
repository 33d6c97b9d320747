"""Training checkpoints (dcm/train/checkpoint.py) and how a global batch is split (dcm/train/distributed.py)."""

import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from dcm.errors import StageError
from dcm.train.checkpoint import FORMAT, SHARDS, latest_checkpoint, load_checkpoint, read_state, save_checkpoint
from dcm.train.distributed import micro_slices

pytestmark = pytest.mark.fast


def test_micro_slices_cut_each_rank_share_in_order():
    assert micro_slices(8, 0, 0, 1) == [slice(0, 8)]
    assert micro_slices(8, 2, 0, 1) == [slice(0, 2), slice(2, 4), slice(4, 6), slice(6, 8)]
    assert micro_slices(8, 2, 1, 2) == [slice(4, 6), slice(6, 8)]  # rank 1 of 2: samples 4..7
    assert micro_slices(8, 0, 3, 4) == [slice(6, 8)]


@pytest.mark.parametrize("total, micro, world, words", [(6, 0, 4, "divisible by the number of processes (4)"),
                                                        (8, 3, 2, "divisible by train.micro_batch (3)")])
def test_micro_slices_refuse_a_batch_that_does_not_split(total, micro, world, words):
    with pytest.raises(StageError, match=words.replace("(", r"\(").replace(")", r"\)")):
        micro_slices(total, micro, 0, world)


def trained(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.8, 0.9))
    for _ in range(2):
        model(torch.randn(4, 3)).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def test_a_checkpoint_loads_without_unpickling_anything(tmp_path, monkeypatch):
    """Only safetensors and JSON on disk, and loading works with every unpickling entry point disabled."""
    model, optimizer = trained(0)
    generator = torch.Generator().manual_seed(7)
    path = save_checkpoint(tmp_path, 2, {"model": model}, {"optimizer": (model, optimizer)}, generator,
                           {"note": "x"}, keep=1)
    assert {p.suffix for p in path.rglob("*") if p.is_file()} == {".safetensors", ".json"}
    assert read_state(path)["format"] == FORMAT and list((path / SHARDS).glob("*.safetensors"))

    def refuse(*args, **kwargs):
        raise AssertionError("a checkpoint load unpickled something")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    fresh, fresh_optimizer = trained(1)
    restored = torch.Generator()
    state = load_checkpoint(path, {"model": fresh}, {"optimizer": (fresh, fresh_optimizer)}, restored)
    assert state["note"] == "x" and state["step"] == 2
    for mine, theirs in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(mine, theirs)
    moments = [(s["exp_avg"], s["exp_avg_sq"], s["step"]) for s in optimizer.state.values()]
    loaded = [(s["exp_avg"], s["exp_avg_sq"], s["step"]) for s in fresh_optimizer.state.values()]
    assert all(torch.equal(a, b) for pair in zip(moments, loaded) for a, b in zip(*pair))
    assert fresh_optimizer.param_groups[0]["betas"] in ((0.8, 0.9), [0.8, 0.9])
    assert torch.equal(restored.get_state(), generator.get_state())


def test_a_checkpoint_missing_a_tensor_is_refused_by_name(tmp_path):
    model, optimizer = trained(0)
    path = save_checkpoint(tmp_path, 2, {"model": model}, {"optimizer": (model, optimizer)}, torch.Generator(), {},
                           keep=1)
    bigger = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2), nn.Linear(2, 2))
    with pytest.raises(StageError, match=rf"checkpoint {path} is damaged.*delete that folder"):
        load_checkpoint(path, {"model": bigger}, {}, torch.Generator())


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    model, optimizer = trained(0)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, {"model": model}, {"optimizer": (model, optimizer)}, torch.Generator(), {},
                        keep=2)
    assert sorted(p.name for p in Path(tmp_path).glob("step-*")) == ["step-00000002", "step-00000003"]
    assert latest_checkpoint(tmp_path).name == "step-00000003"
