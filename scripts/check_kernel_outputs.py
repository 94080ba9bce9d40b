"""Greedy `specjax generate` with and without the CPU kernel (SPECJAX_SKINNY=1 / 0), the same prompts,
compared token for token (issue 12: identical on 20 prompts x 128 tokens).

    python scripts/check_kernel_outputs.py [--prompts 20] [--new-tokens 128] [--mode spec|incremental]

Runs the README's command form (`specjax generate --chat --prompts FILE --output FILE`, the automatic
choice of drafters in spec mode) once per path, each in its own process, and prints per prompt whether
the token ids agree, then the count. Exit status 1 if any differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_bf16 import PROMPTS  # noqa: E402  (the same 20 chat prompts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--mode", choices=["spec", "incremental"], default="spec")
    args = ap.parse_args()
    if not 1 <= args.prompts <= len(PROMPTS):
        ap.error(f"--prompts must be 1..{len(PROMPTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "prompts.jsonl"
        src.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[: args.prompts]))
        ids = {}
        for flag in ("1", "0"):
            out = Path(tmp) / f"out{flag}.jsonl"
            cmd = ["specjax", "generate", "--chat", "--prompts", str(src), "--output", str(out),
                   "--max-new-tokens", str(args.new_tokens), "--mode", args.mode]
            env = dict(os.environ, SPECJAX_SKINNY=flag)
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 2
            print(f"SPECJAX_SKINNY={flag}: " + " | ".join(l for l in proc.stderr.splitlines()
                                                          if "kernel" in l or l.startswith(("auto:", "mode="))))
            rows = [json.loads(l) for l in out.read_text().splitlines()]
            ids[flag] = {r["index"]: r["token_ids"] for r in rows}
    same = 0
    for i in range(args.prompts):
        a, b = ids["1"][i], ids["0"][i]
        first = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))
        same += first is None
        print(f"{i:>3} {len(a):>4} tokens  " + ("identical" if first is None else f"differ from token {first}"))
    print(f"{args.mode}, greedy, {args.prompts} prompts x up to {args.new_tokens} tokens: {same}/{args.prompts} identical "
          "with and without the kernel")
    return 0 if same == args.prompts else 1


if __name__ == "__main__":
    sys.exit(main())
