"""A stock diffusers scheduler that places a student's steps where DCM places them.

Stock pipelines (WanPipeline) call `scheduler.set_timesteps(num_inference_steps)` and take no sigmas, so an
exported student's step placement has to live in the scheduler's config. `FlowMatchEulerDiscreteScheduler`
places N steps at shift(linspace(1, σ_min, N)), stretched so that the last one lands on `shift_terminal`: a
family with two free numbers. DCM needs one placement exactly, the expert boundary (a step must start on
σ_κ, where the semantic expert's jumps end); the last step before 0 is the second. `fit_flow_match` solves
for the shift that puts step `exact` on its target with the last step pinned, and reports how far the
remaining steps land from DCM's own placement. The sampler step itself (x + (σ' − σ)·v) is the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from diffusers import FlowMatchEulerDiscreteScheduler

from dcm.schedule import TIMESTEP_SCALE

SHIFT_BRACKET = (0.01, 100.0)  # shifts searched: the placed sigma rises monotonically with the shift in here
BISECTION_ROUNDS = 200


@dataclass(frozen=True)
class StockPlacement:
    config: dict                # FlowMatchEulerDiscreteScheduler keyword arguments
    steps: int
    sigmas: list[float]         # what the stock scheduler runs (steps values, then 0)
    native: list[float]         # DCMPipeline's own placement for the same step count
    exact: list[int]            # indices where the two agree by construction

    @property
    def max_deviation(self) -> float:
        return float(np.max(np.abs(np.subtract(self.sigmas, self.native))))


def stock_sigmas(config: dict, steps: int) -> list[float]:
    """The sigmas the real scheduler runs for `steps` steps (the trailing 0 included)."""
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    scheduler.set_timesteps(steps)
    return [float(s) for s in scheduler.sigmas]


def fit_flow_match(native: list[float], exact: int) -> StockPlacement:
    """native: DCM's descending sigmas for one step count (ending at 0, starting at 1); exact: the index of
    the step that must match (the expert boundary). The last step before 0 matches too."""
    steps = len(native) - 1
    if steps < 1 or native[-1] != 0.0 or abs(native[0] - 1.0) > 1e-9:
        raise ValueError(f"expected descending sigmas from 1 to 0, got {native}")
    base = {"num_train_timesteps": int(TIMESTEP_SCALE)}
    if steps == 1:
        config = {**base, "shift": 1.0}
        return StockPlacement(config, 1, stock_sigmas(config, 1), list(native), [0, 1])
    last = steps - 1
    if not 0 < exact < last:  # two steps (or the boundary on the last step): the terminal alone places it
        config = {**base, "shift": 1.0, "shift_terminal": native[last]}
        return StockPlacement(config, steps, stock_sigmas(config, steps), list(native), [0, last, steps])

    def at(shift: float) -> float:
        return stock_sigmas({**base, "shift": shift, "shift_terminal": native[last]}, steps)[exact]

    low, high = SHIFT_BRACKET
    target = native[exact]
    if not at(low) <= target <= at(high):
        raise ValueError(f"no shift in {SHIFT_BRACKET} puts step {exact} of {steps} on sigma {target}")
    for _ in range(BISECTION_ROUNDS):  # the placed sigma rises with the shift
        middle = (low * high) ** 0.5
        low, high = (middle, high) if at(middle) < target else (low, middle)
    shift = (low * high) ** 0.5
    config = {**base, "shift": shift, "shift_terminal": native[last]}
    return StockPlacement(config, steps, stock_sigmas(config, steps), list(native), [0, exact, last, steps])
