"""The `lookup` drafter: prompt lookup (n-gram) decoding, per request, inside the loop.

The committed tokens of request b are tokens[b, 0..P] (prompt, output so far, the root at P). Its
suffix n-gram tokens[P-n+1..P] is looked for earlier in the same row, for n = max_ngram down to 1;
the most recent earlier occurrence of the longest suffix that occurs proposes the tokens that
followed it, as a chain of `length` nodes (only tokens already committed: a continuation running
into the suffix itself is cut there). No match: nothing proposed. Stateless: it reads the token
buffer. Static shapes: [B, n, S] comparisons for each n.

Scores: per depth and matched n (acceptance.rates('lookup'), measured by `measure_rates` on the
LLM's own outputs), so a long match outranks a weak drafter's branches under a budget, and a
one-token match ranks low. The matched n is the drafter's confidence: on the default LLM's held-out
greedy outputs a one-token match's first token is right 22% of the time, an 8-gram's 94%, and
once a copy is right its next tokens are right 60-97% of the time (docs/benchmarks.md); so the
defaults look for matches of up to 8 tokens and propose up to 8.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax.numpy as jnp
import numpy as np

from specjax.drafters.base import Proposal, Topology, chain_topology

PER_ROW = True  # no leaves: a row's history is its row of the token buffer


@dataclasses.dataclass(frozen=True)
class Config:
    length: int = 4
    max_ngram: int = 3
    rates: tuple = ()
    kind: str = "lookup"

    def __post_init__(self):
        if self.length < 1 or self.max_ngram < 1:
            raise ValueError(f"lookup needs length >= 1 and max_ngram >= 1, got {self.length}, {self.max_ngram}")

    @property
    def name(self) -> str:
        return "lookup"

    @property
    def topology(self) -> Topology:
        return chain_topology(self.length)

    @property
    def sampled(self) -> bool:
        return False


@flax.struct.dataclass
class State:
    pass


def init_state(ctx, cfg: Config) -> State:
    return State()


def find(tokens, root_slot, max_ngram: int):
    """Longest suffix match. tokens [B, S], root_slot [B] = P.

    Returns (start [B]: slot of the first continuation token (match end + 1), n [B]: matched length,
    0 when nothing matched)."""
    B, S = tokens.shape
    s = jnp.arange(S)[None, :]  # candidate match end slot e < P
    P = root_slot[:, None]
    best_start = jnp.zeros((B,), jnp.int32)
    best_n = jnp.zeros((B,), jnp.int32)
    ok = jnp.ones((B, S), bool)
    for n in range(1, max_ngram + 1):  # ok: the n-gram ending at e equals the suffix n-gram
        t = n - 1
        suffix_tok = jnp.take_along_axis(tokens, jnp.maximum(P - t, 0), axis=1)  # [B, 1]
        here = jnp.take_along_axis(tokens, jnp.clip(s - t, 0, S - 1), axis=1)  # [B, S]
        ok = ok & (here == suffix_tok) & (s - t >= 0) & (P - t >= 0)
        match = ok & (s < P)
        found = match.any(-1)
        last = (S - 1 - jnp.argmax(match[:, ::-1], axis=-1)).astype(jnp.int32)  # most recent end
        best_start = jnp.where(found, last + 1, best_start)
        best_n = jnp.where(found, n, best_n)
    return best_start, best_n


def propose(key, params, state: State, cfg: Config, base, sampling_cfg, stochastic: bool):
    del key, params, sampling_cfg, stochastic
    B, S = base.tokens.shape
    P = base.length
    start, n = find(base.tokens, P, cfg.max_ngram)
    i = jnp.arange(cfg.length)[None, :]
    slot = start[:, None] + i  # [B, L]
    tokens = jnp.take_along_axis(base.tokens, jnp.minimum(slot, S - 1), axis=1)
    valid = (n[:, None] > 0) & (slot <= P[:, None])
    from specjax.drafters import acceptance

    rate = acceptance.rate_fn(cfg.rates or acceptance.PRIORS[cfg.kind])
    table = np.asarray([[rate(d, m) for m in range(cfg.max_ngram)] for d in range(1, cfg.length + 1)],
                       np.float32)  # [L, max_ngram]
    cum = np.cumprod(np.clip(table, 1e-6, 1.0), axis=0)  # path score by depth, per matched n
    score = jnp.asarray(cum)[:, jnp.maximum(n - 1, 0)].T  # [B, L]
    return Proposal(tokens=tokens, valid=valid, score=score), state


def match_host(seq, P: int, max_ngram: int) -> tuple[int, int]:
    """`find` for one committed sequence seq[0..P] on the host: (first continuation slot, matched n),
    (0, 0) when the root token occurs nowhere earlier."""
    start = n_best = 0
    ends = np.arange(P)  # candidate match ends e < P where the n-grams so far matched
    for n in range(1, max_ngram + 1):
        if P - n + 1 < 0:
            break
        ends = ends[(ends - n + 1 >= 0)]
        ends = ends[seq[ends - n + 1] == seq[P - n + 1]]
        if not len(ends):
            break
        start, n_best = int(ends[-1]) + 1, n
    return start, n_best


def measure_rates(sequences, first_roots, cfg: Config, min_tried: int = 20) -> list[list[float]]:
    """Calibrated rates[d-1][n-1] = P(the depth-d node is the LLM's token | its parent was, matched n),
    from committed greedy sequences (the LLM's own outputs): at every root P from first_roots[i] on,
    the chain `find` proposes is compared with what the LLM went on to write. Cells tried fewer than
    min_tried times keep the prior (acceptance.PRIORS). Host side (scripts/measure_acceptance.py)."""
    from specjax.drafters import acceptance

    tried = np.zeros((cfg.length, cfg.max_ngram))
    hit = np.zeros_like(tried)
    for seq, first in zip(sequences, first_roots):
        seq = np.asarray(seq)
        for P in range(first, len(seq) - 1):
            start, n = match_host(seq, P, cfg.max_ngram)
            for d in range(min(cfg.length, len(seq) - 1 - P, P + 1 - start) if n else 0):
                tried[d, n - 1] += 1
                if seq[start + d] != seq[P + 1 + d]:
                    break
                hit[d, n - 1] += 1
    prior = acceptance.rate_fn(acceptance.PRIORS["lookup"])
    return [[round(float(hit[d, m] / tried[d, m]), 4) if tried[d, m] >= min_tried else prior(d + 1, m)
             for m in range(cfg.max_ngram)] for d in range(cfg.length)]


def update(state: State, cfg: Config, step) -> State:
    return state


def insert_row(state: State, row: State, b, cfg: Config) -> State:
    """Stateless: a new request's history is its row of the token buffer."""
    return state


def shard_state(state: State, cfg: Config, mesh) -> State:
    return state
