"""Logit warping and sampling, shared by the LLM (verification) and the SSMs (drafting).

The warpers reproduce Hugging Face `generate`'s sampling processors, in the same order:
temperature -> top-k -> top-p (`TemperatureLogitsWarper`, `TopKLogitsWarper`,
`TopPLogitsWarper` with `min_tokens_to_keep=1`). Removed tokens get logit -inf.

Greedy decoding (`temperature == 0`) uses no warper at all, as HF does with `do_sample=False`:
`warp_logits` returns the logits unchanged, `probs` is a one-hot on the argmax (the T -> 0 limit;
with it, multi-step speculative sampling reduces exactly to greedy verification), and `sample`
returns the argmax (first index among ties).

All functions are pure and jittable; `SamplingConfig` is frozen and hashable so it can be a
static argument. Shapes: logits [..., V] -> logits / probs [..., V], tokens [...].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is chosen from logits.

    temperature: 0.0 means greedy (argmax); > 0 divides the logits.
    top_k: keep the k largest logits (and every logit tied with the k-th); 0 turns it off.
    top_p: keep the smallest set of most likely tokens whose probability reaches top_p
      (at least one token); 1.0 turns it off.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        if not self.temperature >= 0.0:  # also rejects NaN
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:  # also rejects NaN
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0


def _top_k(logits: jax.Array, k: int) -> jax.Array:
    """HF TopKLogitsWarper: -inf below the k-th largest logit (ties with it are kept). [..., V]."""
    k = min(k, logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]  # [..., 1]
    return jnp.where(logits < kth, -jnp.inf, logits)


def _top_p(logits: jax.Array, top_p: float) -> jax.Array:
    """HF TopPLogitsWarper with min_tokens_to_keep=1. [..., V].

    Sort ascending, drop tokens while the cumulative probability is <= 1 - top_p, always keep
    the most likely one. Two places where "the same as HF" can only mean "up to ties":
    - which of several exactly tied logits straddling the cut survive: our sort is stable (lower
      indices dropped first); torch's sort is not stable, so HF's choice is an implementation
      detail (the number of survivors and their values agree);
    - a cumulative probability exactly equal to 1 - top_p: decided by float rounding (XLA sums in
      float32, torch's CPU cumsum in float64).
    """
    order = jnp.argsort(logits, axis=-1, stable=True)  # [..., V] ascending
    sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
    drop_sorted = (cum <= 1.0 - top_p).at[..., -1].set(False)
    drop = jnp.put_along_axis(
        jnp.zeros_like(drop_sorted), order, drop_sorted, axis=-1, inplace=False
    )
    return jnp.where(drop, -jnp.inf, logits)


def warp_logits(logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """Temperature, then top-k, then top-p. [..., V] -> [..., V] float32 (-inf = removed).

    Greedy configs return the logits unchanged (no warping, as HF without sampling).
    """
    logits = logits.astype(jnp.float32)
    if cfg.is_greedy:
        return logits
    if cfg.temperature != 1.0:
        logits = logits / cfg.temperature
    if cfg.top_k > 0:
        logits = _top_k(logits, cfg.top_k)
    if cfg.top_p < 1.0:
        logits = _top_p(logits, cfg.top_p)
    return logits


def probs(logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """The distribution the next token is drawn from. [..., V] -> [..., V] float32.

    Greedy: one-hot on the argmax (first index among ties).
    """
    if cfg.is_greedy:
        return jax.nn.one_hot(jnp.argmax(logits, axis=-1), logits.shape[-1], dtype=jnp.float32)
    return jax.nn.softmax(warp_logits(logits, cfg), axis=-1)


def sample(key: jax.Array, logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """One token per distribution. logits [..., V] -> tokens [...] int32 (argmax when greedy)."""
    if cfg.is_greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, warp_logits(logits, cfg), axis=-1).astype(jnp.int32)
