"""Training checkpoints with nothing pickled: weights, optimiser and RNG in safetensors, the rest JSON.

A checkpoint is a folder `step-NNNNNNNN/` written under a temporary name and renamed when complete,
so the newest folder that exists is always whole. Older ones are rotated out.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from dcm.errors import StageError

STATE_FILE = "state.json"
PREFIX = "step-"


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            name = f"{index}.{key}"
            if torch.is_tensor(value):
                tensors[name] = value.detach().cpu().contiguous()
            else:
                scalars[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in list(tensors.items()) + list(meta["scalars"].items()):
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def checkpoint_weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of a module: everything, unless the module names a smaller set with
    `checkpoint_keys()` (a student whose frozen expert comes from an earlier stage)."""
    weights = module.state_dict()
    keys = getattr(module, "checkpoint_keys", None)
    return weights if keys is None else {k: weights[k] for k in keys()}


def restore_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    if getattr(module, "checkpoint_keys", None) is None:
        module.load_state_dict(weights)
        return
    missing = set(module.checkpoint_keys()) - set(weights)
    unexpected = set(weights) - set(module.state_dict())
    if missing or unexpected:
        raise ValueError(f"weights do not match the model: missing {sorted(missing)[:3]}, unexpected "
                         f"{sorted(unexpected)[:3]}")
    module.load_state_dict(weights, strict=False)


def save_checkpoint(folder: Path, step: int, modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]],
                    optimizers: dict[str, torch.optim.Optimizer], generator: torch.Generator, state: dict,
                    keep: int) -> Path:
    """Write step-N atomically, then drop all but the `keep` newest checkpoints."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{step:08d}"
    for orphan in folder.glob(f".tmp-{PREFIX}*"):  # a save that a kill interrupted; one writer per folder
        shutil.rmtree(orphan, ignore_errors=True)
    tmp = folder / f".tmp-{PREFIX}{step:08d}-{os.getpid()}"
    tmp.mkdir()
    for name, module in modules.items():
        weights = module if isinstance(module, dict) else checkpoint_weights(module)
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, tmp / f"{name}.safetensors")
    for name, optimizer in optimizers.items():
        tensors, meta = optimizer_tensors(optimizer)
        save_file(tensors, tmp / f"{name}.safetensors")
        (tmp / f"{name}.json").write_text(json.dumps(meta))
    save_file({"state": generator.get_state()}, tmp / "rng.safetensors")
    (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2, sort_keys=True))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(p for p in folder.glob(f"{PREFIX}*") if p.is_dir())[:-keep]:
        shutil.rmtree(old)
    return final


def read_state(path: Path) -> dict:
    return json.loads((path / STATE_FILE).read_text())


def supersede(folder: Path, tag: str) -> Path:
    """Move every checkpoint of `folder` into `folder/superseded-<tag>/` (kept, no longer resumed)."""
    target = folder / f"superseded-{tag}"
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(folder.glob(f"{PREFIX}*")):
        if (target / path.name).exists():
            shutil.rmtree(target / path.name)
        os.replace(path, target / path.name)
    return target


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint (temporary folders of a killed save are ignored)."""
    done = sorted(p for p in folder.glob(f"{PREFIX}*") if (p / STATE_FILE).is_file()) if folder.is_dir() else []
    return done[-1] if done else None


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                    generator: torch.Generator) -> dict:
    """Restore everything save_checkpoint wrote; returns the JSON state. A damaged file names itself."""
    try:
        for name, module in modules.items():
            restore_weights(module, load_file(path / f"{name}.safetensors"))
        for name, optimizer in optimizers.items():
            restore_optimizer(optimizer, load_file(path / f"{name}.safetensors"),
                              json.loads((path / f"{name}.json").read_text()))
        generator.set_state(load_file(path / "rng.safetensors")["state"])
        return json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as error:
        raise StageError(f"checkpoint {path} is damaged ({type(error).__name__}: {error}); delete that folder "
                         "to resume from the one before it") from None
