"""The `recycle` drafter: token recycling (Luo et al. 2024, "Turning Trash into Treasure").

The LLM's own logits are a free source of drafts: at every position it has scored, its top-k tokens
are likely successors of that position's token the next time it occurs. The state is a table

    table [V, k] int32    table[t] = the top-k tokens the LLM gave after the last occurrence of t
                          that it scored (-1: never seen)

written from the prefill (every prompt position) and, every step, from every verified tree node,
accepted or not (node j's token -> top-k of the LLM's logits at j). The table lives in the engine
and is kept across steps, requests and batches; it can be saved and loaded (with the vocabulary and
the LLM it was built from checked).

Drafting is gathers only, no model forward: over a static expansion <k_1..k_m> (k_i <= k), the
r-th child of a node with token t is table[t, r]; an empty entry proposes nothing there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax import tree as tree_lib
from specjax.drafters import acceptance
from specjax.drafters.base import Proposal, Topology, expansion_topology, path_scores

DEFAULT_K = 8
PER_ROW = False  # the table is shared by every row (specjax.row_tiers leaves it)


class RecycleTableError(ValueError):
    """A saved recycling table that does not belong to this LLM."""


@dataclasses.dataclass(frozen=True)
class Config:
    vocab_size: int
    expansion: tuple[int, ...] = (3, 1, 1, 1)
    k: int = DEFAULT_K
    rates: tuple = ()
    kind: str = "recycle"

    def __post_init__(self):
        if max(self.expansion) > self.k:
            raise ValueError(f"recycle expansion {self.expansion} asks for more than the table's k={self.k} "
                             "successors per token")

    @property
    def name(self) -> str:
        return "recycle"

    @property
    def topology(self) -> Topology:
        return expansion_topology(self.expansion)

    @property
    def sampled(self) -> bool:
        return False  # deterministic: one-hot q


@flax.struct.dataclass
class State:
    table: jax.Array  # [V, k] int32, -1 = empty


def empty_table(vocab_size: int, k: int = DEFAULT_K) -> jax.Array:
    return jnp.full((vocab_size, k), -1, jnp.int32)


def write(table, tokens, successors, keep):
    """table [V, k] with table[tokens[i]] = successors[i] where keep[i]. tokens [M], successors
    [M, k], keep [M] bool (dropped writes go past the table)."""
    V = table.shape[0]
    rows = jnp.where(keep, tokens, V)
    return table.at[rows].set(successors.astype(jnp.int32), mode="drop")


@jax.jit
def _write_prefill(table, tokens, successors, prompt_len):
    """Prefill positions t = 0..P-2 of each row: table[tokens[t]] = top-k at t."""
    B, T, k = successors.shape
    keep = jnp.arange(T)[None, :] < (prompt_len - 1)[:, None]
    return write(table, tokens[:, :T].reshape(-1), successors.reshape(-1, k), keep.reshape(-1))


def init_state(ctx, cfg: Config) -> State:
    table = ctx.persistent.get("recycle_table")
    if table is None or table.shape != (cfg.vocab_size, cfg.k):
        table = empty_table(cfg.vocab_size, cfg.k)
    if ctx.successors is not None:
        table = _write_prefill(table, ctx.base.tokens, ctx.successors[..., :cfg.k], ctx.base.prompt_len)
    return State(table=table)


def propose(key, params, state: State, cfg: Config, base, sampling_cfg, stochastic: bool):
    del key, params, sampling_cfg, stochastic
    topo = tree_lib.ssm_topology(cfg.expansion)
    B = base.tokens.shape[0]
    root = jnp.take_along_axis(base.tokens, base.length[:, None], axis=1)[:, 0]
    n1 = topo.num_candidates + 1
    tokens = jnp.zeros((B, n1), jnp.int32).at[:, 0].set(root)
    for level in range(1, len(cfg.expansion) + 1):  # static: gathers level by level
        start, stop = int(topo.level_start[level]), int(topo.level_stop[level])
        par = jnp.asarray(topo.parents[start:stop])
        rank = jnp.asarray(topo.children_rank[start:stop])
        parent_tok = jnp.maximum(tokens[:, par], 0)  # an empty parent's children are dropped anyway
        tokens = tokens.at[:, start:stop].set(state.table[parent_tok, rank[None, :]])
    cand = tokens[:, 1:]
    scores = path_scores(cfg.topology, acceptance.rate_fn(cfg.rates or acceptance.PRIORS[cfg.kind]))
    prop = Proposal(tokens=jnp.maximum(cand, 0), valid=cand >= 0,
                    score=jnp.broadcast_to(jnp.asarray(scores), cand.shape))
    return prop, state


def update(state: State, cfg: Config, step) -> State:
    """Every verified node (valid, of a running row) writes its token's row: the LLM's top-k there."""
    B, N, V = step.logits.shape
    _, top = jax.lax.top_k(step.logits, cfg.k)  # [B, N, k]
    keep = step.tree.valid & step.running[:, None]
    return State(table=write(state.table, step.tree.tokens.reshape(-1), top.reshape(B * N, cfg.k),
                             keep.reshape(-1)))


def insert_row(state: State, row: State, b, cfg: Config) -> State:
    """The table is shared by every row and stays: `row` was initialised from this batch's table
    (the batcher hands it over as the persistent table), plus the new prompt's prefill successors."""
    del state, b, cfg
    return row


