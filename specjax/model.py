"""The decoder: pure functions over a params pytree and a static-shape KV cache.

One forward serves prefill, one-token decoding and token-tree verification. The caller says, for each
of the T new tokens, its position (RoPE / learned position), the cache slot its K/V go to, and which of
the S cache slots it may attend to (the new tokens' own slots included):

    hidden, cache = forward(params, cfg, tokens[B, T], positions[B, T], cache, slots[B, T], mask[B, T, S])

A slot >= S drops the write (padding tokens write nowhere): JAX would otherwise clamp an
out-of-range write onto the last slot and silently corrupt the cache.

Params layout (per layer dicts in a list, so nothing is sliced out of a stacked array per step):
    embed [V, E]  pos_embed [P, D] (OPT)  project_in [E, D], project_out [D, E] (OPT-350m)
    layers[l]: attn_norm{scale[D], bias[D]?}  q[D, H, A] k[D, K, A] v[D, K, A] o[H, A, D]
               q_bias[H, A] k_bias[K, A] v_bias[K, A] (qkv_bias)  o_bias[D] (o_bias)
               mlp_norm{...}  gate[D, F] (llama)  up[D, F]  down[F, D]  (+ *_bias with mlp_bias)
    final_norm{scale[D], bias[D]?}   lm_head[E, V] (untied only)
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax import skinny
from specjax.config import ModelConfig, RopeConfig

Params = dict


@flax.struct.dataclass
class KVCache:
    """Per-layer keys and values: k[l], v[l] of shape [B, K, S, A].

    Heads before slots, so attention's batched dots (over b, k) read the cache as it lies, with no
    per-step transpose of the whole cache."""

    k: tuple
    v: tuple

    @property
    def num_slots(self) -> int:
        return self.k[0].shape[2]


def init_cache(cfg: ModelConfig, batch: int, num_slots: int, dtype=jnp.float32) -> KVCache:
    shape = (batch, cfg.num_kv_heads, num_slots, cfg.head_dim)
    zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
    return KVCache(k=zeros, v=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)))


# ----------------------------------------------------------------------------- building blocks


def rope_inv_freq(rope: RopeConfig, head_dim: int) -> np.ndarray:
    """[A/2] inverse frequencies in float32, computed as Hugging Face does."""
    inv = 1.0 / (rope.theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim))
    inv = inv.astype(np.float32)
    if rope.kind == "linear":
        inv = inv / np.float32(rope.factor)
    elif rope.kind == "llama3":
        old = rope.original_max_position_embeddings
        low_wavelen = old / rope.low_freq_factor
        high_wavelen = old / rope.high_freq_factor
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / rope.factor, inv)
        smooth = (old / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv = np.where(medium, smoothed, scaled).astype(np.float32)
    elif rope.kind != "default":
        raise ValueError(f"unsupported rope kind {rope.kind!r}")
    return inv


def rope_tables(positions, inv_freq):
    """cos, sin [B, T, A/2] of positions [B, T] times inv_freq [A/2]: once per forward (XLA would
    otherwise evaluate them inside every layer's rotation, per element)."""
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, A/2]
    return jnp.cos(angles), jnp.sin(angles)


def rotate(x, cos, sin):
    """x [B, T, *, A] rotated by the tables of `rope_tables` (rotate-half convention, as HF:
    x * cat(cos, cos) + cat(-x2, x1) * cat(sin, sin), written per half; the same floats)."""
    half = x.shape[-1] // 2
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def apply_rope(x, positions, inv_freq):
    """x [B, T, *, A] rotated by positions [B, T] (rotate-half convention, as HF)."""
    return rotate(x, *rope_tables(positions, inv_freq))


def norm(p: dict, x, cfg: ModelConfig):
    """RMSNorm (llama family) or LayerNorm (OPT) over the last axis, computed in float32."""
    xf = x.astype(jnp.float32)
    if cfg.family == "opt":
        xf = xf - xf.mean(-1, keepdims=True)
    y = xf * jax.lax.rsqrt((xf * xf).mean(-1, keepdims=True) + cfg.norm_eps)
    y = y.astype(x.dtype) * p["scale"] if cfg.family == "llama" else (y * p["scale"] + p["bias"]).astype(x.dtype)
    return y


