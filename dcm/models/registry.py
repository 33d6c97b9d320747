"""Family name → adapter class. Each family's module is imported when it is asked for, so a family's heavy
diffusers and transformers classes load only when that family is used."""

from __future__ import annotations

FAMILIES = ("toy", "wan", "hunyuan", "cogvideox")


def family_class(name: str):
    if name == "toy":
        from dcm.models.toy import ToyFamily
        return ToyFamily
    if name == "wan":
        from dcm.models.wan import WanFamily
        return WanFamily
    if name == "hunyuan":
        from dcm.models.hunyuan import HunyuanFamily
        return HunyuanFamily
    if name == "cogvideox":
        from dcm.models.cogvideox import CogVideoXFamily
        return CogVideoXFamily
    raise ValueError(f"unknown teacher family {name!r}; choose one of {sorted(FAMILIES)}")
