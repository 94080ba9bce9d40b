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
from jax import lax


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


def argmax(x: jax.Array) -> jax.Array:
    """jnp.argmax(x, axis=-1) as int32, computed as two plain reductions. [..., V] -> [...].

    Same result: the first index of the maximum, or of the first NaN where there is one. XLA:CPU runs
    the variadic (value, index) reduce that jnp.argmax lowers to as a scalar loop (0.65 ms for the
    LLM's 5 x 49152 verification logits on a Zen 4 core); a max, then a min over the indices that
    hold it, vectorize (0.17 ms).
    """
    top = jnp.max(x, axis=-1, keepdims=True)  # NaN wherever the row holds one
    hit = (x == top) | jnp.isnan(x)
    index = lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
    return jnp.min(jnp.where(hit, index, x.shape[-1]), axis=-1)


def probs(logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """The distribution the next token is drawn from. [..., V] -> [..., V] float32.

    Greedy: one-hot on the argmax (first index among ties).
    """
    if cfg.is_greedy:
        return jax.nn.one_hot(argmax(logits), logits.shape[-1], dtype=jnp.float32)
    return jax.nn.softmax(warp_logits(logits, cfg), axis=-1)


def sample(key: jax.Array, logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """One token per distribution. logits [..., V] -> tokens [...] int32 (argmax when greedy)."""
    if cfg.is_greedy:
        return argmax(logits)
    return draw(jax.random.uniform(key, logits.shape[:-1] + (1, 2)), probs(logits, cfg))[..., 0]


# ----------------------------------------------------------------------------- inverse-CDF draws
# jax.random.categorical draws V Gumbel variates per sample (V uniforms from threefry, two logs each):
# with the default LLM's 49,152 tokens that is ~1.4 ms a token on a 2-core CPU, more than a decode
# step's attention. An inverse-CDF draw needs two uniforms: the first picks a block of DRAW_BLOCK
# tokens by the running sum of the blocks' weights, the second the token within the block by the
# running sum of its weights (an exact two-stage draw: P(block) x P(token | block)). Float32 uniforms
# lie on a 2^-23 grid, so a block's probability is resolved to ~1.2e-7 of the total and a token's
# within its block to ~1.2e-7 of the block's weight (one uniform over the whole vocabulary would give
# every token a multiple of ~1.2e-7 of the total: up to ~3e-3 total variation over 49,152 tokens).

DRAW_BLOCK = 128


def _last_positive(w: jax.Array) -> jax.Array:
    """[..., n] -> [...]: the last index with w > 0 (0 when none)."""
    idx = lax.broadcasted_iota(jnp.int32, w.shape, w.ndim - 1)
    return jnp.max(jnp.where(w > 0, idx, 0), axis=-1)


def draw(u: jax.Array, weights: jax.Array) -> jax.Array:
    """Draws index i with probability weights[i] / sum(weights), by inverse CDF in two stages.

    u [..., D, 2]: uniforms in [0, 1), two per draw (the block's, then the token's within it), D draws
    per distribution; weights [..., V]: finite, >= 0, with a positive sum (need not be normalised;
    zeros are never drawn; all zeros or NaN give 0). Returns [..., D] int32.
    """
    V = weights.shape[-1]
    nb = -(-V // DRAW_BLOCK)
    w = weights.astype(jnp.float32)
    w = jnp.pad(w, [(0, 0)] * (w.ndim - 1) + [(0, nb * DRAW_BLOCK - V)]).reshape(*w.shape[:-1], nb, DRAW_BLOCK)
    sums = w.sum(-1)  # [..., nb]
    cum = jnp.cumsum(sums, axis=-1)  # [..., nb]
    # The first block whose running sum passes u * total (never one without weight: rounding, or a
    # uniform of 1, could leave the target at the total).
    b = jnp.sum(cum[..., None, :] <= (u[..., 0] * cum[..., -1:])[..., None], axis=-1)  # [..., D]
    b = jnp.minimum(b, _last_positive(sums)[..., None])
    block = jnp.take_along_axis(w, b[..., None], axis=-2)  # [..., D, BLOCK]: each draw's block
    inner = jnp.cumsum(block, axis=-1)
    i = jnp.sum(inner <= (u[..., 1] * inner[..., -1])[..., None], axis=-1)
    i = jnp.minimum(i, _last_positive(block))
    return (b * DRAW_BLOCK + i).astype(jnp.int32)


# ----------------------------------------------------------------------------- per-row keys
# The decode loops keep one PRNG key per row (DecodeState.key [B, 2]), so a request's draws depend
# only on its own key and its own history: the same seed gives the same sampled output alone, in a
# batch, or in whichever row of a continuous batch it lands.


def request_keys(seed: int, first: int, count: int) -> jax.Array:
    """[count, 2]: the PRNG keys of requests first .. first + count - 1 of a call seeded with `seed` in
    [0, 2**64): request i's key is the seed's folded with i, the same however the requests are
    batched. Every bit of the seed counts (jax.random.PRNGKey keeps 32 without x64)."""
    seed = int(seed)
    if not 0 <= seed < 2 ** 64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed}")
    key = jax.random.PRNGKey(seed & 0xFFFFFFFF)
    if seed >> 32:
        key = jax.random.fold_in(key, seed >> 32)
    return _fold_each(key, jnp.arange(first, first + count, dtype=jnp.uint32))


@jax.jit
def _fold_each(key, ids):
    return jax.vmap(jax.random.fold_in, (None, 0))(key, ids)


def request_key(seed: int, index: int = 0) -> jax.Array:
    """The PRNG key [2] of request `index` of a call seeded with `seed` (see request_keys)."""
    return request_keys(seed, index, 1)[0]


def as_row_keys(key: jax.Array, rows: int) -> jax.Array:
    """Per-row keys ([B, 2] raw, or [B] typed) as they are, or one key split into `rows` (callers
    outside the decode loops)."""
    typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
    return key if key.ndim == (1 if typed else 2) else jax.random.split(key, rows)


def split_rows(keys: jax.Array, num: int) -> jax.Array:
    """keys [B, 2] -> [num, B, 2]: every row's key split num ways."""
    return jax.vmap(lambda k: jax.random.split(k, num), out_axes=1)(keys)


def uniform_rows(keys: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """keys [B, 2] -> [B, *shape] uniforms in [0, 1), each row from its own key."""
    return jax.vmap(lambda k: jax.random.uniform(k, shape, jnp.float32))(keys)


def draw_rows(keys: jax.Array, weights: jax.Array, draws: int | None = None) -> jax.Array:
    """Inverse-CDF draws (`draw`), each row from its own key: keys [B, 2], weights [B, ..., V] ->
    [B, ...] (draws None: one per distribution) or [B, ..., draws]."""
    u = uniform_rows(keys, weights.shape[1:-1] + (draws or 1, 2))
    out = draw(u, weights)
    return out[..., 0] if draws is None else out


def sample_rows(keys: jax.Array, logits: jax.Array, cfg: SamplingConfig) -> jax.Array:
    """`sample` with one key per row: keys [B, 2], logits [B, V] -> [B] int32 (an inverse-CDF draw
    from the warped distribution when sampling)."""
    if cfg.is_greedy:
        return argmax(logits)
    return draw_rows(keys, probs(logits, cfg))
