"""The recipe for the default SSM ensemble of the embedded LLM (SmolLM2-135M-Instruct, V=49152, D=576).

    python scripts/train_default_ssms.py --time-only            # drafter step vs LLM step, per preset
    python scripts/train_default_ssms.py --out runs/default     # the full recipe (about 90 min, 2 cores)
    python scripts/train_default_ssms.py --out runs/quick --max-prompts 48 --steps 30 --num-ssms 1

Why these sizes: with V=49152 the LM head dominates a small drafter (V*D multiply-adds per token).
A drafter of width D=576 with the LLM's tied head costs 28M MACs for the head alone, ~21% of the LLM's
~134M per token before any layer. The SSMs here are therefore narrower (preset "tiny": D=128, 2 layers)
with their tied embedding initialised as the projection of the LLM's embedding onto its top-128
principal directions (specjax.boost.ssm), which keeps them plain LLaMA checkpoints (exportable to HF).
`--time-only` measures one decoding step (batch 1, one token, 256 cache slots) of the LLM and of each
preset; pick a size whose step is a small fraction of the LLM's.

Prompts: ../shared/data/boost_prompts/ (GSM8K train, Self-Instruct seeds, T0 sample), interleaved so a
prefix of --max-prompts covers every source. Never Spec-Bench (evaluation only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from specjax import api, model  # noqa: E402
from specjax.boost.data import DataConfig  # noqa: E402
from specjax.boost.prompts import read_prompt_file  # noqa: E402
from specjax.boost.run import RunConfig, boost  # noqa: E402
from specjax.boost.ssm import PRESETS, ssm_config  # noqa: E402
from specjax.boost.train import TrainConfig  # noqa: E402

PROMPT_DIR = ROOT.parent / "shared" / "data" / "boost_prompts"


def step_seconds(params, cfg, slots: int = 256, reps: int = 20) -> float:
    """Median wall time of one jitted one-token decoding step (batch 1) with `slots` cache slots."""
    cache = model.init_cache(cfg, 1, slots)

    @jax.jit
    def step(params, cache, tok, pos):
        h, cache = model.forward(params, cfg, tok, pos, cache, pos, jnp.ones((1, 1, slots), bool))
        return model.lm_head(params, cfg, h), cache

    tok, pos = jnp.zeros((1, 1), jnp.int32), jnp.full((1, 1), 10, jnp.int32)
    jax.block_until_ready(step(params, cache, tok, pos))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(step(params, cache, tok, pos))
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def time_presets(llm) -> None:
    t_llm = step_seconds(llm.params, llm.cfg)
    print(f"LLM step: {t_llm * 1e3:.2f} ms")
    for name in PRESETS:
        cfg = ssm_config(name, llm.cfg)
        p = model.init_params(cfg, jax.random.PRNGKey(0))
        n = sum(x.size for x in jax.tree.leaves(p))
        t = step_seconds(p, cfg)
        print(f"SSM {name:6s} d={cfg.hidden_size:4d} L={cfg.num_layers}: {n / 1e6:5.2f}M params "
              f"({n * 2 / 2**20:.1f} MiB bf16), step {t * 1e3:.2f} ms = {t / t_llm:.1%} of the LLM's")


def interleaved_prompt_file(out: Path) -> Path:
    """One jsonl of the boost prompts, round-robin over the source files."""
    sources = [read_prompt_file(p) for p in sorted(PROMPT_DIR.glob("*.jsonl"))]
    rows, i = [], 0
    while any(i < len(s) for s in sources):
        rows += [s[i] for s in sources if i < len(s)]
        i += 1
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({"prompt": r}) + "\n" for r in rows))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-only", action="store_true")
    ap.add_argument("--out", default="runs/default_ssms")
    ap.add_argument("--num-ssms", type=int, default=2)
    ap.add_argument("--ssm-config", default="tiny")
    ap.add_argument("--max-prompts", type=int, default=600)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--freeze-embed", action="store_true")
    ap.add_argument("--eval-prompts", type=int, default=16)
    ap.add_argument("--resume", action="store_true")
    args = ap.parse_args(argv)

    llm = api.load(None)
    if args.time_only:
        time_presets(llm)
        return 0
    out = Path(args.out)
    prompts = interleaved_prompt_file(out.parent / (out.name + "_prompts.jsonl"))
    run = RunConfig(
        llm=None, prompts=(str(prompts),), num_ssms=args.num_ssms, ssm_config=args.ssm_config,
        data=DataConfig(max_prompt_tokens=96, max_new_tokens=args.max_new_tokens, batch_size=8),
        train=TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          warmup_steps=min(50, args.steps // 10 + 1), freeze_embed=args.freeze_embed,
                          checkpoint_every=100, log_every=10),
        max_prompts=args.max_prompts, eval_prompts=args.eval_prompts, eval_max_new_tokens=48)
    boost(run, out, resume=args.resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
