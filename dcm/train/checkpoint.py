"""Training checkpoints: sharded, resumable on another number of processes, with nothing pickled.

A checkpoint is a folder `step-NNNNNNNN/`:
    shards/shard-0000R-model-00001-of-00001.safetensors   each process's own shards of every tensor (model
                                                          weights, EMA, optimiser states), written in parallel
                                                          through torch.distributed.checkpoint's safetensors
                                                          writer, with each shard's offsets in its header
    <optimizer>.json, state.json                          optimiser hyper-parameters, run state (JSON)
    rng.safetensors                                       the generator every rank shares
Loading reads the headers, then exactly the slices this process's shards need (whatever the saving
world size was); safetensors and JSON hold no code, so loading runs none. The folder is written under a
temporary name and renamed when complete, so the newest folder that exists is always whole.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from dcm.errors import StageError
from dcm.train.distributed import barrier, rank_and_world

STATE_FILE = "state.json"
PREFIX = "step-"
SHARDS = "shards"
FORMAT = 2  # 2: sharded (this file); checkpoints without it are whole-model files of earlier releases
DCP_EVENT_LOGGER = "c10d-NullHandler-dcp_logger"
SEPARATOR = "/"  # between a module's or optimiser's name and its own keys (parameter names hold dots)


def _state_dict_api():
    from torch.distributed.checkpoint import state_dict
    return state_dict


def model_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of a module (this process's shards when it is sharded): everything, unless
    the module names a smaller set with `checkpoint_keys()` (a student whose frozen expert comes from an
    earlier stage)."""
    weights = _state_dict_api().get_model_state_dict(module)
    keys = getattr(module, "checkpoint_keys", None)
    return weights if keys is None else {k: weights[k] for k in keys()}


def flat_state(modules: dict[str, nn.Module], optimizers: dict[str, tuple[nn.Module, torch.optim.Optimizer]]
               ) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """Every tensor of the training state under one flat key, plus the optimisers' non-tensor parts. The
    optimisers' keys are parameter names (not positions), so a re-sharded model maps onto them."""
    api = _state_dict_api()
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, dict] = {}
    for name, module in modules.items():
        tensors |= {f"{name}{SEPARATOR}{key}": value for key, value in model_tensors(module).items()}
    for name, (module, optimizer) in optimizers.items():
        state = api.get_optimizer_state_dict(module, optimizer)  # creates AdamW's lazy states if needed
        scalars = {}
        for parameter, entry in state["state"].items():
            for key, value in entry.items():
                flat = f"{name}{SEPARATOR}{parameter}{SEPARATOR}{key}"
                if torch.is_tensor(value):
                    tensors[flat] = value
                else:
                    scalars[flat] = value
        meta[name] = {"param_groups": state["param_groups"], "scalars": scalars}
    return tensors, meta


def _restore(modules, optimizers, tensors: dict[str, torch.Tensor], meta: dict[str, dict]) -> None:
    api = _state_dict_api()
    for name, module in modules.items():
        prefix = f"{name}{SEPARATOR}"
        weights = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        partial = getattr(module, "checkpoint_keys", None) is not None
        api.set_model_state_dict(module, weights, options=api.StateDictOptions(strict=not partial))
    for name, (module, optimizer) in optimizers.items():
        state: dict[str, dict] = {}
        prefix = f"{name}{SEPARATOR}"
        for flat, value in [*tensors.items(), *meta[name]["scalars"].items()]:
            if flat.startswith(prefix):
                parameter, key = flat[len(prefix):].rsplit(SEPARATOR, 1)
                state.setdefault(parameter, {})[key] = value
        api.set_optimizer_state_dict(module, optimizer, {"state": state, "param_groups": meta[name]["param_groups"]})


def _quiet_dcp(call, *args, **kwargs):
    """torch.distributed.checkpoint warns on every single-process call that no process group exists, and
    logs each failure with its traceback; the failure is reported once, as a StageError."""
    logging.getLogger(DCP_EVENT_LOGGER).propagate = False
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled.*")
        warnings.filterwarnings("ignore", message=".*assuming the intent is to.*")
        return call(*args, **kwargs)


def save_checkpoint(folder: Path, step: int, modules: dict[str, nn.Module],
                    optimizers: dict[str, tuple[nn.Module, torch.optim.Optimizer]], generator: torch.Generator,
                    state: dict, keep: int) -> Path:
    """Write step-N atomically (every process writes its shards; collective), then keep the `keep` newest."""
    import torch.distributed.checkpoint as dcp
    rank, world = rank_and_world()
    final = folder / f"{PREFIX}{step:08d}"
    tmp = folder / f".tmp-{PREFIX}{step:08d}"
    if rank == 0:
        folder.mkdir(parents=True, exist_ok=True)
        for orphan in folder.glob(f".tmp-{PREFIX}*"):  # a save that a kill interrupted
            shutil.rmtree(orphan, ignore_errors=True)
        (tmp / SHARDS).mkdir(parents=True)
    barrier()
    tensors, meta = flat_state(modules, optimizers)
    _quiet_dcp(dcp.save, tensors, storage_writer=dcp.HuggingFaceStorageWriter(str(tmp / SHARDS), save_distributed=True))
    if rank == 0:
        for name, entry in meta.items():
            (tmp / f"{name}.json").write_text(json.dumps(entry))
        save_file({"state": generator.get_state()}, tmp / "rng.safetensors")
        (tmp / STATE_FILE).write_text(json.dumps({**state, "step": step, "format": FORMAT, "world_size": world},
                                                 indent=2, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in sorted(p for p in folder.glob(f"{PREFIX}*") if p.is_dir())[:-keep]:
            shutil.rmtree(old)
    barrier()
    return final


def load_checkpoint(path: Path, modules: dict[str, nn.Module],
                    optimizers: dict[str, tuple[nn.Module, torch.optim.Optimizer]], generator: torch.Generator) -> dict:
    """Restore everything save_checkpoint wrote into this process's shards; returns the JSON state. A damaged
    file names its checkpoint."""
    import torch.distributed.checkpoint as dcp
    try:
        tensors, _ = flat_state(modules, optimizers)
        _quiet_dcp(dcp.load, tensors, storage_reader=dcp.HuggingFaceStorageReader(str(path / SHARDS)))
        meta = {name: json.loads((path / f"{name}.json").read_text()) for name in optimizers}
        _restore(modules, optimizers, tensors, meta)
        generator.set_state(load_file(path / "rng.safetensors")["state"])
        return read_state(path)
    except (OSError, ValueError, RuntimeError, KeyError, AssertionError, SafetensorError,
            dcp.CheckpointException) as error:
        raise StageError(f"checkpoint {path} is damaged ({_reason(error)}); delete that folder to resume from the "
                         "one before it") from None


def _reason(error: Exception) -> str:
    """One line: the last line of a checkpoint exception's per-rank tracebacks, else the error itself."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:300]


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every shard file's tensors of a checkpoint (for inspection; keys repeat per shard)."""
    tensors = {}
    for shard in sorted((path / SHARDS).glob("*.safetensors")):
        tensors |= {f"{shard.name}:{k}": v for k, v in load_file(shard).items()}
    return tensors


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
