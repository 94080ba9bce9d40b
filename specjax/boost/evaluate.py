"""Evaluation of SSMs against the LLM on held-out data.

  * agreement: top-k hit rate of the LLM's token (masked positions) per SSM, and the ensemble's top-1
    (some SSM's argmax equals it);
  * MAT with the real engine: `Engine(llm, ssms[:n], TreeConfig(expansion, num_ssms=n)).generate_spec`
    on held-out prompts for n = 1..K, with acceptance by depth;
  * a PNG of acceptance by depth (one line per ensemble size) and MAT vs the number of SSMs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from specjax.boost.boosting import hits, topk_predictions
from specjax.engine import Engine, LoadedModel
from specjax.sampling import SamplingConfig
from specjax.tree import TreeConfig


def agreement(ssms: Sequence[LoadedModel], tokens: np.ndarray, mask: np.ndarray, ks=(1, 3, 5)) -> dict:
    """-> {"per_ssm": [{"top1": .., "top3": ..}, ...], "ensemble_top1": ..} over mask's positions."""
    m = mask.astype(bool)
    m[:, 0] = False
    total = max(int(m.sum()), 1)
    per, any_hit = [], np.zeros(m.shape, bool)
    for ssm in ssms:
        k = min(max(ks), ssm.cfg.vocab_size)
        pred = topk_predictions(ssm.params, ssm.cfg, tokens, k)  # [N, T, k]
        row = {}
        for kk in ks:
            hit = np.zeros(m.shape, bool)
            hit[:, 1:] = (pred[:, :-1, :kk] == tokens[:, 1:, None]).any(-1)
            row[f"top{kk}"] = float((hit & m).sum() / total)
        any_hit |= hits(tokens, pred[..., 0])
        per.append(row)
    return {"per_ssm": per, "ensemble_top1": float((any_hit & m).sum() / total), "positions": int(m.sum())}


def measure_mat(llm: LoadedModel, ssms: Sequence[LoadedModel], prompts: Sequence[Sequence[int]],
                expansion: tuple[int, ...], max_new_tokens: int, batch_size: int = 8,
                eos_ids: tuple[int, ...] | None = None) -> list[dict]:
    """For n = 1..len(ssms): {"num_ssms", "mat", "acceptance_by_depth"} over the prompts (greedy)."""
    out = []
    for n in range(1, len(ssms) + 1):
        engine = Engine(llm, ssms=list(ssms[:n]), tree=TreeConfig(expansion=tuple(expansion), num_ssms=n))
        results = []
        for i in range(0, len(prompts), batch_size):
            results += engine.generate_spec([list(p) for p in prompts[i: i + batch_size]], max_new_tokens,
                                            SamplingConfig(), 0, eos_ids)
        tokens = sum(len(r.token_ids) for r in results)
        steps = sum(r.llm_steps for r in results)
        depth = len(expansion)
        by_depth = np.mean([r.acceptance_by_depth(depth) for r in results], axis=0).tolist()
        out.append({"num_ssms": n, "mat": tokens / max(steps, 1), "acceptance_by_depth": by_depth})
    return out


def plot(mat_rows: Sequence[dict], path: str | Path) -> Path:
    """Acceptance by depth per ensemble size, and MAT vs number of SSMs, to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for row in mat_rows:
        d = np.arange(1, len(row["acceptance_by_depth"]) + 1)
        a.plot(d, row["acceptance_by_depth"], marker="o", label=f"{row['num_ssms']} SSM(s)")
    a.set(xlabel="depth d", ylabel="P(step accepts >= d tokens)", title="acceptance by depth", ylim=(0, 1))
    a.legend()
    n = [r["num_ssms"] for r in mat_rows]
    b.plot(n, [r["mat"] for r in mat_rows], marker="o")
    b.set(xlabel="number of SSMs", ylabel="mean accepted tokens / LLM step", title="MAT vs ensemble size",
          xticks=n)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
