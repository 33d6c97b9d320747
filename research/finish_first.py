"""When the budget cannot finish every job sharing a GPU, finish as many as it can (run_matrix --finish-first).

Jobs on one GPU share it about evenly, and together they go little faster than one alone (2026-12-06, one H100:
a detail job alone 252 ms/step at batch 32, ~127 clips/s; four sharing ~37 clips/s each, ~148 together). On
2026-12-07 three LCM jobs all stopped at step 1164-1172 of 1200 when the session's device time ran out; at
their pace two alone would have finished. The jobs paused here keep their checkpoints and go on once the others
are done, so whole results come back from a session's last call instead of none.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

EVALUATION_S = 60  # a student's evaluation after its last step (512 prompts, GPU profile, shared card): an estimate
PACE_WINDOW_S = 60  # a job's pace is trusted once its logged steps have been watched for this long


def jobs_to_keep(remaining_s: dict[str, float], left_s: float) -> set[str] | None:
    """Of the jobs sharing one GPU (each one's seconds to finish at the shared pace now), the ones to keep
    running so that the most of them finish within `left_s`: the shortest first. None when all of them finish
    anyway, or when not even the shortest would (then stopping others gains nothing)."""
    sharing = len(remaining_s)
    alone = sorted((seconds / sharing, name) for name, seconds in remaining_s.items())  # the card's time each needs
    kept, used = set(), 0.0
    for seconds, name in alone:
        if used + seconds > left_s:
            break
        kept.add(name)
        used += seconds
    return None if len(kept) in (0, sharing) else kept


@dataclass
class Pace:
    """One running job's progress as the scheduler sees it: (time, last logged step) while the step moves."""
    total_steps: int
    evaluates: bool  # a student: its evaluation follows the last step
    seen: list[tuple[float, int]] = field(default_factory=list)

    def watch(self, step: int | None, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if step is not None and (not self.seen or step != self.seen[-1][1]):
            self.seen.append((now, step))

    def remaining_s(self, now: float | None = None) -> float | None:
        """Seconds to finish at the pace seen so far; None until the steps have moved over PACE_WINDOW_S."""
        now = time.time() if now is None else now
        if len(self.seen) < 2 or self.seen[-1][0] - self.seen[0][0] < PACE_WINDOW_S:
            return None
        (start, first), (logged, last) = self.seen[0], self.seen[-1]
        steps_per_s = (last - first) / (logged - start)
        to_go = (self.total_steps - last) / steps_per_s + (EVALUATION_S if self.evaluates else 0.0)
        return max(0.0, to_go - (now - logged))  # it has gone on since its last logged step
