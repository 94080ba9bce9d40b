"""Boosting: which of the LLM's tokens the ensemble trained so far already predicts.

Definitions (T positions; `hits[s, n, t]`, t >= 1: SSM s's argmax after tokens[n, :t] equals tokens[n, t]):
  * a position (n, t) with mask[n, t] = 1 is *covered* when at least one SSM of the ensemble hits it;
  * a sample n is *covered* when every one of its masked positions is covered (a sample without masked
    positions is covered: it has nothing to teach).
The next SSM trains on the weights
  * mode "drop" (the paper's adaptive boosting, the default): w[n] = mask[n] for uncovered samples, 0 for
    covered ones (covered samples are dropped);
  * mode "positions": w[n, t] = mask[n, t] * (1 - covered[n, t]) (keep every sample, zero the weight of
    the tokens some SSM already gets right);
  * mode "reweight" (AdaBoost-like): w[n, t] = mask[n, t] * (covered_weight if covered[n, t] else 1):
    the next SSM concentrates on the tokens the ensemble misses but keeps learning the easy ones, which
    it needs to continue its own chains past them. With long continuations almost no sample is covered
    at *every* position, so "drop" then keeps nearly all of them and the next SSM learns what the first
    already knows; "reweight" is the default ensemble's choice (scripts/train_default_ssms.py).
An SSM whose argmax matches the LLM at a position would have its token accepted there at greedy
decoding; a tree holding every SSM's argmax accepts the whole sample when it is covered.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specjax import model
from specjax.config import ModelConfig

MODES = ("drop", "positions", "reweight")


@functools.partial(jax.jit, static_argnames=("cfg", "k"))
def _topk(params, cfg: ModelConfig, tokens, k: int):
    return jax.lax.top_k(model.causal_logits(params, cfg, tokens), k)[1]  # [B, T, k]


def topk_predictions(params, cfg: ModelConfig, tokens: np.ndarray, k: int = 1, batch_size: int = 32) -> np.ndarray:
    """tokens [N, T] -> int32 [N, T, k]: the model's top-k next tokens after each prefix tokens[:, :t+1]."""
    out = [np.asarray(_topk(params, cfg, jnp.asarray(tokens[i: i + batch_size]), k))
           for i in range(0, len(tokens), batch_size)]
    return np.concatenate(out).astype(np.int32)


def hits(tokens: np.ndarray, predictions: np.ndarray) -> np.ndarray:
    """tokens [N, T], top-1 predictions [N, T] -> bool [N, T]: hits[:, t] = predictions[:, t-1] == tokens[:, t]
    (hits[:, 0] = False)."""
    out = np.zeros(tokens.shape, bool)
    out[:, 1:] = predictions[:, :-1] == tokens[:, 1:]
    return out


def boost_weights(mask: np.ndarray, ssm_hits: Sequence[np.ndarray], mode: str = "drop",
                  covered_weight: float = 0.25) -> tuple[np.ndarray, dict]:
    """mask [N, T], ssm_hits: one bool [N, T] per trained SSM -> (weights float32 [N, T], stats).
    covered_weight: the weight of a covered position in mode "reweight"."""
    if mode not in MODES:
        raise ValueError(f"unknown boost mode {mode!r} (expected one of {', '.join(MODES)})")
    if not 0.0 <= covered_weight <= 1.0:
        raise ValueError(f"covered_weight={covered_weight} must be in [0, 1]")
    m = mask.astype(bool)
    covered = np.zeros(m.shape, bool)
    for h in ssm_hits:
        covered |= h
    covered &= m
    sample_covered = (covered == m).all(1)
    if mode == "drop":
        w = (m & ~sample_covered[:, None]).astype(np.float32)
    elif mode == "positions":
        w = (m & ~covered).astype(np.float32)
    else:
        w = np.where(covered, np.float32(covered_weight), m.astype(np.float32))
    stats = {"samples": int(len(m)), "samples_covered": int(sample_covered.sum()),
             "samples_kept": int((w.sum(1) > 0).sum()), "positions": int(m.sum()),
             "positions_covered": int(covered.sum()), "positions_kept": int((w > 0).sum()),
             "weight": float(w.sum())}
    return w.astype(np.float32), stats
