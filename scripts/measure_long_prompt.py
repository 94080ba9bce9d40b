"""Wall time and peak resident memory of `specjax generate` on one long prompt (the default model).

    python scripts/measure_long_prompt.py --out after.json                       # this checkout
    git archive BASE | tar -x -C /tmp/base && \\
    python scripts/measure_long_prompt.py --repo /tmp/base --out before.json      # another checkout
    python scripts/measure_long_prompt.py --out after.json --compare before.json  # same tokens?

The prompt is README.md's text, repeated, tokenized by the default tokenizer and cut to --tokens ids
(given as prompt_ids, so every checkout reads the same prompt). The command runs in a child process;
its peak RSS is the child's ru_maxrss; wall time is the whole command (start-up, loading, compilation,
prefill, decoding), as a user waits for it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def prompt_ids(n: int) -> list[int]:
    sys.path.insert(0, str(ROOT))
    from specjax import default_model, tokenizer

    tok = tokenizer.load_tokenizer(default_model.default_llm_dir())
    text = (ROOT / "README.md").read_text()
    ids: list[int] = []
    while len(ids) < n:
        ids += tok.encode(text)
    return ids[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=str(ROOT), help="the specjax checkout to run (default: this one)")
    ap.add_argument("--tokens", type=int, default=5924, help="prompt length")
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--mode", default=None, help="generate --mode (default: generate's default)")
    ap.add_argument("--out", required=True, help="write the measurement here (json)")
    ap.add_argument("--compare", default=None, help="a measurement whose token_ids must equal this one's")
    args = ap.parse_args()

    ids = prompt_ids(args.tokens)
    with tempfile.TemporaryDirectory(prefix="specjax-long-") as tmp:
        prompts, output = Path(tmp) / "prompts.jsonl", Path(tmp) / "out.jsonl"
        prompts.write_text(json.dumps({"prompt_ids": ids}) + "\n")
        cmd = [sys.executable, "-m", "specjax.cli", "generate", "--prompts", str(prompts),
               "--max-new-tokens", str(args.max_new_tokens), "--output", str(output)]
        if args.mode:
            cmd += ["--mode", args.mode]
        env = {**os.environ, "PYTHONPATH": str(Path(args.repo).resolve())}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp)
        wall = time.perf_counter() - t0
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        if proc.returncode != 0:
            sys.exit(f"generate failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        [row] = [json.loads(line) for line in output.read_text().splitlines()]
    result = {"repo": str(Path(args.repo).resolve()), "prompt_tokens": len(ids), "max_new_tokens": args.max_new_tokens,
              "wall_seconds": round(wall, 1), "peak_rss_gb": round(peak_kb / 2**20, 2),
              "token_ids": row["token_ids"], "finish_reason": row["finish_reason"],
              "generate_seconds": round(row["seconds"], 1), "compile_seconds": round(row["compile_seconds"], 1),
              "stderr_tail": proc.stderr.strip().splitlines()[-4:]}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "stderr_tail"}))
    if args.compare:
        other = json.loads(Path(args.compare).read_text())
        same = other["token_ids"] == result["token_ids"]
        print(f"token_ids equal to {args.compare}: {same}")
        if not same:
            sys.exit(1)


if __name__ == "__main__":
    main()
