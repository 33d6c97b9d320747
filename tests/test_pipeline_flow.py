"""The pipeline flow's pure parts: which failures it retries, and the stage order it takes from dvc.yaml."""

import pytest
from prefect.states import Failed

from dcm.ops.flows.pipeline import StageFailed, retry_crashes, stage_order
from tests.conftest import REPO

pytestmark = pytest.mark.fast


def test_crashes_are_retried_and_clear_errors_are_not():
    crash = StageFailed("distill_detail", ["Traceback (most recent call last):", "ValueError: Invalid beta"])
    clear = StageFailed("shard", ["dcm: config error: data.frames must be at least 2"])
    assert crash.crashed and not clear.crashed
    assert retry_crashes(None, None, Failed(data=crash))
    assert not retry_crashes(None, None, Failed(data=clear))
    assert retry_crashes(None, None, Failed(data=RuntimeError("the Prefect API went away")))
    assert "stage shard failed" in str(clear) and "data.frames" in str(clear)


def test_stages_run_in_dvc_yaml_order_which_is_dependency_order():
    order = stage_order(REPO)
    assert order[:3] == ["shard", "teacher", "precompute"] and order[-2:] == ["evaluate", "register"]
    assert order.index("distill_semantic") < order.index("distill_detail")
