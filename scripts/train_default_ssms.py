"""The recipe for the default drafters of the embedded LLM (SmolLM2-135M-Instruct, V=49152, D=576).

    python scripts/train_default_ssms.py --time-only                 # drafter step vs LLM step, per preset
    python scripts/train_default_ssms.py --out runs/default --ship   # every shipped member from a clean start
                                                                     # (resumable: run it again after a stop),
                                                                     # then into specjax/default_ssms and the
                                                                     # acceptance calibration re-measured
    python scripts/train_default_ssms.py --out runs/default --members feature --ship   # one member
    python scripts/train_default_ssms.py --out runs/single --members ssm --num-ssms 1 \
        --ssm-config scripts/ssm_single_equal_params.json --data-from runs/default/ssm/data   # the comparison
    python scripts/train_default_ssms.py --out runs/quick --members ssm --max-prompts 48 --steps 30 --num-ssms 1

The recipe (the defaults below): 2 SSMs of preset "base" (D=96, 4 layers, 5.2M parameters, 10 MB in
float16 each), boosted with mode "reweight" (the second SSM's loss weight is 0.25 on the tokens the
first already predicts); data: the LLM's greedy 128-token continuations of the first --max-prompts
interleaved boost prompts (chat template, last 96 prompt tokens), 32 prompts per generation batch;
each SSM 700 AdamW steps of 16 samples, lr 3e-3, warmup 50, cosine to 3e-4.

Why these sizes: with V=49152 the LM head dominates a small drafter (V*D multiply-adds per token).
A drafter of width D=576 with the LLM's tied head costs 28M MACs for the head alone, ~21% of the LLM's
~134M per token before any layer. The SSMs here are therefore narrower (preset "base": D=96, 4 layers;
extra layers cost little next to the head)
with their tied embedding initialised as the projection of the LLM's embedding onto its top-128
principal directions (specjax.boost.ssm), which keeps them plain LLaMA checkpoints (exportable to HF).
`--time-only` measures one decoding step (batch 1, one token, 256 cache slots) of the LLM and of each
preset; pick a size whose step is a small fraction of the LLM's.

Prompts: ../shared/data/boost_prompts/ (GSM8K train, Self-Instruct seeds, T0 sample), interleaved so a
prefix of --max-prompts covers every source. Never Spec-Bench (evaluation only).

Members (--members, default: what ships, DEFAULT_MEMBERS): "ssm", the boosted small SSMs above (OUT/ssm/ssm_i),
and "feature", the EAGLE-style feature SSM (OUT/feature, scripts/train_feature_ssm.py's stages run in
order: the LLM's greedy continuations of --feature-prompts prompts, the reference answers of
--feature-tf-prompts more read teacher-forced, --feature-steps training steps from scratch, then its
held-out agreement on --heldout-prompts held-out prompts). Every stage resumes where it stopped. --ship copies the
trained members into specjax/default_ssms and re-measures specjax/drafters/acceptance.json (each drafter
alone and the merged mixes, scripts/measure_acceptance.py --count 16), which the automatic choice reads.
Each stage's wall time goes to the log (stderr).
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
sys.path.insert(0, str(ROOT / "scripts"))  # train_feature_ssm, measure_acceptance: the stages' own scripts

from specjax import api, model  # noqa: E402
from specjax.boost.data import DataConfig  # noqa: E402
from specjax.boost.prompts import read_prompt_file  # noqa: E402
from specjax.boost.run import RunConfig, boost  # noqa: E402
from specjax.boost.ssm import PRESETS, ssm_config  # noqa: E402
from specjax.boost.train import TrainConfig  # noqa: E402

PROMPT_DIR = ROOT.parent / "shared" / "data" / "boost_prompts"
MEMBERS = ("ssm", "feature")
DEFAULT_MEMBERS = ("ssm", "feature")


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), "recipe:", msg, file=sys.stderr, flush=True)


def stage(name: str, fn, *a) -> None:
    """Runs one stage; a non-zero exit code stops the recipe (what ran so far is kept for the next run)."""
    t = time.perf_counter()
    log(f"{name} ...")
    rc = fn(*a)
    if rc:
        raise SystemExit(f"recipe: {name} failed (exit {rc}); run the same command again to resume")
    log(f"{name}: {(time.perf_counter() - t) / 60:.1f} min")


def feature_stages(out: Path, args) -> list:
    """(name, argv of scripts/train_feature_ssm.py) in order; each resumable."""
    fo, held = str(out / "feature"), str(out / "heldout")
    return [
        ("feature data: the LLM's continuations", ["data", "--out", fo, "--prompts", str(args.feature_prompts), "--no-progress"]),
        ("feature data: reference answers, teacher-forced",
         ["data", "--out", fo, "--teacher-forced", "--prompts", str(args.feature_tf_prompts), "--skip", "1600", "--no-progress"]),
        ("feature SSM training", ["train", "--out", fo, "--steps", str(args.feature_steps)]),
        ("held-out data", ["data", "--out", held, "--prompts", str(args.heldout_prompts), "--held-out", "--no-progress"]),
        ("feature SSM held-out agreement", ["eval", "--out", fo, "--data", held + "/data"]),
    ]


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


def ship(out: Path, num_ssms: int) -> None:
    """OUT/ssm_i -> specjax/default_ssms/ssm_i in float16, without tokenizer files (the embedded LLM's
    shipped tokenizer serves them), replacing what was there."""
    import shutil

    import numpy as np

    from specjax import checkpoint, default_model

    dst_root = default_model.DEFAULT_SSMS_DIR
    for old in default_model.default_ssm_dirs():
        shutil.rmtree(old)
    for i in range(num_ssms):
        params, cfg = checkpoint.load_checkpoint(out / f"ssm_{i}")
        checkpoint.save_checkpoint(dst_root / f"ssm_{i}", params, cfg, dtype=np.float16)
    size = sum(f.stat().st_size for f in dst_root.rglob("*") if f.is_file())
    print(f"shipped {num_ssms} SSM(s) into {dst_root}: {size / 1e6:.1f} MB", file=sys.stderr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--time-only", action="store_true")
    ap.add_argument("--out", default="runs/default")
    ap.add_argument("--num-ssms", type=int, default=2)
    ap.add_argument("--ssm-config", default="base")
    ap.add_argument("--max-prompts", type=int, default=2304)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--data-batch-size", type=int, default=32, help="prompts per LLM generation batch")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--freeze-embed", action="store_true")
    ap.add_argument("--boost-mode", default="reweight")
    ap.add_argument("--covered-weight", type=float, default=0.25)
    ap.add_argument("--eval-prompts", type=int, default=16)
    ap.add_argument("--data-from", default=None, help="reuse this run's data directory (same prompts and data config)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--ship", action="store_true",
                    help="copy the trained members into specjax/default_ssms and re-measure the acceptance calibration")
    ap.add_argument("--members", default=",".join(DEFAULT_MEMBERS), help=f"comma list of {MEMBERS}")
    ap.add_argument("--feature-prompts", type=int, default=3000, help="prompts whose continuations the LLM generates")
    ap.add_argument("--feature-tf-prompts", type=int, default=1024, help="reference answers read teacher-forced")
    ap.add_argument("--feature-steps", type=int, default=1500)
    ap.add_argument("--heldout-prompts", type=int, default=128, help="held-out prompts for the feature SSM's agreement")
    args = ap.parse_args(argv)
    members = tuple(m.strip() for m in args.members.split(",") if m.strip())
    unknown = sorted(set(members) - set(MEMBERS))
    if unknown or not members:
        ap.error(f"--members: {unknown or 'none given'}; choose from {MEMBERS}")

    t0 = time.perf_counter()
    llm = api.load(None)
    if args.time_only:
        time_presets(llm)
        return 0
    out = Path(args.out)
    if "ssm" in members:
        stage("SSMs: data, boosted training, evaluation", ssm_recipe, out, args)
    if "feature" in members:
        import train_feature_ssm

        for name, fargs in feature_stages(out, args):
            stage(name, train_feature_ssm.main, fargs)
    if args.ship:
        import measure_acceptance
        import train_feature_ssm

        if "ssm" in members:
            ship(out / "ssm", args.num_ssms)
        if "feature" in members:
            stage("ship the feature SSM", train_feature_ssm.main, ["ship", "--out", str(out / "feature")])
        stage("acceptance of each drafter alone", measure_acceptance.main, ["--count", "16", "--write"])
        stage("acceptance of the merged mixes", measure_acceptance.main, ["--count", "16", "--merged", "--write"])
    log(f"total wall time: {(time.perf_counter() - t0) / 60:.1f} min ({','.join(members)}{', shipped' if args.ship else ''})")
    return 0


def ssm_recipe(out: Path, args) -> int:
    prompts = interleaved_prompt_file(out.parent / "boost_prompts_interleaved.jsonl")
    ssm_cfg = args.ssm_config if args.ssm_config in PRESETS else Path(args.ssm_config).read_text()
    run = RunConfig(
        llm=None, prompts=(str(prompts.resolve()),), num_ssms=args.num_ssms, ssm_config=ssm_cfg,
        data=DataConfig(max_prompt_tokens=96, max_new_tokens=args.max_new_tokens, batch_size=args.data_batch_size),
        train=TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          warmup_steps=min(50, args.steps // 10 + 1), freeze_embed=args.freeze_embed,
                          checkpoint_every=100, log_every=10),
        boost_mode=args.boost_mode, covered_weight=args.covered_weight,
        max_prompts=args.max_prompts, eval_prompts=args.eval_prompts, eval_max_new_tokens=48)
    boost(run, out / "ssm", resume=args.resume or (out / "ssm" / "run.json").is_file(), data_dir=args.data_from)
    return 0

if __name__ == "__main__":
    sys.exit(main())
