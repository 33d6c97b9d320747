"""Shared fixtures: the real params.yaml shrunk by overrides, and the runtime environment of the CLI."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dcm.ops.env import apply_runtime_defaults

REPO = Path(__file__).resolve().parents[1]
apply_runtime_defaults(REPO)  # before the stages import Hugging Face libraries: nothing from a hub

from dcm.config import load_config  # noqa: E402
from dcm.stages.precompute import run_precompute_stage  # noqa: E402
from dcm.stages.shard import run_shard_stage  # noqa: E402
from dcm.stages.teacher import run_teacher_stage  # noqa: E402

TIERS = ("fast", "integration")  # pyproject.toml: `make test-fast` runs fast and not integration
LONGEST_FIRST = ("test_pipeline_dvc.py", "test_faults.py", "test_deployments.py", "test_videos_pipeline.py",
                 "test_matrix.py", "test_registry.py", "test_demo.py")


def pytest_collection_modifyitems(items):
    """Every test belongs to a tier, so that a new test cannot silently slip out of the edit loop or into it."""
    untiered = [item.nodeid for item in items if not any(item.get_closest_marker(tier) for tier in TIERS)]
    if untiered:
        raise pytest.UsageError(f"tests without a tier marker ({' or '.join(TIERS)}): {untiered[:10]}")
    # Longest files first (`-n 2 --dist loadfile` hands out whole files in this order): a long file started last
    # runs alone at the end while the other core idles. The order is measured (fresh clone, 2 cores).
    def cost(item) -> tuple[int, int]:
        name = item.path.name
        rank = LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
        return rank, 0 if item.get_closest_marker("integration") else 1
    items.sort(key=cost)


@pytest.fixture
def make_config(tmp_path):
    """load_config(params.yaml) with small sizes, outputs and MLflow inside the test's temp dir."""

    def build(*overrides: str):
        base = [f"shard.dir={tmp_path / 'shards'}", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                f"tracking.artifacts={tmp_path / 'mlartifacts'}", "data.shapes.train_samples=24",
                "data.shapes.val_samples=8", "shard.samples_per_shard=10",
                f"teacher.out_dir={tmp_path / 'teacher'}", f"teacher.checkpoint_dir={tmp_path / 'ckpt' / 'teacher'}",
                f"precompute.dir={tmp_path / 'latents'}"]
        return load_config(REPO / "params.yaml", base + list(overrides))

    return build


# A teacher small enough to train and sample in seconds on CPU: 4 frames of 16×16, one block.
TINY_TEACHER = ["data.frames=4", "data.height=16", "data.width=16", "teacher.toy.init=scratch", "teacher.toy.model.num_layers=1",
                "teacher.toy.model.num_attention_heads=2", "teacher.toy.model.attention_head_dim=8",
                "teacher.toy.model.ffn_dim=16", "teacher.toy.model.freq_dim=16", "teacher.toy.text.dim=16",
                "teacher.toy.train.steps=4", "teacher.toy.train.batch_size=4", "teacher.toy.train.warmup_steps=2",
                "teacher.toy.train.checkpoint_every=2", "teacher.toy.train.log_every=1",
                "teacher.toy.train.shuffle_buffer=8", "teacher.toy.train.device=cpu", "teacher.sampling.steps=6",
                "teacher.sampling.eval_prompts=3", "schedule.euler_nodes=10", "distill.kappa=4", "precompute.batch_size=3",
                "precompute.trajectories_per_shard=2", "precompute.dtype=float32", "precompute.device=cpu"]


# Distillation sized for the tiny teacher (whose κ = 4 of 10 Euler nodes leaves five nodes to each expert).
TINY_DISTILL = ["distill.lora.rank=4", "distill.lora.alpha=8", "distill.discriminator.hidden=16",
                "distill.discriminator.groups=4", "distill.discriminator.tap_every=1", "distill.sample_prompts=2"]
for _part in ("semantic", "detail", "baseline"):
    TINY_DISTILL += [f"distill.{_part}.steps=4", f"distill.{_part}.batch_size=4", f"distill.{_part}.checkpoint_every=2",
                     f"distill.{_part}.log_every=1", f"distill.{_part}.shuffle_buffer=8", f"distill.{_part}.device=cpu",
                     f"distill.{_part}.lr=0.001"]


# Every sample gets a teacher trajectory, so trajectory mode has the same data as online mode.
ALL_TRAJECTORIES = ["precompute.trajectories_per_shard=null"]


def data_overrides(root: Path) -> list[str]:
    return [f"shard.dir={root / 'shards'}", f"teacher.out_dir={root / 'teacher'}",
            f"teacher.checkpoint_dir={root / 'ckpt-teacher'}", f"precompute.dir={root / 'latents'}",
            "data.shapes.train_samples=16", "data.shapes.val_samples=6", "shard.samples_per_shard=8"]


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """Shards, a tiny trained teacher and its precompute (every sample with a trajectory), made once per test
    session and only read afterwards (each test distils into its own temp folders)."""
    root = tmp_path_factory.mktemp("prepared")
    overrides = [*TINY_TEACHER, *TINY_DISTILL, *ALL_TRAJECTORIES, *data_overrides(root)]
    cfg = load_config(REPO / "params.yaml", overrides)
    run_shard_stage(cfg)
    run_teacher_stage(cfg)
    run_precompute_stage(cfg)
    return overrides


@pytest.fixture
def config_overrides(prepared, tmp_path) -> list[str]:
    """What `config` builds from, for a test that hands the same configuration to a `dcm` command (-S each)."""
    return [*prepared, f"distill.out_dir={tmp_path / 'students'}", f"distill.checkpoint_dir={tmp_path / 'ckpt'}",
            f"evaluate.out_dir={tmp_path / 'eval'}", f"registry.reevaluation_dir={tmp_path / 'reevaluation'}",
            f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]


@pytest.fixture
def config(config_overrides):
    def build(*extra: str):
        return load_config(REPO / "params.yaml", [*config_overrides, *extra])
    return build


PREFECT_STARTUP_S = 180  # a fresh server migrates its database first; slow on a 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One real `prefect server start` on a free loopback port for the whole test session (its own home),
    stopped by PID at the end. Starting a server costs tens of seconds here: every test that needs a Prefect
    API shares this one."""
    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home / "home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log_path = home / "server.log"
    log = open(log_path, "w")
    process = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                                "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + PREFECT_STARTUP_S
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                log.close()
                pytest.fail("prefect server did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(1)
    yield url
    os.killpg(process.pid, signal.SIGTERM)  # the server's own uvicorn/services children too
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    log.close()


@pytest.fixture(scope="session")
def prefect_api(prefect_server):
    """The session's Prefect server as PREFECT_API_URL for every process the tests start from now on (`dcm`
    stage commands under `dvc repro`), instead of each starting a temporary API of its own."""
    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = prefect_server
    yield prefect_server
    if previous is None:
        os.environ.pop("PREFECT_API_URL", None)
    else:
        os.environ["PREFECT_API_URL"] = previous


def ground_truth_clips(data, count: int) -> list[tuple]:
    """(clip, prompted attributes) of the first `count` val clips of a held-out seed: what a perfect model draws."""
    from dcm.data.shapes import make_sample, prompt_attributes
    return [(clip, prompt_attributes(sample.metadata()))
            for sample, clip in (make_sample(123, "val", i, data) for i in range(count))]
