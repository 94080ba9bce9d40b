"""What a small XLA op costs unprofiled: N scatters of one K/V row into 60 cache-sized buffers [3, 320, 64]
per iteration of a jitted loop of 200 (N = 60: one per buffer, in place; N = 120 writes a buffer twice,
which makes XLA copy it).  python docs/experiments/kernel-rope/scatter_cost.py"""
import time, jax, jax.numpy as jnp


def make(nops):
    def body(i, c):
        xs = list(c)
        for j in range(nops):
            k = j % len(xs)
            xs[k] = xs[k].at[:, jnp.minimum(i % 7, 5)].set(xs[k][:, (i + 1) % 5])
        return tuple(xs)
    return jax.jit(lambda c: jax.lax.fori_loop(0, 200, body, c))


c = tuple(jnp.zeros((3, 320, 64)) for _ in range(60))
for n in (60, 120):
    f = make(n); jax.block_until_ready(f(c))
    ts = []
    for _ in range(5):
        t = time.perf_counter(); jax.block_until_ready(f(c)); ts.append(time.perf_counter() - t)
    print(n, f"{min(ts)/200*1e6:.1f} us per iteration -> {min(ts)/200/n*1e6:.2f} us per scatter")
