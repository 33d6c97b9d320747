"""Family name → adapter class; imports are lazy so a family's heavy classes load only when used."""

from __future__ import annotations

import importlib

FAMILIES = {
    "toy": ("dcm.models.toy", "ToyFamily"),
    "wan": ("dcm.models.wan", "WanFamily"),
    "hunyuan": ("dcm.models.hunyuan", "HunyuanFamily"),
    "cogvideox": ("dcm.models.cogvideox", "CogVideoXFamily"),
}


def family_class(name: str):
    if name not in FAMILIES:
        raise ValueError(f"unknown teacher family {name!r}; choose one of {sorted(FAMILIES)}")
    module, attribute = FAMILIES[name]
    return getattr(importlib.import_module(module), attribute)
