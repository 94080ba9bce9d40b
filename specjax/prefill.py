"""Chunked prefill: a prompt's K/V go into the cache `chunk` tokens per call, so memory stays bounded.

A one-shot prefill of a P-token prompt materialises attention scores [B, H, P, S] (5,924 tokens into
6,144 slots: 1.4 GB per layer for SmolLM2-135M). Here chunk c (tokens c*C .. c*C + C - 1) attends only
to the first W slots, W the smallest window in `windows(C, S)` holding its last position: scores are
[B, H, C, W], and part of the causal half of the work is skipped. The window is static (one compile
per window, at most three per cache size); the chunk's start is traced (no compile per chunk).

    cache = prefill_chunk(params, cache, tokens, prompt_len, start, cfg=cfg, chunk=C, window=W)

Positions at or beyond a row's P - 1 write nowhere (the last prompt token is the first root, see
decode_state), so rows of any length share the calls.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from specjax import model
from specjax.config import ModelConfig
from specjax.decode_state import causal_mask

CHUNK = 256  # prompt tokens per prefill call
ONE_CALL = 2 * CHUNK  # a padded prompt up to this long is prefilled in one call


def chunk_size(bucket: int, num_slots: int) -> int:
    """C: the padded prompt itself up to ONE_CALL tokens (one call: a 300-token prompt padded to 320
    computes 320 positions, where chunks of 256 computed 512), else CHUNK; never past the cache."""
    return min(bucket if bucket <= ONE_CALL else CHUNK, num_slots)


def windows(chunk: int, num_slots: int) -> list[int]:
    """Attention windows a chunk may use: a quarter and a half of the cache (rounded up to whole
    chunks), then all of it. Three compiles per cache size at most: on 2 cores a window compiles in
    ~3.5 s for SmolLM2-135M, so finer windows (chunk * 2^i) saved less prefill time than they cost."""
    parts = {-(-(num_slots >> i) // chunk) * chunk for i in (2, 1)}
    return sorted(w for w in parts if chunk <= w < num_slots) + [num_slots]


def plan(longest_prompt: int, bucket: int, num_slots: int) -> list[tuple[int, int, int]]:
    """[(start, chunk, window)] covering prompt positions 0 .. longest_prompt - 2 (the K/V a prefill
    writes). A last chunk that would run past the cache starts earlier instead: it recomputes a few
    positions already written, from the same inputs, to the same K/V."""
    C = chunk_size(bucket, num_slots)
    wins = windows(C, num_slots)
    out = []
    for start in range(0, max(longest_prompt - 1, 0), C):
        start = min(start, num_slots - C)
        out.append((start, C, next(w for w in wins if w >= start + C)))
    return out


@functools.partial(jax.jit, static_argnames=("cfg", "chunk", "window", "successors", "taps"), donate_argnames=("cache",))
def prefill_chunk(params, cache: model.KVCache, tokens, prompt_len, start, cfg: ModelConfig, chunk: int,
                  window: int, successors: int = 0, taps: tuple[int, ...] = ()):
    """Writes the K/V of prompt positions start .. start + chunk - 1 (those < prompt_len[b] - 1).

    Args:
      tokens: [B, S] int32, prompts at slots 0 .. P - 1; prompt_len [B]; start: traced int32 scalar.
      window: static W <= S, > start + chunk - 1: the slots the chunk's queries may attend to.
      successors, taps: what drafters read at every prefilled position (drafters.setup.prefill_outputs).
    Returns the cache; with successors = k > 0 or taps, (cache, the LLM's top-k next tokens [B, C, k]
    int32 or None, the features after the layers `taps` [B, C, len(taps) * D] or None) at the chunk's
    positions (those past P - 2 are not real)."""
    B, S = tokens.shape
    t = start + jnp.broadcast_to(jnp.arange(chunk), (B, chunk))  # [B, C] positions = slots
    real = t < (prompt_len - 1)[:, None]
    slots = jnp.where(real, t, window)  # window: dropped
    view = model.KVCache(k=tuple(c[:, :, :window] for c in cache.k), v=tuple(c[:, :, :window] for c in cache.v))
    chunk_tokens = jax.lax.dynamic_slice_in_dim(tokens, start, chunk, axis=1)
    args = (params, cfg, chunk_tokens, t, view, slots, causal_mask(t, window))
    feats = top = None
    if taps:
        hidden, view, feats = model.forward_features(*args, taps)
    else:
        hidden, view = model.forward(*args)
    if successors:
        top = jax.lax.top_k(model.lm_head(params, cfg, hidden), successors)[1].astype(jnp.int32)
    put = lambda full, part: jax.lax.dynamic_update_slice_in_dim(full, part, 0, axis=2)
    cache = model.KVCache(k=tuple(map(put, cache.k, view.k)), v=tuple(map(put, cache.v, view.v)))
    return (cache, top, feats) if successors or taps else cache


@functools.partial(jax.jit, donate_argnames=("full",))
def place(full, part, start):
    """full [B, N, ...] with part [B, C, ...] at positions start .. start + C - 1 (start + C <= N: the
    caller checks; dynamic_update_slice would move an overrunning part silently)."""
    return jax.lax.dynamic_update_slice_in_dim(full, part, start, axis=1)
