"""The host side of a decode loop: the jitted loop runs a bounded number of steps per call, the host
looks at the state between calls.

    state -> loop(state, max_steps) -> rows that finished: on_finish(b) -> stop asked? -> again

Returning to the host every ~0.5 s of work lets a SIGINT (see specjax.interrupt) stop a long
generation promptly and hands each finished row to the caller as soon as it is done (so it can be
written out). `max_steps` is a traced int32 scalar: choosing it per call never recompiles, and the
state carries everything (cache, tokens, PRNG key), so the output does not depend on how the steps
are split between calls.
"""

from __future__ import annotations

import time
from typing import Callable

import jax.numpy as jnp
import numpy as np

from specjax import sharding
from specjax.decode_state import DecodeState
from specjax.interrupt import Interrupted

TARGET_SECONDS = 0.5  # wall time one call of the loop aims at
FIRST_STEPS = 4  # steps of the first call, before any step has been timed
MAX_STEPS = 1 << 16


def next_chunk(steps: int, seconds: float, target: float = TARGET_SECONDS) -> int:
    """Steps for the next call, from the last call's `steps` and wall `seconds`: about `target` seconds
    of work, at most 4x more steps than the last call (a first step can be slow), at least 1."""
    if seconds <= 0:
        return min(steps * 4, MAX_STEPS)
    return int(max(1, min(target * steps / seconds, steps * 4, MAX_STEPS)))


def run_chunked(call: Callable, state, base: Callable[[object], DecodeState],
                on_finish: Callable[[object, list[int]], None] | None = None,
                should_stop: Callable[[], bool] | None = None, steps: int | None = None,
                target: float = TARGET_SECONDS):
    """Runs `call(state, max_steps) -> state` until every row is done.

    Args:
      base: state -> its DecodeState (the speculative state wraps one).
      on_finish: called with (state, rows) after each call that finished rows (in row order).
      should_stop: polled after each call; True raises Interrupted (rows finished so far were handed
        to on_finish already).
      steps: a fixed number of steps per call (None: adapted to about `target` seconds per call).
    Returns the final state.
    """
    n = steps or FIRST_STEPS
    reported = np.asarray(sharding.fetch(base(state).done)).copy()
    while True:
        t0 = time.perf_counter()
        state = call(state, jnp.asarray(n, jnp.int32))
        done = np.asarray(sharding.fetch(base(state).done))  # waits for the call
        seconds = time.perf_counter() - t0
        new = [int(b) for b in np.flatnonzero(done & ~reported)]
        reported |= done
        if new and on_finish is not None:
            on_finish(state, new)
        if done.all():
            return state
        if should_stop is not None and should_stop():
            raise Interrupted("stopped between decode steps")
        if steps is None:
            n = next_chunk(n, seconds, target)
