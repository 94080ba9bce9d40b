"""How well the drafters' confidence predicts acceptance, on held-out LLM data (docs/benchmarks.md):

  feature: the feature SSM's probability of its rank-r token vs how often that token is the LLM's
           top-1, per draft depth (training-time-test passes: deeper drafts read the drafter's own
           outputs), binned;
  lookup:  per depth and matched n-gram length, how often the chain prompt lookup proposes is what
           the LLM wrote (lookup.measure_rates over every root of the data's continuations).

    python scripts/train_feature_ssm.py data --out runs/heldout --prompts 128 --held-out
    python scripts/measure_calibration.py runs/heldout/data
"""
import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BINS = np.array([0, .05, .1, .2, .3, .4, .5, .6, .7, .8, .9, 1.01])


def feature_calibration(directory: str, ssm: str, passes: int) -> None:
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
            res.append((p, i == batch["tgt"][..., :1], batch["w"] * (seq >= s - 1) * (batch["p"][..., 0] > 0)))
        return res

    got = {s: [] for s in range(1, passes + 1)}
    for i in range(0, len(data), 8):
        batch = ftrain.make_batch(data, np.arange(i, min(i + 8, len(data))), tcfg, tmap)
        for s, (p, hit, w) in enumerate(top_probs({k: jnp.asarray(v) for k, v in batch.items()}), 1):
            keep = np.asarray(w) > 0
            got[s].append((np.asarray(p)[keep], np.asarray(hit)[keep]))
    for s in range(1, passes + 1):
        p = np.concatenate([a for a, _ in got[s]])
        hit = np.concatenate([h for _, h in got[s]])
        print(f"feature, depth {s}: {len(p)} positions, top-1 right {hit[:, 0].mean():.3f}")
        for r in range(3):
            idx = np.digitize(p[:, r], BINS) - 1
            cells = [f"p {p[idx == k, r].mean():.2f} -> {hit[idx == k, r].mean():.2f} (n {int((idx == k).sum())})"
                     for k in range(len(BINS) - 1) if (idx == k).sum() >= 30]
            print(f"  rank {r}: " + "; ".join(cells))


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
    args = ap.parse_args(argv)
    if not Path(args.data, "tokens").is_dir():
        raise SystemExit(f"measure_calibration.py: {args.data} is not a feature data directory (no tokens/)")
    if min(args.passes, args.lookup_length, args.lookup_ngram) < 1:
        raise SystemExit("measure_calibration.py: --passes, --lookup-length and --lookup-ngram must be >= 1")
    feature_calibration(args.data, args.ssm, args.passes)
    lookup_calibration(args.data, args.lookup_length, args.lookup_ngram)
    return 0


if __name__ == "__main__":
    sys.exit(main())
