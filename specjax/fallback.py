"""Falling back to incremental decoding inside a request when speculation does not pay.

The automatic choice (specjax.autotune) picks drafters and a budget from acceptance statistics
measured on other prompts and a cost curve of the LLM's forward alone; on the prompts at hand the
drafters may agree less, and the loop costs more than the forward. So the speculative loop is watched
while it runs: between calls of the loop (specjax.chunked, about every 0.5 s) the tokens it committed
per second are compared with what incremental decoding of the same rows would give (the measured
cost of one forward over that many tokens, `verify[N]` of the cost curve, plus what the real
incremental loop adds to a step, measured once per machine with the curve). When speculation is slower,
the rest of the request decodes incrementally on the same state: the speculative state wraps the
incremental loop's DecodeState (same token buffer, same LLM cache layout), so the switch costs nothing
but the incremental loop's compile, once per process.

Exactness: greedy, both loops emit the LLM's argmax, so the output is the same token for token; sampled,
every step of either loop draws its tokens from the LLM's distribution given everything before it, and
the switch depends only on the past, so the output distribution is still exactly the LLM's.

The switch is one-way within a request (the SSM drafters would have to re-read what was committed
without them), and every request starts speculative again (prompts differ in how well they draft).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

import jax
import numpy as np

from specjax import sharding

WARMUP_CALLS = 1  # loop calls not judged (the first runs 4 steps: too few to time)
MIN_STEPS = 32  # speculative steps judged before any decision (lookup drafts little early on)
MARGIN = 0.9  # from_costs: speculation falls back below 0.9x the incremental estimate (FallbackConfig)


@dataclasses.dataclass(frozen=True)
class FallbackConfig:
    """verify_seconds: {N: seconds of one LLM forward + head over N tokens, B=1} (autotune's curve);
    loop_seconds: what the real incremental loop adds to each step beside that forward (autotune's
    measured incremental step - verify(1)); an incremental step over B rows is taken to cost
    verify_seconds at N = B (interpolated) + loop_seconds.
    margin: speculation is kept while its tokens/s >= margin x incremental's estimate. Default
    MARGIN: the estimate is a lower bound on what incremental decoding costs (the fastest of its
    timed repeats, at a 100-token context) while speculation is timed as it runs, at the request's
    own context, over ~1 s; on this project's 2-core VMs run-to-run spread is +-10%, and with margin
    1.0 two Spec-Bench runs (docs/benchmarks.md, 2026-12-07) sent 4 and 2 of 14 requests back to
    incremental decoding that, run again alone, speculated to the end (summarization: MAT 1.75)."""

    verify_seconds: tuple[tuple[int, float], ...]
    margin: float = 1.0
    loop_seconds: float = 0.0

    @classmethod
    def from_costs(cls, costs: dict, margin: float | None = None) -> "FallbackConfig":
        verify = tuple(sorted((int(n), float(s)) for n, s in costs["verify"].items()))
        loop = max(float(costs.get("incremental", verify[0][1])) - dict(verify)[1], 0.0)
        return cls(verify, MARGIN if margin is None else margin, loop)

    def incremental_step_seconds(self, rows: int) -> float:
        ns, ss = zip(*self.verify_seconds)
        return float(np.interp(rows, ns, ss)) + self.loop_seconds


class Watch:
    """Wraps the speculative loop's call(state, max_steps): after the warm-up it times the calls and
    counts the tokens they commit; once speculation is slower than incremental decoding would be, the
    calls run the loop `incremental(base)` returns (given the DecodeState then) on the state's
    DecodeState instead: call(base, max_steps) -> base."""

    def __init__(self, cfg: FallbackConfig, spec: Callable, incremental: Callable[[object], Callable],
                 base: Callable, replace_base: Callable, log: Callable[[str], None] | None = None):
        self.cfg, self.spec, self.make_incremental = cfg, spec, incremental
        self.base, self.replace_base, self.log = base, replace_base, log
        self.calls, self.steps, self.seconds, self.tokens, self.row_steps = 0, 0, 0.0, 0, 0
        self.incremental: Callable | None = None  # set once switched
        self.reason = ""

    def _counts(self, state) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        b = self.base(state)
        return tuple(np.asarray(x) for x in sharding.fetch((b.num_new, b.steps, b.done)))

    def __call__(self, state, max_steps):
        if self.incremental is not None:
            return self.replace_base(state, self.incremental(self.base(state), max_steps))
        judged = self.calls >= WARMUP_CALLS
        self.calls += 1
        if judged:
            new0, steps0, done0 = self._counts(state)
            t0 = time.perf_counter()
        state = jax.block_until_ready(self.spec(state, max_steps))
        if not judged:
            return state
        self.seconds += time.perf_counter() - t0
        new1, steps1, _ = self._counts(state)
        self.tokens += int((new1 - new0).sum())
        self.steps += int((steps1 - steps0).max(initial=0))
        self.row_steps += int((steps1 - steps0).sum())
        if self.steps >= MIN_STEPS and self.seconds > 0:
            if self._slower(rows=max(int((~done0).sum()), 1)):
                self.incremental = self.make_incremental(self.base(state))  # (its compile, once)
        return state

    def _slower(self, rows: int) -> bool:
        """Whether speculation so far is slower than incremental decoding of `rows` rows (says why)."""
        spec_rate = self.tokens / self.seconds
        inc_rate = rows / self.cfg.incremental_step_seconds(rows)
        if spec_rate >= self.cfg.margin * inc_rate:
            return False
        mat = self.tokens / max(self.row_steps, 1)
        self.reason = (f"speculation fell back to incremental decoding: {spec_rate:.1f} tokens/s (MAT "
                       f"{mat:.2f}) against an estimated {inc_rate:.1f} incremental, over {self.steps} steps")
        if self.log is not None:
            self.log(self.reason)
        return True
