"""Cost of one LLM tree verification relative to one incremental step, on the default LLM, B=1, with
the CPU skinny-matmul kernel and with XLA's dot, side by side in one run.

    python scripts/bench_tree_verify.py [--llm DIR] [--nodes 1,2,4,8,16,32,64] [--repeats 30] [--bf16]

For each tree size N (root included; N=1 is exactly an incremental step) it times the jitted LLM
forward + LM head over N tokens with a tree mask (a random tree: the cost does not depend on the
shape), at a committed prefix of --prefix tokens in a cache of --slots slots, for each path: `xla`
(the params as loaded), `kernel` (packed for specjax's CPU kernel, float32) and with --bf16 `kernel
bf16` (weights stored in bf16). Every (path, size) is interleaved round-robin so machine drift hits
all alike; it prints the median time, the ratio to the same path's N=1, and the one-token step over
the memory roofline (the path's weight bytes / the read bandwidth, a read of the weights' bytes timed
in the same rounds: this VM's bandwidth moves by a third within minutes).
With --breakdown it also times the decoder without the LM head (XLA path), to say where the time goes.
"""

from __future__ import annotations

import argparse

from specjax.tree_search import tree_forward_seconds, tree_forward_seconds_by


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", default=None)
    ap.add_argument("--nodes", default="1,2,4,8,16,32,64")
    ap.add_argument("--prefix", type=int, default=100)
    ap.add_argument("--slots", type=int, default=320)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--bf16", action="store_true", help="also the kernel with bf16 weights")
    ap.add_argument("--breakdown", action="store_true")
    args = ap.parse_args()

    import jax.numpy as jnp

    from specjax import api, skinny
    from specjax.bench.memory import read_bandwidth, reader, weight_bytes

    llm = api.load(args.llm)
    cfg = llm.cfg
    sizes = [int(s) for s in args.nodes.split(",")]
    variants = {"xla": llm.params}
    ok, line = skinny.status()
    print(line)
    if ok:
        variants["kernel"] = skinny.pack_params(llm.params, cfg)
        if args.bf16:
            variants["kernel bf16"] = skinny.pack_params(llm.params, cfg, jnp.bfloat16)
    nbytes = weight_bytes(llm.params)
    times = tree_forward_seconds_by(variants, cfg, sizes, args.prefix, args.slots, args.repeats,
                                    others={"read": reader(nbytes)})
    bw = nbytes / times.pop("read")[0]  # the same statistic over the same rounds as the steps
    best = read_bandwidth(nbytes)
    print(f"read bandwidth {bw / 1e9:.1f} GB/s (a read of the weights' bytes, timed in the same rounds as the "
          f"steps; the best single read now: {best / 1e9:.1f} GB/s)")
    header = f"{'nodes':>6}" + "".join(f" {v + ' ms':>16} {'x 1':>6}" for v in variants)
    print(header)
    for n in sizes:
        print(f"{n:>6}" + "".join(f" {times[v][n] * 1e3:>16.1f} {times[v][n] / times[v][sizes[0]]:>6.2f}"
                                  for v in variants))
    for v, params in variants.items():
        roof = weight_bytes(params) / bw
        print(f"{v}: weights {weight_bytes(params) / 1e6:.0f} MB, roofline {roof * 1e3:.1f} ms, "
              f"one-token step {times[v][sizes[0]] * 1e3:.1f} ms = {times[v][sizes[0]] / roof:.2f} x roofline")
    if "kernel" in variants:
        print("kernel / xla per size: " + " ".join(f"{n}:{times['kernel'][n] / times['xla'][n]:.2f}" for n in sizes))
    if args.breakdown:
        decoder = tree_forward_seconds(llm.params, cfg, sizes, args.prefix, args.slots, args.repeats, head=False)
        print(f"{'nodes':>6} {'xla decoder ms':>15} {'head ms':>8}")
        for n in sizes:
            print(f"{n:>6} {decoder[n] * 1e3:>15.1f} {(times['xla'][n] - decoder[n]) * 1e3:>8.1f}")


if __name__ == "__main__":
    main()
