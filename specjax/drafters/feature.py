"""The `feature` drafter: an EAGLE-style feature SSM (specjax.feature.model) drafting a token tree from
the LLM's own features.

The drafter's cache holds one entry per committed position i < P (P = root slot, the root tokens[b, P]
not yet run by the LLM): the pair (f_i, x_{i+1}) of the LLM's fused features at i and its embedding of
the next token, at RoPE position i, cache slot i. Its output o_i gives (logits over the draft
vocabulary of V' tokens, mapped to the LLM's ids by d2t [V']) the token after x_{i+1}.

One step (propose, then update once the LLM has verified the merged tree):

  1. catch-up (width W = M + 1, M the merged tree's depth): the pairs the LLM committed last step
     (features at the accepted tree nodes, the accepted tokens and the bonus; at most W) run through
     the drafter at slots start .. P - 1, which leaves its cache valid below P and gives o_{P-1};
  2. level 1: the root's children are the top-k (greedy / deterministic) or k samples (stochastic,
     their distribution q scattered over the LLM's vocabulary through d2t) of logits(o_{P-1});
     level d = 1 .. m-1: each node of depth d that gets children (every node, or with a frontier F
     the F of highest path probability: EAGLE-2's dynamic tree) runs as an entry (g = its parent's
     output, emb = its token's LLM embedding, RoPE position P + d - 1) at the next run slot P + r
     (r = 0, 1, .. in level order), seeing the slots < P and its ancestors-or-self only; its output's
     logits give its children. Leaves are never run.
  3. update (no model forward): keeps this step's committed pairs for the next catch-up.

Drafter slots P .. P + R - 1 (R = the nodes run, levels 1 .. m-1) are scratch; the cache has S + R
slots (S = the LLM's) so a tree drafted near the end of the LLM's cache still fits.

The catch-up runs at the start of propose, not in update: update gets no params (the drafter
interface), and this keeps the state's invariant the SSM drafter's (cache valid below `start`,
o = o_{start-1}, the pending pairs at start .. start + count - 1 = P - 1), which the prefill sets with
count 0. The pending pairs cost [B, W, F] floats of state.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from specjax import model, sampling, skinny
from specjax import tree as tree_lib
from specjax.decode_state import causal_mask
from specjax.drafters import acceptance
from specjax.drafters.base import Proposal, Topology, expansion_topology, path_scores
from specjax.feature import model as fm


@dataclasses.dataclass(frozen=True)
class FeatureSSM:
    """A loaded feature SSM: params (float32, or packed for the CPU kernel), its config and d2t [V']."""

    params: dict
    cfg: fm.FeatureConfig
    d2t: jax.Array


def load(directory: str | Path, llm, fingerprint: bool = True) -> FeatureSSM:
    """The feature SSM saved at `directory`, refused (FeatureSSMError naming the mismatch) unless it
    was made for this LLM (llm: a LoadedModel). fingerprint: also compare the LLM's config hash with
    the one it was trained on (off for an LLM loaded onto a mesh, whose config may repeat KV heads)."""
    from specjax.feature import data

    params, cfg, d2t = fm.load(directory, llm.cfg, data.llm_fingerprint(llm.cfg) if fingerprint else None)
    return FeatureSSM(params=params, cfg=cfg, d2t=jnp.asarray(d2t, jnp.int32))


DRAFT_WEIGHT_DTYPE = "bfloat16"


def pack(fs: FeatureSSM, weight_dtype=None) -> FeatureSSM:
    """Every weight matmul of the drafter packed for the CPU kernel (specjax.skinny); unchanged when
    the kernel is unavailable or the params are not on CPU.

    weight_dtype None: bfloat16 (DRAFT_WEIGHT_DTYPE). A draft step reads every weight of the drafter
    (its 4096-token head four times a step in the default chain), so half the bytes is ~0.6x the time;
    a drafter's precision only moves which tokens it proposes, never what the LLM accepts (measured on
    the shipped one: held-out agreement 0.3846 vs 0.3843 with float32 weights)."""
    if not skinny.available() or not skinny.on_cpu(fs.params) or skinny.is_packed(fs.params):
        return fs
    weight_dtype = weight_dtype or DRAFT_WEIGHT_DTYPE
    params = skinny.pack_params(fs.params, fs.cfg.layer, weight_dtype)
    params = dict(params, **{n: skinny.pack(np.asarray(fs.params[n]), weight_dtype) for n in ("fc", "inp", "head")})
    return dataclasses.replace(fs, params=params)


def replicate(fs: FeatureSSM, mesh) -> FeatureSSM:
    """Every leaf replicated over the mesh (drafters are small)."""
    from jax.sharding import NamedSharding, PartitionSpec

    from specjax import sharding

    put = lambda x: sharding.put(x, NamedSharding(mesh, PartitionSpec()))
    return dataclasses.replace(fs, params=jax.tree.map(put, fs.params), d2t=put(fs.d2t))


def engine_params(fs: FeatureSSM, llm_params) -> dict:
    """What the loop passes the drafter: its params, d2t and the LLM's embedding table (the engine's
    own leaf, a PackedWeight when the CPU kernel is on: not a copy)."""
    return {"ssm": fs.params, "d2t": fs.d2t, "embed": llm_params["embed"]}


# ----------------------------------------------------------------------------- pure helpers


def embed(table, tokens):
    """The LLM's embedding of tokens [...] -> [..., D] (a LLaMA-family LLM: no position table or
    projection; a packed tied table is read from its head's columns, as model.embed does)."""
    if isinstance(table, skinny.PackedWeight):
        return table.columns(tokens)
    return jnp.take(table, tokens, axis=0)


def select_taps(feats, all_taps: tuple[int, ...], taps: tuple[int, ...], width: int):
    """feats [..., len(all_taps) * D] (the LLM's residual streams of all_taps, layer order) -> the
    drafter's own taps [..., len(taps) * D], in layer order (as model.forward_features gives them)."""
    mine = tuple(sorted(taps))
    if mine == tuple(all_taps):
        return feats
    idx = [all_taps.index(t) for t in mine]
    return jnp.concatenate([feats[..., i * width:(i + 1) * width] for i in idx], axis=-1)


def num_run(expansion: tuple[int, ...], frontier: int | None = None) -> int:
    """R: tree nodes run through the drafter per step (each level's frontier, every level but the last)."""
    topo = tree_lib.ssm_topology(expansion, frontier)
    return sum(_frontier_width(topo, i, frontier) for i in range(1, len(expansion)))


def _frontier_width(topo, level: int, frontier: int | None) -> int:
    """How many nodes of `level` get children (run through the drafter)."""
    w = int(topo.level_stop[level] - topo.level_start[level])
    return w if frontier is None else min(w, frontier)


def frontier_mask(anc, root_slot, num_slots: int):
    """[B, f, Sd]: frontier node i sees the committed slots < P and the run slots P + r of its
    ancestors-or-self (anc [B, f, R] bool)."""
    R = anc.shape[-1]
    r = jnp.arange(num_slots)[None, :] - root_slot[:, None]  # [B, Sd]: run slot of slot s
    in_run = ((r >= 0) & (r < R))[:, None, :]
    seen = jnp.take_along_axis(anc, jnp.broadcast_to(jnp.clip(r, 0, max(R - 1, 0))[:, None, :],
                                                      anc.shape[:2] + (num_slots,)), axis=2)
    return (r < 0)[:, None, :] | (in_run & seen)


def windowed(mask, positions, window: int | None):
    """mask [B, T, Sd] limited to the window: slot s (the drafter's cache holds position s at slot s) is
    seen from position p only if s > p - window. None: unchanged. A tree node's run slot (P + r, past
    the committed ones) always passes: its ancestors in the run are at most the tree's depth back, which
    Config keeps below the window."""
    if window is None:
        return mask
    return mask & (jnp.arange(mask.shape[-1])[None, None, :] > positions[:, :, None] - window)


# ----------------------------------------------------------------------------- the drafter interface


@dataclasses.dataclass(frozen=True)
class Config:
    """A feature SSM expanding <k_1..k_m> (SpecInfer's expansion over its draft vocabulary).
    rates: per depth, per rank conditional acceptance (see drafters.acceptance), the static path
    scores of sampled nodes (and of every node with confidence False).
    frontier F: only F nodes of each level get k_i children (tree.ssm_topology), so level i has
    min(F, w_{i-1}) * k_i nodes and F rows run per level: the F nodes of highest path probability,
    picked at run time per row (EAGLE-2's dynamic tree; the proposal carries its parents). Such a
    tree is top-k (deterministic) under stochastic decoding too: a sampled node's place must not
    depend on a draw, and here every place depends on the drafter's probabilities of the nodes above
    (deterministic candidates keep multi-step speculative sampling exact whatever chose them).
    None: every node gets children.
    confidence: top-k (deterministic) nodes are scored by the drafter's own probability of their path,
    the product of its softmax over the draft vocabulary along the path (EAGLE-2's dynamic tree: the
    budget then keeps a deep chain where the drafter is sure and spreads where it is not). Measured
    calibrated on held-out data: a top-1 token drafted with p in [0.4, 0.5) is the LLM's in 53% of
    positions, p in [0.8, 0.9) in 91% (docs/benchmarks.md)."""

    model: fm.FeatureConfig
    expansion: tuple[int, ...] = (3, 1, 1, 1)
    rates: tuple = ()
    confidence: bool = True  # deterministic nodes scored by the drafter's own path probability (EAGLE-2)
    frontier: int | None = None  # EAGLE-2's dynamic tree: only F nodes of a level get children
    window: int | None = None  # positions a query attends to: its own and the window - 1 before (None: all)
    kind: str = "feature"

    def __post_init__(self):
        tree_lib.ssm_topology(self.expansion, self.frontier)  # validates both (TreeConfigError names the problem)
        if self.dynamic and not self.confidence:
            raise ValueError(f"feature tree {self.expansion} with frontier {self.frontier} picks its nodes by the "
                             "drafter's own path probability, which must then also score them: confidence=True")
        if self.window is not None and (isinstance(self.window, bool) or not isinstance(self.window, int)
                                        or self.window <= len(self.expansion)):
            raise ValueError(f"feature window must be an int above the tree's depth {len(self.expansion)} (positions "
                             f"attended to) or None, got {self.window!r}")
        if max(self.expansion) > self.model.draft_vocab:
            raise ValueError(f"feature expansion {self.expansion} asks for more children than the "
                             f"{self.model.draft_vocab} tokens of the draft vocabulary")

    @property
    def name(self) -> str:
        return "feature"

    @property
    def topology(self) -> Topology:
        return expansion_topology(self.expansion, self.frontier)

    @property
    def dynamic(self) -> bool:
        """Whether the frontier leaves some node that the expansion would expand without children (the
        tree's parents then move per row and step)."""
        if self.frontier is None:
            return False
        topo = tree_lib.ssm_topology(self.expansion, self.frontier)
        return any(_frontier_width(topo, i, self.frontier) < int(topo.level_stop[i] - topo.level_start[i])
                   for i in range(1, len(self.expansion)))

    @property
    def sampled(self) -> bool:
        """Under stochastic decoding with sampled children, nodes are draws from q; a dynamic tree
        drafts top-k nodes always."""
        return not self.dynamic

    @property
    def taps(self) -> tuple[int, ...]:
        return tuple(sorted(self.model.taps))


@flax.struct.dataclass
class State:
    """Shapes: B rows, Sd = S + R drafter slots, W = M + 1 pending pairs, F = len(taps) * D."""

    cache: model.KVCache  # the drafter's own cache, [B, K, Sd, A] per layer; valid below `start`
    o: jax.Array  # [B, D] float32: o_{start-1}, the output of the last entry run (zeros: none)
    feats: jax.Array  # [B, W, F]: pending pairs' LLM features (positions start + d)
    next: jax.Array  # [B, W] int32: pending pairs' next tokens
    count: jax.Array  # [B] int32: pending pairs (0 .. W)
    start: jax.Array  # [B] int32: position of the first pending pair


@functools.partial(jax.jit, static_argnames=("cfg", "all_taps", "window"), donate_argnames=("cache",))
def prefill(params, cache: model.KVCache, feats, tokens, length, cfg: fm.FeatureConfig, all_taps: tuple,
            window: int | None = None):
    """The drafter's entries for every prefilled position i < P = length[b]: pairs (f_i, x_{i+1}).

    feats [B, T, F_all] (the LLM prefill's features at positions 0 .. T-1, T >= max P), tokens [B, S].
    With a window W only the last R = layers x W positions run, [P - R, P): a query from P - 1 on sees
    slots > its position - W, and a slot's K/V in layer l depend on the inputs of the (l - 1)(W - 1)
    positions before it, so nothing before P - R is ever read (a long prompt costs R rows, not P).
    Returns (cache, o_{P-1} [B, D], zeros where P = 0)."""
    B, T, _ = feats.shape
    S, Sd = tokens.shape[1], cache.num_slots
    R = T if window is None else min(T, window * cfg.layer.num_layers)
    start = jnp.zeros((B,), jnp.int32) if R == T else jnp.maximum(length - R, 0)
    t = start[:, None] + jnp.arange(R)[None, :]  # [B, R] positions run
    real = t < length[:, None]
    if R < T:
        feats = jnp.take_along_axis(feats, t[:, :, None], axis=1)
    nxt = jnp.take_along_axis(tokens, jnp.minimum(t + 1, S - 1), axis=1)
    g = fm.fuse(params["ssm"], select_taps(feats, all_taps, cfg.taps, cfg.llm_hidden))
    o, cache = fm.step(params["ssm"], cfg, g, embed(params["embed"], nxt), t, cache,
                       jnp.where(real, t, Sd), windowed(causal_mask(t, Sd), t, window))
    last = jnp.take_along_axis(o, jnp.clip(length - 1 - start, 0, R - 1)[:, None, None], axis=1)[:, 0]
    return cache, jnp.where((length > 0)[:, None], last, 0.0).astype(jnp.float32)


def init_state(ctx, cfg: Config) -> State:
    """A fresh drafter cache prefilled from the LLM prefill's features (ctx.features)."""
    from specjax import sharding

    base = ctx.base
    B, S = base.tokens.shape
    if ctx.features is None:
        raise ValueError("the feature drafter needs the LLM prefill's features (InitContext.features)")
    Sd = S + num_run(cfg.expansion, cfg.frontier)
    cache = sharding.new_cache(cfg.model.layer, B, Sd, jnp.float32, ctx.mesh, sharding.SSM_SPLIT)
    cache, o = ctx.run("feature_prefill", prefill, (ctx.params, cache, ctx.features, base.tokens, base.length),
                       dict(cfg=cfg.model, all_taps=tuple(ctx.feature_taps), window=cfg.window))
    W = ctx.max_depth + 1
    F = cfg.model.feature_width
    return State(cache=cache, o=o, feats=jnp.zeros((B, W, F), ctx.features.dtype), next=jnp.zeros((B, W), jnp.int32),
                 count=jnp.zeros((B,), jnp.int32), start=jnp.array(base.length, copy=True))


def catch_up(params, cfg: Config, state: State, running):
    """Runs the pending pairs through the drafter (rows not running write nothing and keep o).
    Returns (cache, o [B, D]): o_{start + count - 1} = o_{P-1}."""
    fcfg = cfg.model
    B, W, _ = state.feats.shape
    Sd = state.cache.num_slots
    d = jnp.arange(W)[None, :]
    pos = state.start[:, None] + d  # [B, W]
    real = (d < state.count[:, None]) & running[:, None]
    g = fm.fuse(params["ssm"], state.feats)
    o, cache = fm.step(params["ssm"], fcfg, g, embed(params["embed"], state.next), pos, state.cache,
                       jnp.where(real, pos, Sd), windowed(causal_mask(pos, Sd), pos, cfg.window))
    last = jnp.take_along_axis(o, jnp.maximum(state.count - 1, 0)[:, None, None], axis=1)[:, 0]
    return cache, jnp.where((real.any(-1))[:, None], last.astype(jnp.float32), state.o)


def propose(key, params, state: State, cfg: Config, base, sampling_cfg, stochastic: bool):
    """The drafter's tree below the root. Scores: static path scores for sampled nodes (they must not be
    ranked by their own draws); the drafter's path probability for top-k nodes (cfg.confidence). q
    (stochastic): the draft distribution over the LLM's vocabulary [B, n, V]. Parents: per row when a
    top-k tree picks its frontier (cfg.frontier), else the topology's.

    Level by level: the frontier (f nodes, outputs out [B, f, D]) gives k children each (w = f * k
    nodes, the c-th child of frontier node c // k); the f' nodes of the level that get children are
    run as entries (g = their parent's output, emb = their token's LLM embedding, RoPE position
    P + level - 1) at the next f' run slots P + r, each seeing the slots < P and its ancestors' run
    slots (anc [B, f', R])."""
    stochastic = stochastic and cfg.sampled
    fcfg = cfg.model
    topo = tree_lib.ssm_topology(cfg.expansion, cfg.frontier)
    P = base.length
    running = ~base.done
    B, m, n = P.shape[0], len(cfg.expansion), topo.num_candidates
    V = fcfg.llm_vocab
    R = num_run(cfg.expansion, cfg.frontier)
    d2t = params["d2t"]
    cache, o_root = catch_up(params, cfg, state, running)
    Sd = cache.num_slots
    out = o_root[:, None, :]  # [B, f, D]: the frontier's outputs
    front = jnp.full((B, 1), -1, jnp.int32)  # [B, f]: the frontier's local node indices (-1: the root)
    front_logp = jnp.zeros((B, 1), jnp.float32)  # [B, f]: its log path probability under the drafter
    anc = jnp.zeros((B, 1, R), bool)  # [B, f, R]: its ancestors-or-self among the run slots
    tokens = jnp.zeros((B, n), jnp.int32)
    parents = jnp.full((B, n), -1, jnp.int32)
    qs, logps = [], []  # logps: per level, each node's log path probability [B, w]
    run_off = 0
    for level in range(1, m + 1):
        k = cfg.expansion[level - 1]
        start, stop = int(topo.level_start[level]), int(topo.level_stop[level])
        f = out.shape[1]
        pf = jnp.repeat(jnp.arange(f), k)  # [w]: each child's parent's place in the frontier
        lg = fm.logits(params["ssm"], fcfg, out)  # [B, f, V']
        if stochastic:
            key, sub = sampling.split_rows(sampling.as_row_keys(key, B), 2)  # one key per row [B, 2]
            probs = sampling.probs(lg, sampling_cfg)  # [B, f, V']
            draft = sampling.draw_rows(sub, probs, k).reshape(B, f * k)  # [B, f, k] draws
            qs.append(jnp.zeros((B, f * k, V), jnp.float32).at[:, :, d2t].add(probs[:, pf]))
        else:
            val, top = jax.lax.top_k(jax.nn.log_softmax(lg.astype(jnp.float32), axis=-1), k)  # [B, f, k]
            draft = top.reshape(B, f * k)
            logps.append((front_logp[:, :, None] + val).reshape(B, f * k))
        child = d2t[draft].astype(jnp.int32)  # [B, w] LLM ids
        tokens = tokens.at[:, start - 1:stop - 1].set(child)
        parents = parents.at[:, start - 1:stop - 1].set(front[:, pf])
        if level == m:
            break
        # The level's frontier: its f' most probable nodes (all of them without a frontier).
        f2 = _frontier_width(topo, level, cfg.frontier)
        if f2 < f * k:
            _, sel = jax.lax.top_k(logps[-1], f2)  # [B, f'] (cfg.dynamic: the parents are then per row)
        else:
            sel = jnp.broadcast_to(jnp.arange(f2), (B, f2))
        par = jnp.take_along_axis(jnp.broadcast_to(pf, (B, f * k)), sel, axis=1)  # [B, f'] place in the old frontier
        own = jax.nn.one_hot(run_off + jnp.arange(f2), R, dtype=bool)  # [f', R]
        anc = jnp.take_along_axis(anc, par[:, :, None], axis=1) | own[None]
        run_child = jnp.take_along_axis(child, sel, axis=1)
        g = jnp.take_along_axis(out, par[:, :, None], axis=1)
        positions = jnp.broadcast_to(P[:, None] + (level - 1), run_child.shape)
        slots = jnp.where(running[:, None], P[:, None] + run_off + jnp.arange(f2)[None, :], Sd)
        out, cache = fm.step(params["ssm"], fcfg, g, embed(params["embed"], run_child), positions, cache, slots,
                             windowed(frontier_mask(anc, P, Sd), positions, cfg.window))
        front = (start - 1 + sel).astype(jnp.int32)
        if logps:
            front_logp = jnp.take_along_axis(logps[-1], sel, axis=1)
        run_off += f2
    if logps and cfg.confidence:  # deterministic nodes: a score may depend on the context (drafters.merge)
        scores = jnp.exp(jnp.concatenate(logps, axis=1))
    else:
        scores = path_scores(cfg.topology, acceptance.rate_fn(cfg.rates or acceptance.PRIORS[cfg.kind]))
    prop = Proposal(tokens=tokens, valid=jnp.ones((B, n), bool), score=jnp.broadcast_to(jnp.asarray(scores), (B, n)),
                    q=jnp.concatenate(qs, axis=1) if stochastic else None, parents=parents if cfg.dynamic else None)
    done = ~running  # consumed pending pairs; rows not running keep everything
    return prop, State(cache=cache, o=o_root, feats=state.feats, next=state.next,
                       count=jnp.where(done, state.count, 0), start=jnp.where(done, state.start, P))


def update(state: State, cfg: Config, step) -> State:
    """Keeps the step's committed pairs for the next catch-up: (LLM features at accepted node path[d],
    new_tokens[d]) at positions P + d, d = 0 .. num_accepted (a row that stopped mid-step is done and
    never drafts again). Rows not running keep their state."""
    feats = select_taps(step.features, step.taps, cfg.taps, cfg.model.llm_hidden)  # [B, N, F]
    feats = jnp.take_along_axis(feats, jnp.maximum(step.path, 0)[:, :, None], axis=1)  # [B, W, F]
    r = step.running
    keep = lambda new, old: jnp.where(r.reshape(r.shape + (1,) * (old.ndim - 1)), new.astype(old.dtype), old)
    return state.replace(feats=keep(feats, state.feats), next=keep(step.new_tokens, state.next),
                         count=keep(step.num_accepted + 1, state.count), start=keep(step.root_slot, state.start))


def insert_row(state: State, row: State, b, cfg: Config) -> State:
    """A new request in row b: its freshly prefilled drafter state replaces the old row's."""
    from specjax.drafters.base import put_row

    return put_row(state, row, b)


def shard_state(state: State, cfg: Config, mesh) -> State:
    from specjax import sharding

    if mesh is None:
        return state
    return State(cache=sharding.shard_cache(state.cache, cfg.model.layer, mesh, sharding.SSM_SPLIT),
                 **{f: sharding.shard_rows(getattr(state, f), mesh) for f in ("o", "feats", "next", "count", "start")})
