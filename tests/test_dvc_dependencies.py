"""DVC's view of what each stage depends on, checked with real DVC on a copy of the project.

Running the pipeline to get a dvc.lock takes minutes; the dependency graph does not need it. Every stage's
outputs are written as placeholders and recorded with `dvc commit`, so `dvc status` starts clean; then a
single edit shows exactly which stages DVC would re-run.
"""

from __future__ import annotations

import re

import pytest
import yaml

from dcm.config import load_config
from dcm.ops.dvcfile import SPECS
from tests.project import copy_project, dvc

pytestmark = pytest.mark.integration


def resolve(template: str, tree: dict) -> str:
    """${a.b} → params value, as DVC's templating does."""
    def value(match: re.Match) -> str:
        node = tree
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)
    return re.sub(r"\$\{([^}]+)\}", value, template)


@pytest.fixture
def committed(tmp_path):
    """A project copy whose every stage output exists (placeholders) and is recorded in dvc.lock."""
    project = copy_project(tmp_path / "project")
    tree = load_config(project / "params.yaml").model_dump(mode="json")
    for spec in SPECS:
        for out in (*spec.outs, *spec.metrics, *spec.plots):
            path = project / resolve(out.path, tree)
            if path.suffix:  # a file
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("{}\n" if path.suffix == ".json" else "placeholder\n")
            else:  # a folder
                path.mkdir(parents=True, exist_ok=True)
                (path / "placeholder.txt").write_text(f"{spec.name}\n")
    for spec in SPECS:  # a file inside another stage's output folder (evaluate reads the shards' manifest)
        for dep in spec.deps:
            path = project / resolve(dep, tree)
            if path.suffix and not path.exists():
                path.write_text("{}\n")
    done = dvc(project, "commit", "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    status = dvc(project, "status")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    return project


def stale_stages(project) -> set[str]:
    """Stage names `dvc status` reports as changed."""
    status = dvc(project, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    return {line.strip().rstrip(":") for line in status.stdout.splitlines()
            if line and not line.startswith((" ", "\t")) and line.rstrip().endswith(":")}


def test_editing_the_guided_velocity_makes_the_distill_stages_stale(committed):
    """dcm/sampling.py builds the distillation targets: an edit there must re-run every student."""
    sampling = committed / "dcm" / "sampling.py"
    sampling.write_text(sampling.read_text() + "\n# an edit\n")
    stale = stale_stages(committed)
    assert {"distill_semantic", "distill_detail", "distill_baselines"} <= stale, stale
    assert "shard" not in stale  # the shard stage never samples


def test_editing_another_profile_leaves_the_pipeline_up_to_date(committed):
    params = yaml.safe_load((committed / "params.yaml").read_text())
    params["profiles"]["gpu"]["teacher.toy.train.steps"] = 123  # the tiny profile is the active one
    (committed / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stale_stages(committed) == set()
    params["profiles"]["tiny"]["distill.detail.lr"] = 0.0123  # the active one: its stages re-run
    (committed / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "distill_detail" in stale_stages(committed)


def test_a_param_only_one_stage_reads_re_runs_that_stage_alone(committed):
    params = yaml.safe_load((committed / "params.yaml").read_text())
    params["distill"]["discriminator"]["lr"] = 0.0002  # the detail stage's GAN
    (committed / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert stale_stages(committed) == {"distill_detail"}
