"""What a user of the default sees: `specjax generate` (automatic choice, watched by the fallback)
against `--mode incremental`, side by side in one run, on Spec-Bench questions and the README prompt.

    python scripts/bench_auto.py [--per-category 1] [--max-new-tokens 128] [--repeats 1]

Both generators are loaded as the CLI loads them (the automatic one measures or reads its cost cache
and prints its choice). Each prompt runs on both, the order alternating per prompt so machine drift
hits both alike; compilation is left out of the times (a result's `seconds`: prefill + decode). Greedy
outputs must be identical token for token (checked). Prints per category: tokens/s of each, the
ratio, the automatic side's MAT and how many of its requests fell back to incremental decoding; then
the overall ratio (total tokens / total seconds of each side).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README_PROMPT = "What is speculative decoding?"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--questions", default=str(ROOT.parent / "shared" / "data" / "eval" / "spec_bench_questions.jsonl"))
    ap.add_argument("--per-category", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=1, help="runs of every prompt on each side")
    args = ap.parse_args(argv)

    from specjax import api
    from specjax.bench.run import load_questions

    rows = [{"category": "readme", "prompt": README_PROMPT}]
    if args.per_category > 0 and Path(args.questions).is_file():
        rows += load_questions(args.questions, args.per_category)
    log = lambda s: print(s, file=sys.stderr, flush=True)
    auto = api.Generator.load(log=log)
    inc = api.Generator.load(mode="incremental")
    log(f"automatic: {auto.describe()}" + (f" ({auto.choice.reason})" if auto.choice is not None else ""))
    sides = {"auto": auto, "incremental": inc}
    tok = inc.llm.tokenizer
    prompts = [tok.encode(r["prompt"], chat=True) for r in rows]
    for name, gen in sides.items():  # compile outside the timed runs (both loops, the prompt buckets)
        gen.engine.fallback, fb = None, gen.engine.fallback
        for p in {len(p).bit_length(): p for p in prompts}.values():
            gen.generate_ids([p], 8, batch_size=1, batching="static")
        gen.engine.fallback = fb
    if auto.engine.fallback is not None:  # and the loop the watch falls back to
        auto.engine.generate_incremental([prompts[0]], 8, eos_ids=auto.eos_ids())
    stats = defaultdict(lambda: defaultdict(float))
    t_start = time.perf_counter()
    for i, (row, p) in enumerate(zip(rows, prompts)):
        outs = {}
        for rep in range(args.repeats):
            order = list(sides) if (i + rep) % 2 == 0 else list(sides)[::-1]
            for name in order:
                res = sides[name].generate_ids([p], args.max_new_tokens, batch_size=1, batching="static")[0]
                outs[name] = res.token_ids
                s = stats[(row["category"], name)]
                s["tokens"] += len(res.token_ids)
                s["seconds"] += res.seconds
                s["steps"] += res.llm_steps
                if name == "auto":
                    s["fell_back"] += bool(sides[name].engine.last_fallback)
                    s["requests"] += 1
        if outs["auto"] != outs["incremental"]:
            print(f"MISMATCH: greedy outputs differ on {row['category']} prompt {i}", file=sys.stderr)
            return 1
        log(f"[{i + 1}/{len(rows)}] {row['category']}: {time.perf_counter() - t_start:.0f}s")
    cats = list(dict.fromkeys(r["category"] for r in rows))
    print(f"{'category':22s} {'auto tok/s':>10s} {'inc tok/s':>10s} {'ratio':>6s} {'MAT':>5s} {'fell back':>9s}")
    tot = defaultdict(float)
    for c in cats + ["overall"]:
        if c == "overall":
            a, n = {k: tot["a" + k] for k in ("tokens", "seconds", "steps", "fell_back", "requests")}, \
                   {k: tot["i" + k] for k in ("tokens", "seconds")}
        else:
            a, n = stats[(c, "auto")], stats[(c, "incremental")]
            for k in ("tokens", "seconds", "steps", "fell_back", "requests"):
                tot["a" + k] += a[k]
            for k in ("tokens", "seconds"):
                tot["i" + k] += n[k]
        ra, rn = a["tokens"] / a["seconds"], n["tokens"] / n["seconds"]
        print(f"{c:22s} {ra:10.1f} {rn:10.1f} {ra / rn:6.2f} {a['tokens'] / max(a['steps'], 1):5.2f} "
              f"{int(a['fell_back'])}/{int(a['requests'])}")
    print("greedy outputs identical on every prompt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
