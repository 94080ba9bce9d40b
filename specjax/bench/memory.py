"""The memory roofline of a decode step: bytes of weights over the measured read bandwidth."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np


def read_bandwidth(nbytes: int, repeats: int = 5) -> float:
    """Best bytes/s of a full read of an nbytes buffer: numpy (1 thread) and XLA (all threads)."""
    a = np.ones(nbytes // 4, np.float32)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a.sum()
        best = min(best, time.perf_counter() - t)
    x = jnp.asarray(a)
    f = jax.jit(lambda v: jnp.sum(v))
    f(x).block_until_ready()
    for _ in range(repeats):
        t = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return nbytes / best


def reader(nbytes: int):
    """fn() reading an nbytes buffer once (XLA, all threads): a roofline probe to time beside the steps."""
    x = jnp.ones(nbytes // 4, jnp.float32)
    f = jax.jit(lambda v: jnp.sum(v))
    return lambda: f(x)


def weight_bytes(params) -> int:
    """Bytes one forward reads from the params (packed kernel weights count their padded panels)."""
    return int(sum(x.nbytes for x in jax.tree.leaves(params)))
