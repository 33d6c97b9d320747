"""What makes a stage re-run, stated once per stage.

A stage's spec names its command, the Prefect flow module it runs (whose import closure is the code the
stage depends on: computed, never hand-kept), the params.yaml keys it reads, the data it reads and the
outputs it writes. `dcm dvc-yaml` turns the specs into dvc.yaml; the training stages fingerprint their
checkpoints with the same parameter lists (`param_values`), so DVC and resume agree on what matters.
Every stage also depends on `profile` and on the *active* profile's overrides, and on nothing else of
the `profiles` table: editing the gpu profile leaves the default pipeline up to date.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dcm.config import DCMConfig, config_to_dict

PROFILE_PARAMS = ("profile", "profiles.${profile}")
# Training checkpoints stay out of DVC: at 14B they would be hundreds of GB hashed, cached and pushed per
# stage. The training loop resumes from them and sets aside those trained under other settings itself.
CHECKPOINTS_NOTE = "checkpoints (for resume) are no DVC output: never hashed, cached or pushed"


@dataclass(frozen=True)
class Output:
    path: str  # a DVC path template, e.g. ${teacher.out_dir}/model
    persist: bool = False  # survives a killed run: the stage resumes from it (checkpoints, finished shards)
    cache: bool = True  # False: small files committed to git with dvc.lock (metrics, reports)
    note: str = ""  # why, written into dvc.yaml as a comment
    plot: dict[str, str] = field(default_factory=dict)  # DVC plot options (x, y) for a plots entry


@dataclass(frozen=True)
class StageSpec:
    name: str  # the DVC stage
    command: str  # what `dvc repro` runs
    flow: str  # module of the stage's Prefect flow; its import closure is the stage's code dependency
    params: tuple[str, ...]  # params.yaml keys (sections or leaves) whose values shape the outputs
    deps: tuple[str, ...] = ()  # data it reads: upstream outputs and input folders (DVC path templates)
    outs: tuple[Output, ...] = ()
    metrics: tuple[Output, ...] = ()
    plots: tuple[Output, ...] = ()
    note: str = ""  # one line for dvc.yaml

    @property
    def dvc_params(self) -> list[str]:
        return [*PROFILE_PARAMS, *self.params]


def param_values(cfg: DCMConfig, keys: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """{dotted key: value} of the config for `keys`: what a fingerprint hashes."""
    tree = config_to_dict(cfg)
    values = {}
    for key in keys:
        node: Any = tree
        for part in key.split("."):
            node = node[part]
        values[key] = node
    return values
