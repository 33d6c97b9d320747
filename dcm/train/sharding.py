"""FSDP2 for the shared training loop: every model a step touches is sharded per transformer block over
the processes torchrun started, with activation checkpointing applied inside each block first.

Order matters, as torchtitan does it: activation checkpointing wraps a block's own forward, then
`fully_shard` wraps the block (its hooks all-gather the weights before the checkpointed forward and
again before its recomputation in backward), then the root. diffusers' own gradient checkpointing inside
a sharded block fails (the recomputed values' metadata differ), so blocks are recomputed here instead,
for one process as for many.

Trainable models compute in bf16 on CUDA (weights, gradients and AdamW states stay fp32, gradients are
reduced in fp32); frozen ones are stored in `frozen_dtype` and never see an optimiser.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from dcm.errors import StageError

try:  # public from torch 2.6; torch 2.5 ships the same FSDP2 under _composable
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
except ImportError:  # pragma: no cover - torch 2.5
    from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def data_parallel() -> bool:
    """True under torchrun (a process group exists): models are sharded and checkpoints are collective."""
    return dist.is_available() and dist.is_initialized()


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """The repeated blocks of every diffusers model inside `module` (the units FSDP shards and activation
    checkpointing recomputes): the classes each model names in `_repeated_blocks`, else `_no_split_modules`."""
    names: set[str] = set()
    for model in module.modules():
        names |= set(getattr(model, "_repeated_blocks", None) or getattr(model, "_no_split_modules", None) or ())
    return [m for m in module.modules() if type(m).__name__ in names]


def recompute_blocks(module: nn.Module) -> None:
    """Activation checkpointing: each block's forward is recomputed in backward instead of storing its
    activations. The block keeps its parameter names (state dicts and checkpoints are unchanged)."""
    blocks = transformer_blocks(module)
    if not blocks:
        raise StageError(f"train.gradient_checkpointing needs a diffusers model with repeated blocks; "
                         f"{type(module).__name__} holds none: set it to false")
    inner = {id(m) for block in blocks for m in block.modules() if m is not block}
    for block in blocks:
        if id(block) not in inner:  # a block nested in another is recomputed with it
            block.forward = _recomputed(block.forward)


def _recomputed(forward):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return run


def compute_policy(device: torch.device, precision: str) -> MixedPrecisionPolicy:
    """bf16 weights in forward/backward on CUDA, fp32 gradient reduction. Inputs keep their dtype: sigmas
    and timesteps in bf16 would lose the resolution that tells nodes apart."""
    if device.type == "cuda" and precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)
    return MixedPrecisionPolicy()


# diffusers transformers return their output as a view (a reshape); FSDP2 then warns that an in-place op on it
# would skip its backward hook. Every model call of dcm uses the output out of place (velocity arithmetic).
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


def shard(module: nn.Module, device: torch.device, policy: MixedPrecisionPolicy | None = None) -> nn.Module:
    """fully_shard each block, then the rest of the module as the root unit (in place)."""
    mesh = device_mesh(device)
    policy = policy or MixedPrecisionPolicy()
    for block in reversed(transformer_blocks(module)):  # inner units before the units that hold them
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(module, mesh=mesh, mp_policy=policy)
    return module


@functools.lru_cache(maxsize=None)
def _mesh(device_type: str, world: int):
    from torch.distributed.device_mesh import init_device_mesh
    return init_device_mesh(device_type, (world,))


def device_mesh(device: torch.device):
    return _mesh(device.type, dist.get_world_size())


def store_frozen(module: nn.Module, dtype_name: str, device: torch.device, precision: str) -> nn.Module:
    """A frozen model in its storage dtype. Anything below fp32 computes under the loop's bf16 autocast, so
    it needs CUDA with train.precision bf16."""
    dtype = DTYPES[dtype_name]
    if all(p.dtype == dtype for p in module.parameters()):
        return module
    if dtype != torch.float32 and not (device.type == "cuda" and precision == "bf16"):
        raise StageError(f"frozen_dtype {dtype_name} needs CUDA with train.precision bf16 (this run: {device.type}, "
                         f"{precision}); set it to float32 on CPU")
    return module.to(dtype)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor (the tensor itself when nothing is sharded)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def full_value(tensor: torch.Tensor) -> torch.Tensor:
    """A reduced value (a gradient norm) as a plain tensor on every process."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole state dict on CPU on rank 0 ({} elsewhere), gathered one tensor at a time (collective)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