def activation(name: str, x):
    if name == "silu":
        return jax.nn.silu(x)
    if name == "relu":
        return jax.nn.relu(x)
    if name == "gelu":
        return jax.nn.gelu(x, approximate=False)
    return jax.nn.gelu(x, approximate=True)  # gelu_new


def write_cache(cache_l, new, slots):
    """cache_l [B, K, S, A] with new [B, T, K, A] written at slots [B, T]; slots >= S are dropped.

    Vmapped over B: a scatter with a batch dimension, which a cache split over the batch (sharding's
    dp axis) partitions with no communication (explicit row indices would all-gather the new K/V)."""
    def write(c, n, s):  # [K, S, A] <- [T, K, A] at slots [T]
        return c.at[:, s].set(jnp.swapaxes(n, 0, 1).astype(c.dtype), mode="drop")

    return jax.vmap(write)(cache_l, new, slots)


def dense(x, w, rows: int | None = None):
    """x [..., I] @ w -> [..., O]: w is a PackedWeight [I, O] (the CPU kernel, specjax.skinny) or an
    array whose leading dims flatten to I (a bitcast reshape: XLA then never transposes a weight per
    step), `rows` = I when w has more than two dims."""
    if isinstance(w, skinny.PackedWeight):
        return skinny.matmul(x, w).astype(x.dtype)
    return x @ (w if rows is None else w.reshape(rows, -1))


BLOCK = 128  # cache slots per attention block (caches longer than 2 blocks are read block by block)


def split_mask(slots, mask, S: int):
    """mask [B, T, S] over the cache with the new tokens at slots [B, T] -> (old_mask [B, T, S]: the
    cache slots query t sees that this step does not overwrite, new_mask [B, T, T]: the new tokens
    query t sees)."""
    B, T = slots.shape
    written = (slots[:, :, None] == jnp.arange(S)).any(1)  # [B, S]
    old_mask = mask & ~written[:, None, :]  # [B, T, S]
    sees = jnp.take_along_axis(mask, jnp.broadcast_to(jnp.minimum(slots, S - 1)[:, None, :], (B, T, T)), axis=2)
    return old_mask, sees & (slots < S)[:, None, :]


def kernel_attends(*arrays) -> bool:
    """Whether the CPU kernel's attention (float32 only) takes these arrays."""
    return all(a.dtype == jnp.float32 for a in arrays)


