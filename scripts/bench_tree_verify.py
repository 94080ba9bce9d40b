"""Cost of one LLM tree verification relative to one incremental step, on the default LLM, B=1.

    python scripts/bench_tree_verify.py [--llm DIR] [--nodes 1,4,8,16,32,64] [--repeats 30]

For each tree size N (root included; N=1 is exactly an incremental step) it times the jitted LLM
forward + LM head over N tokens with a tree mask (a random tree: the cost does not depend on the
shape), at a committed prefix of --prefix tokens in a cache of --slots slots. Sizes are interleaved
round-robin so machine drift hits all alike; it prints the median time and the ratio to N=1.
With --breakdown it also times the decoder without the LM head, to say where the time goes
(the two are timed one after the other, each interleaved over the sizes).
"""

from __future__ import annotations

import argparse

from specjax.tree_search import tree_forward_seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", default=None)
    ap.add_argument("--nodes", default="1,4,8,16,32,64")
    ap.add_argument("--prefix", type=int, default=100)
    ap.add_argument("--slots", type=int, default=320)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--breakdown", action="store_true")
    args = ap.parse_args()

    from specjax import api

    llm = api.load(args.llm)
    cfg = llm.cfg
    sizes = [int(s) for s in args.nodes.split(",")]
    full = tree_forward_seconds(llm.params, cfg, sizes, args.prefix, args.slots, args.repeats)
    if args.breakdown:
        decoder = tree_forward_seconds(llm.params, cfg, sizes, args.prefix, args.slots, args.repeats, head=False)
    base = full[sizes[0]]
    print(f"{'nodes':>6} {'verify ms':>10} {'x 1 token':>10}" + (f" {'decoder ms':>11} {'head ms':>8}" if args.breakdown else ""))
    for n in sizes:
        t = full[n]
        line = f"{n:>6} {t * 1e3:>10.1f} {t / base:>10.2f}"
        if args.breakdown:
            d = decoder[n]
            line += f" {d * 1e3:>11.1f} {(t - d) * 1e3:>8.1f}"
        print(line)


if __name__ == "__main__":
    main()
