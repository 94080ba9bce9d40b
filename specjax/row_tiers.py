"""Compiled row tiers for continuous batching: the batch runs at the smallest of a few row counts that
holds its active requests, and rows move between tiers exactly.

    tiers of a batcher of B = 8 rows:   1, 2, 4, 8   (the powers of two below B, and B)

    one request active  -> the loop runs 1 row (a lightly loaded server computes what `generate
                           --prompt` does, not 8 rows of which 7 are finished dummies)
    a 2nd arrives       -> grow: both rows gathered into a 2-row state
    ...                 -> 4, 8;  rows finish and the rest fit a smaller tier -> shrink

Each tier is one set of static shapes: the loop, a row's insert and its release compile once per
tier, a move once per (from, to) pair of tiers; nothing compiles per request.

A move gathers rows by an index array along the row axis, axis 0 of every per-row leaf:

    new[i] = old[index[i]]    index [B'] int32; -1: no row there (a finished dummy row)

Per-row leaves ([B, ...]): every DecodeState field (the LLM cache [B, K, S, A] per layer, tokens
[B, S], the per-row counters, emitted [B, R], the PRNG keys [B, 2]), SpecState.hits and .credit, and
every leaf of a drafter's state unless its module declares the state shared by all rows
(`PER_ROW = False`: the recycling table [V, k]); shared leaves stay as they are. An SSM's cache and
ssm_len, a feature SSM's cache and pending pairs move with their row; the lookup drafter has no state
(it reads the token buffer). So a request decodes after a move from exactly the arrays it had before:
greedy output is token for token the same, sampled output draws from the same key.

Dummy rows (index -1) copy row 0 and are marked finished: the loop leaves them alone (finished rows
write nothing, not even to shared state), and a request put there replaces every per-row leaf.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from specjax import drafters as drafters_lib
from specjax.decode_state import MAX_NEW_TOKENS, DecodeState
from specjax.speculative import SpecConfig, SpecState


def tiers_for(rows: int) -> tuple[int, ...]:
    """The row counts a batcher of `rows` rows runs at: powers of two below rows, then rows."""
    return tuple(t for t in (1 << i for i in range(rows.bit_length())) if t < rows) + (rows,)


def tiers(rows: int, spec) -> tuple[int, ...]:
    """A batcher's tiers: spec True -> tiers_for(rows); False -> (rows,); a sequence of row counts in
    1 .. rows -> those, sorted, with rows added."""
    if isinstance(spec, bool):
        return tiers_for(rows) if spec else (rows,)
    out = tuple(sorted(set(int(t) for t in spec) | {rows}))
    if out[0] < 1 or out[-1] != rows:
        raise ValueError(f"row tiers {tuple(spec)} must lie in 1 .. {rows} (the batch's rows)")
    return out


def tier_for(n: int, tiers: tuple[int, ...]) -> int:
    """The smallest tier that holds n rows (the largest when none does)."""
    return next((t for t in tiers if t >= n), tiers[-1])


def per_row(dcfg) -> bool:
    """Whether a drafter's state is per row (moves with its rows) or shared (stays)."""
    return getattr(drafters_lib.module(dcfg), "PER_ROW", True)


def take_rows(tree, index):
    """Every leaf x [B, ...] (row axis 0) -> x[index] [B', ...]; index [B'] int32 in [0, B)."""
    leaves = jax.tree.leaves(tree)
    B = leaves[0].shape[0] if leaves else 0
    bad = [x.shape for x in leaves if x.ndim == 0 or x.shape[0] != B]
    if bad:
        raise ValueError(f"take_rows: every leaf needs the row axis first ({B} rows), got shapes {bad[:3]}")
    return jax.tree.map(lambda x: jnp.take(x, index, axis=0), tree)


def _move_base(base: DecodeState, index) -> DecodeState:
    """The DecodeState's rows gathered by index; rows without a source (-1) are finished dummies."""
    moved = take_rows(base, jnp.maximum(index, 0))
    return moved.replace(finish=jnp.where(index >= 0, moved.finish, MAX_NEW_TOKENS))


@jax.jit
def move_decode_rows(state: DecodeState, index) -> DecodeState:
    """Incremental decoding's state at len(index) rows: row i is old row index[i] (-1: a dummy)."""
    return _move_base(state, index)


@functools.partial(jax.jit, static_argnames=("cfg",))
def move_spec_rows(state: SpecState, index, cfg: SpecConfig) -> SpecState:
    """The speculative state at len(index) rows: row i is old row index[i] (-1: a dummy), every
    per-row leaf moved with it, shared drafter state (the recycling table) kept."""
    src = jnp.maximum(index, 0)
    drafters = tuple(take_rows(s, src) if per_row(d) else s for d, s in zip(cfg.drafters, state.drafters))
    hits, credit = take_rows((state.hits, state.credit), src)
    return SpecState(base=_move_base(state.base, index), drafters=drafters, hits=hits, credit=credit)


def move_index(rows: list[int], tier: int) -> np.ndarray:
    """[tier] int32: the kept rows in order, then -1 (dummies)."""
    if len(rows) > tier:
        raise ValueError(f"{len(rows)} rows do not fit a tier of {tier}")
    index = np.full(tier, -1, np.int32)
    index[:len(rows)] = rows
    return index