def attend(q, k, v, k_cache, v_cache, slots, mask, cpu_kernel: bool = False):
    """Attention of the T new queries over the cache as it was plus the T new keys, which is the
    masked attention over the cache with the new K/V written at their slots, without reading it.

    q [B, T, H, A]; k, v [B, T, K, A]; k_cache, v_cache [B, K, S, A]; slots [B, T] (>= S: written
    nowhere, so seen by no one); mask [B, T, S]. Returns [B, T, H*A]. A slot this step writes holds
    stale K/V in the cache, so the cache part masks it out and the new part stands in for it:
    query t sees new token u where mask[b, t, slots[b, u]]. A cache of more than 2 blocks is read
    only up to the last slot any query sees, block by block with a running softmax (flash-decoding):
    a step costs what the requests' lengths need, not what the cache could hold.
    cpu_kernel: the same attention in one call of specjax's CPU kernel (skinny.attend; float32 only),
    for a model packed for it."""
    B, T, H, A = q.shape
    K, S = k.shape[2], k_cache.shape[2]
    G = H // K
    old_mask, new_mask = split_mask(slots, mask, S)
    if cpu_kernel and kernel_attends(q, k, v, k_cache, v_cache):
        out, _, _ = skinny.attend(q, k, v, k_cache, v_cache, old_mask, new_mask, jnp.full((B, T), S, jnp.int32))
        return out.reshape(B, T, H * A)

    lo = jnp.finfo(jnp.float32).min
    q = jnp.swapaxes(q.reshape(B, T, K, G, A), 1, 2).reshape(B, K, T * G, A)  # [B, K, TG, A]
    k_new, v_new = jnp.swapaxes(k, 1, 2).astype(k_cache.dtype), jnp.swapaxes(v, 1, 2).astype(v_cache.dtype)

    def scores(keys, m):  # keys [B, K, X, A], m [B, T, X] -> masked float32 scores [B, K, T, G, X]
        s = jnp.einsum("bkqa,bkxa->bkqx", q, keys).astype(jnp.float32).reshape(B, K, T, G, -1) / math.sqrt(A)
        return jnp.where(m[:, None, :, None, :], s, lo)

    def weighted(e, values):  # e [B, K, T, G, X] -> [B, K, TG, A]
        return jnp.einsum("bkqx,bkxa->bkqa", e.astype(values.dtype).reshape(B, K, T * G, -1), values)

    s_new = scores(k_new, new_mask)
    if S <= 2 * BLOCK:
        s_old = scores(k_cache, old_mask)
        m = jnp.maximum(s_old.max(-1, keepdims=True), s_new.max(-1, keepdims=True))  # [B, K, T, G, 1]
        e_old = jnp.exp(s_old - m)
        denom, acc = e_old.sum(-1, keepdims=True), weighted(e_old, v_cache)
    else:
        seen = old_mask.any((0, 1))  # [S]
        hi = jnp.max(jnp.where(seen, jnp.arange(S) + 1, 0))  # slots [0, hi) hold all that is seen

        def block(j, c):  # block j covers slots [j*BLOCK, (j+1)*BLOCK); the last one is read from S-BLOCK
            m, denom, acc = c
            start = jnp.minimum(j * BLOCK, S - BLOCK)
            idx = start + jnp.arange(BLOCK)
            bm = jax.lax.dynamic_slice_in_dim(old_mask, start, BLOCK, axis=2) & (idx >= j * BLOCK)
            s = scores(jax.lax.dynamic_slice_in_dim(k_cache, start, BLOCK, axis=2), bm)
            m_new = jnp.maximum(m, s.max(-1, keepdims=True))
            e, fix = jnp.exp(s - m_new), jnp.exp(m - m_new)
            acc = acc * fix.reshape(B, K, T * G, 1) + weighted(e, jax.lax.dynamic_slice_in_dim(v_cache, start, BLOCK, axis=2))
            return m_new, denom * fix + e.sum(-1, keepdims=True), acc

        m = s_new.max(-1, keepdims=True)  # the running softmax starts from the new tokens' part
        init = (m, jnp.zeros_like(m), jnp.zeros((B, K, T * G, A), v_cache.dtype))
        m, denom, acc = jax.lax.fori_loop(0, (hi + BLOCK - 1) // BLOCK, block, init)
    e_new = jnp.exp(s_new - m)
    denom = denom + e_new.sum(-1, keepdims=True)
    out = (acc + weighted(e_new, v_new)) / denom.reshape(B, K, T * G, 1).astype(acc.dtype)  # [B, K, TG, A]
    return jnp.swapaxes(out.reshape(B, K, T, G, A), 1, 2).reshape(B, T, H * A)


def attention(lp: dict, x, cfg: ModelConfig, k_cache, v_cache, slots, mask, rope):
    """One attention block. x [B, T, D]; rope: (cos, sin) of `rope_tables`, or None (no RoPE).
    Returns (out [B, T, D], k_cache, v_cache)."""
    B, T, D = x.shape
    H, K, A = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    S = k_cache.shape[2]
    if "qkv" in lp:  # packed for the CPU kernel: q, k and v in one matmul
        q, k, v = jnp.split(dense(x, lp["qkv"]), [H * A, (H + K) * A], axis=-1)
    else:
        q, k, v = dense(x, lp["q"], D), dense(x, lp["k"], D), dense(x, lp["v"], D)
    q, k, v = q.reshape(B, T, H, A), k.reshape(B, T, K, A), v.reshape(B, T, K, A)
    if cfg.qkv_bias:
        q, k, v = q + lp["q_bias"], k + lp["k_bias"], v + lp["v_bias"]
    if "qkv" in lp and kernel_attends(q, k, v, k_cache, v_cache):
        # Packed for the CPU kernel (specjax.skinny): RoPE, attention and the cache write in one call.
        out, k_cache, v_cache = skinny.attend(q, k, v, k_cache, v_cache, *split_mask(slots, mask, S), slots, rope)
        out = out.reshape(B, T, H * A)
    else:
        if rope is not None:
            q, k = rotate(q, *rope), rotate(k, *rope)
        out = attend(q, k, v, k_cache, v_cache, slots, mask)  # [B, T, H*A]
        # The new K/V are written after attention has read the cache. XLA updates a buffer in place only
        # when a data dependency orders its readers before the write (an optimization barrier does not),
        # else it copies every layer's K and V cache once or twice per step. Adding 0 * (each token's own
        # attention output) is that dependency: exact for finite outputs, and a row that overflowed to
        # inf / NaN has garbage logits already; other rows are untouched.
        order = jnp.zeros((), out.dtype) * out[:, :, None, :1]  # [B, T, 1, 1]
        k, v = k + order.astype(k.dtype), v + order.astype(v.dtype)
        k_cache, v_cache = write_cache(k_cache, k, slots), write_cache(v_cache, v, slots)
    out = dense(out, lp["o"], H * A)
    if cfg.o_bias:
        out = out + lp["o_bias"]
    return out, k_cache, v_cache


def mlp(lp: dict, x, cfg: ModelConfig):
    if "gate_up" in lp:  # packed for the CPU kernel: gate and up in one matmul
        gate, up = jnp.split(dense(x, lp["gate_up"]), 2, axis=-1)
    else:
        gate, up = (dense(x, lp["gate"]) if "gate" in lp else None), dense(x, lp["up"])
    if cfg.mlp_bias:
        up = up + lp["up_bias"]
        gate = None if gate is None else gate + lp["gate_bias"]
    h = activation(cfg.activation, up) if gate is None else activation(cfg.activation, gate) * up
    out = dense(h, lp["down"])
    if cfg.mlp_bias:
        out = out + lp["down_bias"]
    return out


# ----------------------------------------------------------------------------- the model


def compute_dtype(params: Params):
    """The activations' and KV cache's dtype: the params' own (norm scales are never packed, so a
    model whose weights the CPU kernel stores in bf16 still computes in float32)."""
    return params["layers"][0]["attn_norm"]["scale"].dtype


def embed(params: Params, cfg: ModelConfig, tokens, positions):
    """tokens, positions [B, T] -> [B, T, D]."""
    table = params["embed"]  # [V, E], or (packed for the CPU kernel, tied) the LM head [E, V]
    if isinstance(table, skinny.PackedWeight):
        x = table.columns(tokens).astype(compute_dtype(params))
    else:
        x = jnp.take(table, tokens, axis=0)
    if cfg.projects_embeddings:
        x = dense(x, params["project_in"])
    if "pos_embed" in params:
        x = x + jnp.take(params["pos_embed"], positions + cfg.position_offset, axis=0)
    return x


def forward(params: Params, cfg: ModelConfig, tokens, positions, cache: KVCache, slots, mask):
    """Runs the T new tokens through the decoder.

    Args:
      tokens, positions, slots: int [B, T].
      cache: KVCache with S slots.
      mask: bool [B, T, S], True where query t may attend to slot s.
    Returns:
      hidden [B, T, E] (final hidden states, ready for `lm_head`) and the updated cache.
    """
    hidden, cache, _ = decode(params, cfg, embed(params, cfg, tokens, positions), positions, cache, slots, mask)
    return hidden, cache


def forward_features(params: Params, cfg: ModelConfig, tokens, positions, cache: KVCache, slots, mask,
                     taps: tuple[int, ...]):
    """forward, and the residual stream after each layer in `taps` (0-based), concatenated:
    (hidden [B, T, E], cache, features [B, T, len(taps) * D]) -- what a feature drafter reads."""
    hidden, cache, feats = decode(params, cfg, embed(params, cfg, tokens, positions), positions, cache, slots,
                                  mask, taps)
    return hidden, cache, jnp.concatenate(feats, axis=-1)


def decode(params: Params, cfg: ModelConfig, x, positions, cache: KVCache, slots, mask,
           taps: tuple[int, ...] = ()):
    """The decoder layers over inputs x [B, T, D] (embedded tokens, or a feature drafter's fused input).
    Returns (hidden [B, T, E], cache, [x after layer l for l in taps])."""
    rope = rope_tables(positions, jnp.asarray(rope_inv_freq(cfg.rope, cfg.head_dim))) if cfg.uses_rope else None
    new_k, new_v, feats = [], [], []
    for l, lp in enumerate(params["layers"]):
        h = norm(lp["attn_norm"], x, cfg) if cfg.pre_norm else x
        h, k_l, v_l = attention(lp, h, cfg, cache.k[l], cache.v[l], slots, mask, rope)
        x = x + h
        if not cfg.pre_norm:
            x = norm(lp["attn_norm"], x, cfg)
        h = norm(lp["mlp_norm"], x, cfg) if cfg.pre_norm else x
        x = x + mlp(lp, h, cfg)
        if not cfg.pre_norm:
            x = norm(lp["mlp_norm"], x, cfg)
        new_k.append(k_l)
        new_v.append(v_l)
        if l in taps:
            feats.append(x)
    if cfg.final_norm:
        x = norm(params["final_norm"], x, cfg)
    if cfg.projects_embeddings:
        x = dense(x, params["project_out"])
    return x, KVCache(k=tuple(new_k), v=tuple(new_v)), feats


def lm_head(params: Params, cfg: ModelConfig, hidden):
    """hidden [..., E] -> logits [..., V] in float32."""
    if cfg.tie_word_embeddings and isinstance(params["embed"], skinny.PackedWeight):
        logits = dense(hidden, params["embed"])  # packed as the head [E, V]
    elif cfg.tie_word_embeddings:
        logits = jnp.einsum("...e,ve->...v", hidden, params["embed"])
    else:
        logits = dense(hidden, params["lm_head"])
    return logits.astype(jnp.float32)


def causal_hidden(params: Params, cfg: ModelConfig, tokens):
    """Full causal forward of tokens [B, T] from an empty cache -> final hidden states [B, T, D]."""
    B, T = tokens.shape
    cache = init_cache(cfg, B, T, compute_dtype(params))
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool)), (B, T, T))
    hidden, _ = forward(params, cfg, tokens, positions, cache, positions, mask)
    return hidden