def shard_state(state: State, cfg: Config, mesh) -> State:
    from specjax import sharding

    if mesh is None:
        return state
    from jax.sharding import NamedSharding, PartitionSpec

    return State(table=sharding.put(state.table, NamedSharding(mesh, PartitionSpec())))


# ----------------------------------------------------------------------------- save / load


def vocab_fingerprint(llm) -> str:
    """Names the LLM a table belongs to: its vocabulary (the tokenizer's token -> id map when it has
    one, else the vocabulary size) and its config."""
    h = hashlib.sha256()
    tok = llm.tokenizer
    if tok is not None:
        vocab = getattr(tok, "hf", tok).get_vocab()
        h.update(json.dumps(sorted(vocab.items())).encode())
    h.update(str(llm.cfg.vocab_size).encode())
    return h.hexdigest()


def model_fingerprint(llm) -> str:
    """The LLM's config and a sample of its weights (its first 64 embedding rows): two checkpoints of
    one architecture differ here. Read the same way whether the weights are packed for the CPU kernel
    or not, and rounded to bf16 so the kernel's bf16 weight storage names the same model."""
    from specjax import skinny

    h = hashlib.sha256(llm.cfg.to_json().encode())
    table, ids = llm.params["embed"], jnp.arange(64)
    rows = table.columns(ids) if isinstance(table, skinny.PackedWeight) else jnp.take(table, ids, axis=0)
    h.update(np.asarray(jax.device_get(rows.astype(jnp.bfloat16).astype(jnp.float32))).tobytes())
    return h.hexdigest()


def save(path, table, llm) -> None:
    table = np.asarray(jax.device_get(table), np.int32)
    path = Path(path)
    meta = dict(vocab=vocab_fingerprint(llm), model=model_fingerprint(llm), vocab_size=int(table.shape[0]),
                k=int(table.shape[1]))
    np.savez_compressed(path, table=table, meta=json.dumps(meta))


def load(path, llm) -> jax.Array:
    """The table saved at `path`, refused unless it was built for this LLM's vocabulary and model."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recycling table {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            table, meta = f["table"], json.loads(str(f["meta"]))
    except (ValueError, KeyError, OSError) as e:
        raise RecycleTableError(f"{path} is not a specjax recycling table ({e})") from None
    if meta.get("vocab_size") != llm.cfg.vocab_size or table.shape[0] != llm.cfg.vocab_size:
        raise RecycleTableError(f"recycling table {path} is for a vocabulary of {meta.get('vocab_size')} tokens, "
                                f"this LLM has {llm.cfg.vocab_size}")
    if meta.get("vocab") != vocab_fingerprint(llm):
        raise RecycleTableError(f"recycling table {path} was built with a different tokenizer (same size, "
                                "different tokens): its successors would be wrong for this LLM")
    if meta.get("model") != model_fingerprint(llm):
        raise RecycleTableError(f"recycling table {path} was built from a different LLM: its successors are "
                                "that model's predictions, not this one's")
    if table.dtype.kind not in "iu" or table.ndim != 2 or table.min() < -1 or table.max() >= llm.cfg.vocab_size:
        raise RecycleTableError(f"recycling table {path} holds token ids outside [-1, {llm.cfg.vocab_size})")
    return jnp.asarray(table, jnp.int32)
