"""A wall-clock budget for a run (`trainer.time_limit=30m`): how many optimizer steps still fit.

The schedule is a function of (step, total steps); under a time limit the total is not known in advance,
so it is estimated from the steps measured so far and corrected at every step: total = steps done +
the steps that fit in the time left, where the time left keeps back what the final evaluation and save
will take. When only the step in hand still fits, it becomes the last one (total = its number), so the
schedule ends on its final value. The clock runs from the first step to the end of the final evaluation
and save (start-up before training is not counted); a resumed run continues the clock where it stopped.

Naming: s = seconds.
"""

from __future__ import annotations

import re
import time

from detcli.errors import ConfigError

UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}
# steps before the rate is measured (the first ones also start loader workers and warm allocators); until
# it is, the configured length stands in for the total
SKIP_STEPS = 2


def parse_duration(value, key: str = "trainer.time_limit") -> float | None:
    """'30m', '1.5h', '90s', '45min' -> seconds; null -> None. A bare number is refused: the unit is
    ambiguous (ultralytics' time= is hours)."""
    if value is None:
        return None
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-z]+)\s*", str(value).lower())
    if not m or m.group(2) not in UNITS:
        raise ConfigError(f"{key}={value!r} is not a duration: give a number with a unit, e.g. 30m, 1.5h, 90s "
                          f"(units {', '.join(UNITS)}).")
    seconds = float(m.group(1)) * UNITS[m.group(2)]
    if seconds <= 0:
        raise ConfigError(f"{key}={value!r} must be longer than zero.")
    return seconds


class TimeBudget:
    """Counts the run's seconds and estimates the total steps that fit in `limit_s`.

    `elapsed_s` comes from a checkpoint on resume. What one evaluation plus saving takes is the longest
    measured so far; before the first, `eval_in_steps` training steps' time guesses it."""

    def __init__(self, limit_s: float, elapsed_s: float = 0.0, eval_in_steps: float = 0.0):
        self.limit_s = float(limit_s)
        self.before_s = float(elapsed_s)  # spent by earlier sessions of this run
        self.eval_in_steps = float(eval_in_steps)
        self.measured_eval_s: float | None = None
        self.t0: float | None = None  # perf_counter at this session's start
        self.rate_from: tuple[int, float] | None = None  # (step, time) the step rate is measured from
        self.first_step_s: float | None = None

    def start(self) -> None:
        self.t0 = time.perf_counter()

    @property
    def elapsed_s(self) -> float:
        return self.before_s + (time.perf_counter() - self.t0 if self.t0 is not None else 0.0)

    def record_eval(self, seconds: float) -> None:
        self.measured_eval_s = max(self.measured_eval_s or 0.0, seconds)

    def eval_s(self, per_step: float) -> float:
        return self.measured_eval_s if self.measured_eval_s is not None else self.eval_in_steps * per_step

    def step_done(self, session_steps: int, step: int) -> None:
        """Called after each step: the rate is measured over the steps after the first SKIP_STEPS of this
        session, their evaluations and saves included (so periodic evaluations are paid for as they come)."""
        now = time.perf_counter()
        if session_steps == 1:
            self.first_step_s = now - self.t0
        if session_steps == SKIP_STEPS:
            self.rate_from = (step, now)

    def seconds_per_step(self, step: int) -> float:
        """Measured over this session's steps after the first SKIP_STEPS (call once they are done)."""
        return (time.perf_counter() - self.rate_from[1]) / (step - self.rate_from[0])

    def total_steps(self, step: int, provisional: int) -> int:
        """The run's total under the budget, seen after `step` steps: at least step + 1 (the step about to
        run), which is the last when no other fits behind it. Until the rate is measured, `provisional`
        (the configured length) stands in, unless the time is already up."""
        if self.rate_from is None or step <= self.rate_from[0]:
            per_step = self.first_step_s or 0.0
            left = self.limit_s - self.elapsed_s - self.eval_s(per_step)
            return step + 1 if left <= per_step else max(provisional, step + 2)
        per_step = max(self.seconds_per_step(step), 1e-9)
        left = self.limit_s - self.elapsed_s - self.eval_s(per_step)
        return step + max(1, int(left / per_step))
