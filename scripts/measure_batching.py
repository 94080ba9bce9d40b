"""Continuous batching vs static batches of the same B: one prompt file of requests with mixed
max_tokens, decoded both ways by one engine, greedy (outputs compared token for token).

    python scripts/measure_batching.py --requests 64 --batch-size 8 --mode incremental

Static: batches of B requests in input order, each decoded until its last row stops (at its largest
max_tokens), so rows that finish early sit idle. Continuous (specjax.batching): B rows, a finished
row takes the next request at the loop's next return to the host. Time is wall time with the
engine's compile time taken out (both paths compile their shapes on first use). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

QUESTIONS = ["Explain why the sky is blue.", "Write a short poem about the sea.", "What is a prime number?",
             "Give three tips for learning to cook.", "Summarise the plot of Romeo and Juliet.",
             "How does a bicycle stay upright?", "List some uses of a paperclip.", "What causes the seasons?"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--mode", choices=["incremental", "spec"], default="incremental")
    p.add_argument("--max-tokens", default="16,32,64,128", help="max_tokens drawn from these per request")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from specjax.api import Generator

    gen = Generator.load(mode=args.mode, tree="auto" if args.mode == "incremental" else None)
    rng = np.random.RandomState(args.seed)
    choices = [int(x) for x in args.max_tokens.split(",")]
    prompts = [gen.encode_row({"prompt": f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})"}, chat=True)
               for i in range(args.requests)]
    limits = [int(rng.choice(choices)) for _ in prompts]
    eos = gen.eos_ids()
    eng = gen.engine
    spec = gen.mode == "spec"
    from specjax import batching

    def timed(fn):
        c0, t0 = eng.compile_seconds, time.perf_counter()
        out = fn()
        compile_s = eng.compile_seconds - c0
        return out, time.perf_counter() - t0 - compile_s, compile_s

    def static():
        out = []
        gen_fn = eng.generate_spec if spec else eng.generate_incremental
        for i in range(0, len(prompts), args.batch_size):
            batch, lim = prompts[i:i + args.batch_size], limits[i:i + args.batch_size]
            res = gen_fn(batch, lim, eos_ids=eos)  # each row its own max_new; the batch runs to its last row
            out += [r.token_ids for r in res]
        return out

    def continuous():
        res = batching.generate(eng, prompts, limits, spec, args.batch_size, eos_ids=eos)
        return [r.token_ids for r in res]

    static_out, static_s, static_c = timed(static)
    cont_out, cont_s, cont_c = timed(continuous)
    tokens = sum(len(t) for t in cont_out)
    same = static_out == cont_out
    report = dict(mode=gen.mode, describe=gen.describe(), requests=len(prompts), batch_size=args.batch_size,
                  max_tokens=choices, tokens=tokens, static_s=static_s, continuous_s=cont_s,
                  static_tokens_per_s=tokens / static_s, continuous_tokens_per_s=tokens / cont_s,
                  speedup=static_s / cont_s, outputs_equal=same, compile_s=dict(static=static_c, continuous=cont_c))
    print(f"{gen.mode}: {len(prompts)} requests, B={args.batch_size}, {tokens} tokens: static {static_s:.1f}s "
          f"({tokens / static_s:.1f} tok/s), continuous {cont_s:.1f}s ({tokens / cont_s:.1f} tok/s): "
          f"{static_s / cont_s:.2f}x; outputs equal: {same}", file=sys.stderr)
    print(json.dumps(report))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
