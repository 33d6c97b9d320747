"""Shared fixtures: the real params.yaml shrunk by overrides, and the runtime environment of the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcm.config import load_config
from dcm.env import apply_runtime_defaults

REPO = Path(__file__).resolve().parents[1]
apply_runtime_defaults(REPO)


@pytest.fixture
def make_config(tmp_path):
    """load_config(params.yaml) with small sizes, outputs and MLflow inside the test's temp dir."""

    def build(*overrides: str):
        base = [f"shard.dir={tmp_path / 'shards'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                f"tracking.artifacts={tmp_path / 'mlartifacts'}", "data.shapes.train_samples=24",
                "data.shapes.val_samples=8", "shard.samples_per_shard=10"]
        return load_config(REPO / "params.yaml", base + list(overrides))

    return build
