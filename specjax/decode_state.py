"""The decode loop's state, prefill and per-request stopping, shared by incremental and speculative
decoding.

Layout of one request (row b) in the token buffer `tokens [B, S]` and the LLM cache:

    slot:    0 .. P-1            P          P+1 ..
    tokens:  committed tokens    root       (future)
    cache:   K/V of 0..P-1       --         (scratch: tree nodes during verification)

`length[b] = P` counts the tokens whose K/V are in the LLM cache; the *root* `tokens[b, P]` is the last
emitted token, not yet run through the LLM. Prefill runs the prompt minus its last token, so the last
prompt token is the first root and every step has the same shape.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from specjax import model
from specjax.config import ModelConfig

# finish_reason codes.
RUNNING, EOS, MAX_NEW_TOKENS, LENGTH = 0, 1, 2, 3
FINISH_REASONS = {RUNNING: "running", EOS: "eos", MAX_NEW_TOKENS: "max_new_tokens", LENGTH: "length"}


@flax.struct.dataclass
class DecodeState:
    """Everything the loop carries. Shapes: B requests, S cache slots, R max recorded steps."""

    cache: model.KVCache  # LLM cache, [B, K, S, A] per layer
    tokens: jax.Array  # [B, S] int32: prompt, then emitted tokens
    length: jax.Array  # [B] int32: P, tokens with K/V in the LLM cache; root at tokens[b, P]
    prompt_len: jax.Array  # [B] int32
    max_new: jax.Array  # [B] int32: per-request max_new_tokens
    num_new: jax.Array  # [B] int32: tokens emitted so far
    finish: jax.Array  # [B] int32: finish_reason code, RUNNING while going
    steps: jax.Array  # [B] int32: LLM forward steps taken (prefill excluded)
    emitted: jax.Array  # [B, R] int32: tokens emitted at each step (accepted + bonus)
    key: jax.Array  # [B, 2] one PRNG key per row (sampling.request_keys): a row's draws are its own

    @property
    def done(self):
        return self.finish != RUNNING


def step_room(num_tree_nodes: int, max_depth: int) -> int:
    """Slots one step needs from its root slot on: the root and tree nodes' K/V (num_tree_nodes, root
    included) and the emitted tokens (at most max_depth accepted + 1 bonus after the root)."""
    return max(num_tree_nodes, max_depth + 2)


def causal_mask(query_slots, num_slots: int):
    """[B, T, S]: a query at slot query_slots[b, t] sees every slot s <= its own (contiguous slots)."""
    return jnp.arange(num_slots)[None, None, :] <= query_slots[:, :, None]


def prefill(params, cfg: ModelConfig, cache: model.KVCache, tokens, prompt_len, bucket: int):
    """Runs prompt tokens 0..P-2 of every row through the model (P = prompt_len[b]).

    Args:
      tokens: [B, S] int32 with the prompts at slots 0..P-1.
      bucket: static padded prompt length (>= max P); positions beyond P-2 write nowhere.
    Returns the cache with K/V of slots 0..P-2 filled.
    """
    B, S = tokens.shape
    t = jnp.broadcast_to(jnp.arange(bucket), (B, bucket))
    real = t < (prompt_len - 1)[:, None]
    slots = jnp.where(real, t, S)  # S: dropped
    mask = causal_mask(t, S)
    _, cache = model.forward(params, cfg, tokens[:, :bucket], t, cache, slots, mask)
    return cache


def record_step(state: DecodeState, new_tokens, num_emitted, eos_ids: tuple[int, ...], step_room: int):
    """Appends num_emitted[b] tokens new_tokens[b, :] after the root and updates stops and metrics.

    Args:
      new_tokens: [B, W] int32 candidate tokens, the first num_emitted[b] of which are emitted.
      num_emitted: [B] int32 in 1..W (ignored for finished rows).
      step_room: static: slots a step needs from its root on (see `step_room`); a row whose next
        step would not fit the cache stops with finish_reason "length" instead of writing past it.
    The emitted tokens are truncated at the first EOS and at max_new_tokens.
    Returns (state, n [B]): the state with tokens written and num_new/finish/steps/emitted updated,
    and how many tokens each row kept. `length` is the caller's to advance (it knows which K/V it
    committed).
    """
    B, W = new_tokens.shape
    S = state.tokens.shape[1]
    running = ~state.done
    w = jnp.arange(W)[None, :]
    # Truncate at max_new_tokens and at the last slot of the buffer (the root must stay inside).
    room_new = state.max_new - state.num_new
    root_slot = state.length  # root is tokens[length]; new tokens go to length+1 ...
    room_cache = S - 1 - root_slot
    n = jnp.minimum(jnp.minimum(num_emitted, room_new), room_cache)
    # Truncate after the first EOS.
    is_eos = jnp.zeros_like(new_tokens, dtype=bool)
    for e in eos_ids:
        is_eos |= new_tokens == e
    is_eos &= w < n[:, None]
    first_eos = jnp.where(is_eos.any(-1), jnp.argmax(is_eos, -1), W)
    n = jnp.minimum(n, first_eos + 1)
    n = jnp.where(running, jnp.maximum(n, 0), 0)

    b = jnp.arange(B)[:, None]
    slots = jnp.where(w < n[:, None], root_slot[:, None] + 1 + w, S)
    tokens = state.tokens.at[b, slots].set(new_tokens, mode="drop")
    num_new = state.num_new + n
    hit_eos = running & (first_eos < n)
    finish = jnp.where(running & hit_eos, EOS, state.finish)
    finish = jnp.where(running & ~hit_eos & (num_new >= state.max_new), MAX_NEW_TOKENS, finish)
    finish = jnp.where(running & (finish == RUNNING) & (root_slot + n + step_room > S), LENGTH, finish)
    R = state.emitted.shape[1]
    emitted = state.emitted.at[jnp.arange(B), jnp.minimum(state.steps, R - 1)].set(
        jnp.where(running, n, state.emitted[jnp.arange(B), jnp.minimum(state.steps, R - 1)]))
    steps = state.steps + running.astype(jnp.int32)
    return state.replace(tokens=tokens, num_new=num_new, finish=finish, steps=steps, emitted=emitted), n