def causal_logits(params: Params, cfg: ModelConfig, tokens):
    """Full causal forward of tokens [B, T] from an empty cache -> logits [B, T, V]. For tests/eval."""
    return lm_head(params, cfg, causal_hidden(params, cfg, tokens))


# ----------------------------------------------------------------------------- init


def param_shapes(cfg: ModelConfig) -> dict:
    """The shape of every parameter, as a pytree of tuples (the checkpoint contract)."""
    D, F, H, K, A, V = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads,
                        cfg.head_dim, cfg.vocab_size)
    E = cfg.embed_dim if cfg.projects_embeddings else D
    norm_shape = {"scale": (D,)} if cfg.family == "llama" else {"scale": (D,), "bias": (D,)}
    layer = {"attn_norm": dict(norm_shape), "q": (D, H, A), "k": (D, K, A), "v": (D, K, A),
             "o": (H, A, D), "mlp_norm": dict(norm_shape), "up": (D, F), "down": (F, D)}
    if cfg.family == "llama":
        layer["gate"] = (D, F)
    if cfg.qkv_bias:
        layer.update(q_bias=(H, A), k_bias=(K, A), v_bias=(K, A))
    if cfg.o_bias:
        layer["o_bias"] = (D,)
    if cfg.mlp_bias:
        layer.update(up_bias=(F,), down_bias=(D,))
        if cfg.family == "llama":
            layer["gate_bias"] = (F,)
    shapes = {"embed": (V, E), "layers": [dict(layer) for _ in range(cfg.num_layers)]}
    if cfg.family == "opt":
        shapes["pos_embed"] = (cfg.max_position_embeddings + cfg.position_offset, D)
    if cfg.projects_embeddings:
        shapes["project_in"] = (E, D)
        shapes["project_out"] = (D, E)
    if cfg.final_norm:
        shapes["final_norm"] = dict(norm_shape)
    if not cfg.tie_word_embeddings:
        shapes["lm_head"] = (E, V)
    return shapes


def init_params(cfg: ModelConfig, key, dtype=jnp.float32, std: float = 0.02) -> Params:
    """Random parameters: normal(std) weights, unit norm scales, zero biases."""
    shapes = param_shapes(cfg)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=lambda s: isinstance(s, tuple))
    keys = jax.random.split(key, len(leaves))
    out = []
    for (path, shape), k in zip(leaves, keys):
        name = jax.tree_util.keystr(path)
        if "scale" in name:
            out.append(jnp.ones(shape, dtype))
        elif "bias" in name:
            out.append(jnp.zeros(shape, dtype))
        else:
            out.append((std * jax.random.normal(k, shape)).astype(dtype))
    return jax.tree_util.tree_unflatten(treedef, out)
