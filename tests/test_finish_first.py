"""research/finish_first.py: which jobs sharing a GPU to keep when the budget cannot finish them all, and the
pace run_matrix reads from their curves."""

import json
import sys

import pytest

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "research"))
from finish_first import EVALUATION_S, PACE_WINDOW_S, Pace, jobs_to_keep  # noqa: E402
from run_matrix import last_logged_step  # noqa: E402

pytestmark = pytest.mark.fast


def test_the_shortest_jobs_are_kept_while_their_share_of_the_card_fits():
    # three jobs sharing a card, 300 s each at the shared pace: 100 s each of the card alone
    three = {"a": 300.0, "b": 300.0, "c": 300.0}
    assert jobs_to_keep(three, 350.0) is None  # 300 s of card time: all three finish anyway
    assert len(jobs_to_keep(three, 250.0)) == 2  # two fit (200 s), three do not (300 s)
    assert jobs_to_keep(three, 50.0) is None  # not even one: stopping others would gain nothing
    # 90 / 3 = 30 s and 240 / 3 = 80 s alone: the short one and the middle one (110 s) fit 120 s, not the long one
    assert jobs_to_keep({"short": 90.0, "long": 600.0, "middle": 240.0}, 120.0) == {"short", "middle"}


def test_a_pace_is_trusted_only_after_the_steps_moved_for_a_while(tmp_path):
    pace = Pace(total_steps=600, evaluates=True)
    pace.watch(100, now=0.0)
    pace.watch(100, now=10.0)  # the same step again: not a new observation
    pace.watch(125, now=PACE_WINDOW_S / 2)
    assert pace.remaining_s(now=PACE_WINDOW_S / 2) is None
    pace.watch(150, now=100.0)  # 50 steps in 100 s: 450 steps to go take 900 s, then the evaluation
    assert pace.remaining_s(now=100.0) == pytest.approx(900.0 + EVALUATION_S)
    assert pace.remaining_s(now=130.0) == pytest.approx(870.0 + EVALUATION_S)  # it went on since step 150
    expert = Pace(total_steps=200, evaluates=False, seen=[(0.0, 0), (100.0, 100)])
    assert expert.remaining_s(now=100.0) == pytest.approx(100.0)  # a semantic expert is not evaluated

    curve = tmp_path / "curve.jsonl"
    assert last_logged_step(curve) is None
    curve.write_text(json.dumps({"step": 25, "loss": 0.1}) + "\n" + json.dumps({"step": 50}) + '\n{"step": 7')
    assert last_logged_step(curve) == 50  # the half-written line of a killed job is skipped
