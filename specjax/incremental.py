"""Plain incremental decoding: one LLM token per step, the loop a jitted while_loop of
at most max_steps steps per call."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from specjax import model, sampling
from specjax.config import ModelConfig
from specjax.decode_state import DecodeState, causal_mask, record_step, step_room

STEP_ROOM = step_room(num_tree_nodes=1, max_depth=0)


def incremental_step(params, cfg: ModelConfig, state: DecodeState, sampling_cfg, eos_ids) -> DecodeState:
    """Runs every running row's root through the LLM and appends the next token."""
    B, S = state.tokens.shape
    rows = jnp.arange(B)
    root = state.tokens[rows, state.length]  # [B]
    slots = jnp.where(state.done, S, state.length)[:, None]  # [B, 1]; finished rows write nowhere
    positions = state.length[:, None]
    mask = causal_mask(positions, S)  # [B, 1, S]
    hidden, cache = model.forward(params, cfg, root[:, None], positions, state.cache, slots, mask)
    logits = model.lm_head(params, cfg, hidden[:, 0])  # [B, V]
    key, sub = sampling.split_rows(state.key, 2)  # one key per row: [B, 2] each
    nxt = sampling.sample_rows(sub, logits, sampling_cfg)  # [B]
    state = state.replace(cache=cache, key=key)
    state, n = record_step(state, nxt[:, None].astype(jnp.int32), jnp.ones((B,), jnp.int32), eos_ids, STEP_ROOM)
    return state.replace(length=state.length + n)  # the root's K/V are now committed


@functools.partial(jax.jit, static_argnames=("cfg", "sampling_cfg", "eos_ids"), donate_argnames=("state",))
def incremental_loop(params, state: DecodeState, max_steps, cfg: ModelConfig, sampling_cfg, eos_ids: tuple[int, ...]):
    """Decodes until every row has stopped or max_steps (a traced int32 scalar: changing it does not
    recompile) steps have run; the host calls it again to go on. Params are an argument (never closed over)."""
    state, _ = jax.lax.while_loop(
        lambda c: jnp.any(~c[0].done) & (c[1] < max_steps),
        lambda c: (incremental_step(params, cfg, c[0], sampling_cfg, eos_ids), c[1] + 1),
        (state, jnp.zeros((), jnp.int32)),
    )
    return state
