"""The student: a semantic expert and (for DCM) a detail expert, routed per sample by sigma.

The semantic expert is a copy of the teacher's transformer. The detail expert is, by default, the same
weights plus a peft LoRA adapter named `detail` and fresh copies of the family's conditioning embedder
and output layers (`family.detail_modules`), so it costs a few percent more parameters; `full` makes it a
second whole transformer (the paper's ablation). A single-expert student (LCM, PCM, the semantic stage
alone) routes everything to the semantic expert.

Routing is per sample: a batch mixing sigmas on both sides of the split runs each expert on its own
samples and puts the results back in order, so it equals two separate calls exactly.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from dcm.config import LoraConfig

DETAIL = "detail"
SEMANTIC_LORA = "semantic"


def lora_config(cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    return PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, target_modules=list(cfg.targets), init_lora_weights=True)


def select(cond: dict[str, torch.Tensor], index: torch.Tensor) -> dict[str, torch.Tensor]:
    return {key: value[index] for key, value in cond.items()}


@contextmanager
def adapters(transformer: nn.Module, enabled: bool) -> Iterator[None]:
    """Switch the LoRA layers on or off for one call. peft's switch also flips requires_grad of the adapter
    weights; the flags are put back so that freezing decisions made by a stage survive routing."""
    if not getattr(transformer, "_hf_peft_config_loaded", False):
        yield
        return
    flags = {name: p.requires_grad for name, p in transformer.named_parameters() if "lora_" in name}
    (transformer.enable_adapters if enabled else transformer.disable_adapters)()
    try:
        yield
    finally:
        transformer.enable_adapters()
        for name, p in transformer.named_parameters():
            if name in flags:
                p.requires_grad_(flags[name])


@contextmanager
def swapped(transformer: nn.Module, replacements: dict[str, nn.Module | nn.Parameter]) -> Iterator[None]:
    """Put the detail expert's copies in place of the transformer's own modules for one call."""
    originals = {name: getattr(transformer, name) for name in replacements}
    try:
        for name, value in replacements.items():
            setattr(transformer, name, value)
        yield
    finally:
        for name, value in originals.items():
            setattr(transformer, name, value)


class Student(nn.Module):
    """velocity(x, sigma, cond) of the distilled model; `family` supplies the model call conventions
    (timestep scaling, x0-prediction, embedded guidance) for whichever transformer is active."""

    def __init__(self, family, transformer: nn.Module, threshold: float | None = None,
                 guidance: float | None = None):
        super().__init__()
        self.transformer = transformer
        self.threshold, self.guidance = threshold, guidance
        self.detail_kind: str | None = None
        self.detail_copies = nn.ModuleDict()
        self.detail_params = nn.ParameterDict()
        self.detail_transformer: nn.Module | None = None
        self.trained: list[str] = []
        # A shallow copy of the family that calls our transformer (it shares the teacher's VAE and text
        # parts, which some families' model call reads; deep copies share them too, see __deepcopy__).
        self.shell = copy.copy(family)
        self.shell.transformer = transformer

    def __deepcopy__(self, memo: dict) -> Student:
        """Copy the weights (a target network, an EMA) but share the frozen VAE and text encoders."""
        memo.setdefault(id(self.shell.vae), self.shell.vae)
        memo.setdefault(id(self.shell.text_parts), self.shell.text_parts)
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        clone.__dict__.update({key: copy.deepcopy(value, memo) for key, value in self.__dict__.items()})
        return clone

    # -- building --------------------------------------------------------------------------------------
    def add_detail_expert(self, kind: str, detail_modules: tuple[str, ...], lora: LoraConfig | None,
                          threshold: float) -> None:
        """kind "lora": adapter + copies of `detail_modules` initialised from the semantic expert;
        kind "full": a full copy of the semantic transformer."""
        self.threshold, self.detail_kind = threshold, kind
        if kind == "full":
            self.detail_transformer = copy.deepcopy(self.transformer)
            return
        self.copy_detail_modules(detail_modules)
        self.transformer.add_adapter(lora_config(lora), adapter_name=DETAIL)

    def copy_detail_modules(self, detail_modules: tuple[str, ...]) -> None:
        for name in detail_modules:
            value = copy.deepcopy(getattr(self.transformer, name))
            if isinstance(value, nn.Parameter):
                self.detail_params[name] = value
            else:
                self.detail_copies[name] = value

    def detail_modules(self) -> dict[str, nn.Module | nn.Parameter]:
        return {**self.detail_copies, **self.detail_params}

    def load_detail_modules(self, weights: dict[str, torch.Tensor]) -> None:
        """Inverse of lora_io.save_modules: keys are the transformer's own names."""
        with torch.no_grad():
            for name, module in self.detail_copies.items():
                module.load_state_dict({k[len(name) + 1:]: v for k, v in weights.items() if k.startswith(f"{name}.")})
            for name, param in self.detail_params.items():
                param.copy_(weights[name])

    def detail_parameters(self) -> list[nn.Parameter]:
        if self.detail_kind == "full":
            return list(self.detail_transformer.parameters())
        lora = [p for name, p in self.transformer.named_parameters() if "lora_" in name]
        return lora + list(self.detail_copies.parameters()) + list(self.detail_params.parameters())

    # -- running ---------------------------------------------------------------------------------------
    def add_semantic_lora(self, lora: LoraConfig) -> None:
        """Stage 1 as a LoRA (users asked the reference code for it); merged by `merge_semantic_lora`."""
        self.transformer.add_adapter(lora_config(lora), adapter_name=SEMANTIC_LORA)

    def merge_semantic_lora(self) -> None:
        self.transformer.fuse_lora(adapter_names=[SEMANTIC_LORA])
        self.transformer.unload_lora()

    def train_only(self, part: str) -> None:
        """Freeze everything except `part`: semantic (every transformer weight), semantic_lora, or detail.
        The trained names are also what checkpoints keep (`checkpoint_keys`)."""
        self.requires_grad_(False)
        named = dict(self.transformer.named_parameters())
        if part == "semantic":
            chosen = [p for name, p in named.items() if "lora_" not in name]
        elif part == "semantic_lora":
            chosen = [p for name, p in named.items() if "lora_" in name and f".{SEMANTIC_LORA}." in name]
        elif part == "detail":
            chosen = self.detail_parameters()
        else:
            raise ValueError(f"unknown part {part!r}")
        ids = {id(p) for p in chosen}
        for p in chosen:
            p.requires_grad_(True)
        self.trained = sorted(name for name, p in self.named_parameters() if id(p) in ids)

    def checkpoint_keys(self) -> list[str]:
        return self.trained

    @contextmanager
    def expert(self, name: str) -> Iterator[None]:
        if self.detail_kind != "lora":
            with self._full_expert(name):
                yield
        elif name == "semantic":
            with adapters(self.transformer, enabled=False):
                yield
        else:
            with adapters(self.transformer, enabled=True), swapped(self.transformer, self.detail_modules()):
                yield

    @contextmanager
    def _full_expert(self, name: str) -> Iterator[None]:
        if name == "semantic" or self.detail_transformer is None:
            yield
            return
        self.shell.transformer = self.detail_transformer
        try:
            yield
        finally:
            self.shell.transformer = self.transformer

    def expert_velocity(self, name: str, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        with self.expert(name):
            return self.shell.velocity(x, sigma, cond, guidance=self.guidance)

    def is_detail(self, sigma: torch.Tensor) -> torch.Tensor:
        if self.detail_kind is None or self.threshold is None:
            return torch.zeros_like(sigma, dtype=torch.bool)
        return sigma <= self.threshold

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: dict) -> torch.Tensor:
        """Velocity at per-sample sigmas, each sample through its own expert."""
        detail = self.is_detail(sigma)
        parts, order = [], []
        for name, mask in (("semantic", ~detail), ("detail", detail)):
            index = mask.nonzero().flatten()
            if len(index):
                parts.append(self.expert_velocity(name, x[index], sigma[index], select(cond, index)))
                order.append(index)
        if len(parts) == 1:
            return parts[0]
        inverse = torch.argsort(torch.cat(order))
        return torch.cat(parts)[inverse]

    velocity = forward
