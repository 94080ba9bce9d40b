"""How well the drafters' confidence predicts acceptance, on held-out LLM data (docs/benchmarks.md):

  feature: the feature SSM's probability of its rank-r token vs how often that token is the LLM's
           top-1, per draft depth (training-time-test passes: deeper drafts read the drafter's own
           outputs), binned;
  lookup:  per depth and matched n-gram length, how often the chain prompt lookup proposes is what
           the LLM wrote (lookup.measure_rates over every root of the data's continuations).

    python scripts/train_feature_ssm.py data --out runs/heldout --prompts 128 --held-out
    python scripts/measure_calibration.py runs/heldout/data

It also fits, per rank, the exponent a for which p ** a best predicts acceptance (log loss, every depth
pooled): the shipped drafter's top token is a little underconfident (a = 0.9). Scoring its nodes p ** a
did not raise the merged MAT (docs/benchmarks.md, 2026-12-08), so the drafter scores p itself.
"""
import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BINS = np.array([0, .05, .1, .2, .3, .4, .5, .6, .7, .8, .9, 1.01])


def feature_calibration(directory: str, ssm: str, passes: int, temperature: float = 0.0) -> tuple:
    import jax
    import jax.numpy as jnp

    from specjax import api
    from specjax.feature import data as fdata
    from specjax.feature import model as fm
    from specjax.feature import train as ftrain

    llm = api.load(None)
    params, cfg, d2t = fm.load(ssm, llm.cfg, fdata.llm_fingerprint(llm.cfg))
    data = fdata.load(directory, llm.cfg, cfg.taps)
    tcfg = ftrain.TrainConfig(passes=passes)
    tmap = ftrain.t2d(d2t, cfg.llm_vocab)
    table = jnp.asarray(llm.params["embed"])
    C, W = tcfg.crop, tcfg.window
    first = C - W - max(passes - 2, 0)

    @jax.jit
    def top_probs(batch):  # per pass: (top-3 probabilities, hit of each, weight) [B, W, ...]
        emb = jnp.take(table, batch["tokens"], axis=0)
        outs = fm.ttt_outputs(params, cfg, batch["feats"], emb, passes, first=first, valid=batch["valid"])
        seq = batch["seq0"][:, None] + jnp.arange(W)[None, :]
        res = []
        for s, o in enumerate(outs, 1):
            o = o[:, C - W:] if s == 1 else o[:, C - W - first:]
            p, i = jax.lax.top_k(jax.nn.softmax(fm.logits(params, cfg, o), axis=-1), 3)
            if temperature > 0:  # accepted under sampling iff the LLM's sample is the token: p_T(token)
                pt = batch["p"] ** (1.0 / temperature)  # the LLM's top-k (draft vocabulary) at T, renormalised
                pt = pt / jnp.maximum(pt.sum(-1, keepdims=True), 1e-30)
                hit = ((i[..., :, None] == batch["tgt"][..., None, :]) * pt[..., None, :]).sum(-1)
            else:
                hit = (i == batch["tgt"][..., :1]).astype(jnp.float32)
            res.append((p, hit, batch["w"] * (seq >= s - 1) * (batch["p"][..., 0] > 0)))
        return res

    got = {s: [] for s in range(1, passes + 1)}
    pooled = []
    for i in range(0, len(data), 8):
        batch = ftrain.make_batch(data, np.arange(i, min(i + 8, len(data))), tcfg, tmap)
        for s, (p, hit, w) in enumerate(top_probs({k: jnp.asarray(v) for k, v in batch.items()}), 1):
            keep = np.asarray(w) > 0
            got[s].append((np.asarray(p)[keep], np.asarray(hit)[keep]))
    for s in range(1, passes + 1):
        p = np.concatenate([a for a, _ in got[s]])
        hit = np.concatenate([h for _, h in got[s]])
        pooled.append((p, hit))
        print(f"feature, depth {s}: {len(p)} positions, top-1 right {hit[:, 0].mean():.3f}")
        for r in range(3):
            idx = np.digitize(p[:, r], BINS) - 1
            cells = [f"p {p[idx == k, r].mean():.2f} -> {hit[idx == k, r].mean():.2f} (n {int((idx == k).sum())})"
                     for k in range(len(BINS) - 1) if (idx == k).sum() >= 30]
            print(f"  rank {r}: " + "; ".join(cells))
    p = np.concatenate([a for a, _ in pooled])
    hit = np.concatenate([h for _, h in pooled])
    exps = tuple(fit_exponent(p[:, r], hit[:, r]) for r in range(p.shape[1]))
    print(f"feature calibration exponents per rank (p -> p ** a, every depth): {list(exps)}")
    return exps


def fit_exponent(p: np.ndarray, hit: np.ndarray) -> float:
    """The a in [0.3, 2] (0.01 steps) that minimises the log loss of p ** a as the probability of hit
    (0/1, or soft: the probability of acceptance)."""
    p = np.clip(p.astype(np.float64), 1e-6, 1 - 1e-6)
    grid = np.round(np.arange(0.3, 2.0001, 0.01), 2)
    q = np.clip(p[None, :] ** grid[:, None], 1e-6, 1 - 1e-6)
    y = hit.astype(np.float64)[None, :]  # 0/1, or a probability of acceptance
    loss = -(y * np.log(q) + (1 - y) * np.log1p(-q)).mean(axis=1)
    return float(grid[int(np.argmin(loss))])


def lookup_calibration(directory: str, length: int, max_ngram: int) -> None:
    from specjax.drafters import lookup

    seqs, roots = [], []
    for part in sorted(Path(directory, "tokens").glob("part-*.npz")):
        with np.load(part) as f:
            for tokens, mask in zip(f["tokens"], f["mask"]):
                gen = np.flatnonzero(mask)
                if len(gen):
                    seqs.append(tokens[: gen[-1] + 1])
                    roots.append(int(gen[0]) - 1)
    cfg = lookup.Config(length=length, max_ngram=max_ngram)
    rates = lookup.measure_rates(seqs, roots, cfg)
    print(f"lookup, {len(seqs)} sequences: P(depth-d token right | parent right), columns matched n = 1..{max_ngram}")
    for d, row in enumerate(rates, 1):
        print(f"  depth {d}: " + " ".join(f"{x:.2f}" for x in row))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", help="a feature data directory of held-out prompts (train_feature_ssm.py data --held-out)")
    ap.add_argument("--ssm", default=str(ROOT / "specjax" / "default_ssms" / "feature"))
    ap.add_argument("--passes", type=int, default=4)
    ap.add_argument("--lookup-length", type=int, default=8)
    ap.add_argument("--lookup-ngram", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.0,
                    help="> 0: a drafted token's acceptance is the LLM's probability of it at T (sampled "
                         "decoding, from the data's top-k), instead of whether it is the LLM's top-1")
    args = ap.parse_args(argv)
    if not Path(args.data, "tokens").is_dir():
        raise SystemExit(f"measure_calibration.py: {args.data} is not a feature data directory (no tokens/)")
    if not args.temperature >= 0:
        raise SystemExit(f"measure_calibration.py: --temperature must be >= 0 (0: acceptance = the LLM's top-1), "
                         f"got {args.temperature}")
    if min(args.passes, args.lookup_length, args.lookup_ngram) < 1:
        raise SystemExit("measure_calibration.py: --passes, --lookup-length and --lookup-ngram must be >= 1")
    feature_calibration(args.data, args.ssm, args.passes, args.temperature)
    lookup_calibration(args.data, args.lookup_length, args.lookup_ngram)
    return 0


if __name__ == "__main__":
    sys.exit(main())
