"""Continuous batching: one static-shape batch of B rows whose finished rows take waiting requests.

    waiting requests -> a free row b: the prompt prefilled alone ([1, S]) and put into row b of the batch
                     -> the loop runs until some row finishes (or K steps) -> new tokens go out
                        (Request.on_tokens), finished rows hand back their results (on_done) and are free
                     -> again, until nothing runs and nothing waits

Shapes never change: B rows, S cache slots, R recorded steps, the tree budget. The row index and the
step count are traced, so requests coming and going never recompile. A free row is a finished row
(the loop leaves it alone). What a new request replaces in its row: the LLM cache, the token buffer
and the per-row counters (DecodeState), and every drafter's per-row state (drafters.*.insert_row: an
SSM's cache; the lookup drafter reads the token buffer; the recycling table is shared and stays).

Greedy output of a request does not depend on its neighbours (each row attends to its own slots
only), so it is the same as when the request runs alone. Sampling too: every row draws from its own
PRNG key, which a request brings (from Request.seed and Request.index: `generate`'s seed and the
prompt's position), so a sampled request's output depends on its seed alone, not on its row or
neighbours, and equals the static batches' (Engine.generate_*, same seed and index).

The batch's sampling config is static in the loop: requests with another config wait until the batch
drains (first come, first served), then the batch switches (one compile per config, cached).

Row tiers (row_tiers=True; specjax.row_tiers): the state is kept at the smallest of B's tiers
(1, 2, 4, .., B) that holds the active requests and those about to be admitted. Before admitting, the
batcher grows (active rows copied into a bigger state) at once, or shrinks (active rows gathered into
the first rows of a smaller one) once a smaller tier has sufficed for a few calls in a row with nothing
waiting (SHRINK_AFTER_CALLS: a row finishing just before the next request arrives moves nothing); row
numbers change, requests keep their rows' contents and their order. Each tier compiles its loop once,
so a lightly loaded batch computes one or two rows, not B: at its first use, all at once in
Batcher.precompile, or one executable at a time while the batcher is idle (precompile_when_idle and
compile_next: what `specjax serve` does by default, on its engine thread between polls).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import threading
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specjax import drafters as drafters_lib
from specjax import row_tiers as row_tiers_lib
from specjax import sharding
from specjax.chunked import FIRST_STEPS, TARGET_SECONDS, next_chunk
from specjax.decode_state import MAX_NEW_TOKENS, DecodeState
from specjax.drafters.base import put_row
from specjax.fallback import Watch
from specjax.engine import Engine, EngineError, GenerationResult
from specjax.incremental import STEP_ROOM as INCREMENTAL_ROOM
from specjax.incremental import incremental_step
from specjax.interrupt import Interrupted
from specjax import sampling as sampling_lib
from specjax.sampling import SamplingConfig
from specjax.speculative import SpecConfig, SpecState, spec_step

_STEPS = jax.ShapeDtypeStruct((), jnp.int32)
_ROW = jax.ShapeDtypeStruct((), jnp.int32)
# Row tiers shrink only after this many calls of the loop in a row that a smaller tier would have
# held (with nothing waiting): a client's next request usually comes within a round trip of its
# last answer, well inside one call (serve: ~0.1 s), so the batch does not shrink and grow back
# (two copies of the whole state, ~0.75 GB of LLM cache at 8 x 2048) in between; the price is at
# most this many calls at the larger tier. Idle polls count (serve polls every 0.05 s).
SHRINK_AFTER_CALLS = 4


# ----------------------------------------------------------------------------- jit side


def _until_a_row_finishes(step, done, state, max_steps):
    """Runs step until a row that was running has finished, nothing runs, or max_steps steps ran."""
    done0 = done(state)

    def cond(c):
        d = done(c[0])
        return jnp.any(~d) & ~jnp.any(d & ~done0) & (c[1] < max_steps)

    state, _ = jax.lax.while_loop(cond, lambda c: (step(c[0]), c[1] + 1), (state, jnp.zeros((), jnp.int32)))
    return state


@functools.partial(jax.jit, static_argnames=("cfg", "sampling_cfg", "eos_ids"), donate_argnames=("state",))
def incremental_until_finish(params, state: DecodeState, max_steps, cfg, sampling_cfg, eos_ids):
    """incremental.incremental_loop that also returns as soon as one row finishes."""
    return _until_a_row_finishes(lambda s: incremental_step(params, cfg, s, sampling_cfg, eos_ids),
                                 lambda s: s.done, state, max_steps)


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("state",))
def spec_until_finish(llm_params, drafter_params, state: SpecState, max_steps, cfg: SpecConfig):
    """speculative.spec_loop that also returns as soon as one row finishes."""
    return _until_a_row_finishes(lambda s: spec_step(llm_params, drafter_params, s, cfg),
                                 lambda s: s.base.done, state, max_steps)


def _put_decode_row(batch: DecodeState, row: DecodeState, b) -> DecodeState:
    """Row b of every per-row field (its PRNG key included) from the one-row state."""
    fields = {f: getattr(batch, f) for f in ("cache", "tokens", "length", "prompt_len", "max_new", "num_new",
                                              "finish", "steps", "emitted", "key")}
    rows = {f: getattr(row, f) for f in fields}
    return batch.replace(**put_row(fields, rows, b))


@functools.partial(jax.jit, donate_argnames=("batch",))
def insert_decode_row(batch: DecodeState, row: DecodeState, b) -> DecodeState:
    return _put_decode_row(batch, row, b)


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("batch",))
def insert_spec_row(batch: SpecState, row: SpecState, b, cfg: SpecConfig) -> SpecState:
    states = tuple(drafters_lib.module(d).insert_row(s, r, b, d)
                   for d, s, r in zip(cfg.drafters, batch.drafters, row.drafters))
    hits, credit = put_row((batch.hits, batch.credit), (row.hits, row.credit), b)
    return SpecState(base=_put_decode_row(batch.base, row.base, b), drafters=states, hits=hits, credit=credit)


@functools.partial(jax.jit, donate_argnames=("state",))
def release_row(state: DecodeState, b) -> DecodeState:
    """Row b stops (a cancelled request): marked finished, so the loop leaves it alone."""
    return state.replace(finish=state.finish.at[b].set(jnp.where(state.done[b], state.finish[b], MAX_NEW_TOKENS)))


# ----------------------------------------------------------------------------- host side


def _name(s: SamplingConfig) -> str:
    if s.temperature == 0:
        return "greedy"
    return ", ".join([f"temperature {s.temperature:g}"] + [f"top_k {s.top_k}"] * (s.top_k > 0)
                     + [f"top_p {s.top_p:g}"] * (s.top_p < 1))


@dataclasses.dataclass(eq=False)
class Request:
    """One generation request.

    on_tokens(ids) gets the new token ids as the loop commits them (per return of the loop);
    on_done(result) gets the GenerationResult when the request finishes (finish_reason "cancelled"
    if `cancel()` stopped it). Both are called on the thread that runs the batcher."""

    prompt: list[int]
    max_new_tokens: int
    sampling: SamplingConfig = SamplingConfig()
    seed: int | None = None  # its sampling key is sampling.request_key(seed, index); None: a random seed
    index: int = 0
    on_tokens: Callable[[list[int]], None] | None = None
    on_done: Callable[[GenerationResult], None] | None = None
    tag: Any = None
    cancelled: bool = False

    def cancel(self) -> None:
        """Frees the request's row at the batcher's next return to the host (any thread may call it)."""
        self.cancelled = True


class Batcher:
    """Continuous batching over one Engine (see the module docstring).

    Args:
      engine: one device (no mesh).
      speculative: decode with the engine's drafters; else incrementally.
      rows: B. num_slots: S, cache slots of every row (a request needs its prompt + new tokens + one
        step's room; see fits). eos_ids: tokens that end a request.
      steps_per_call: K, the loop's steps per call at most (None: about `target` seconds of work).
      row_tiers: run at the smallest row tier that holds the active requests (module docstring): True
        for 1, 2, 4, .., B, or the tiers given (B is added); False: always B rows.
      shrink_after: with row tiers, shrink only after this many calls in a row in which a smaller tier
        held every request and none waited (1: at once).
    """

    def __init__(self, engine: Engine, speculative: bool, rows: int, num_slots: int,
                 eos_ids: tuple[int, ...] | None = None, sampling: SamplingConfig = SamplingConfig(),
                 seed: int = 0, sampled_children: bool = True, steps_per_call: int | None = None,
                 target: float = TARGET_SECONDS, row_tiers: bool | Sequence[int] = False,
                 shrink_after: int = SHRINK_AFTER_CALLS):
        if engine.mesh is not None:
            raise EngineError("continuous batching runs on one device: use static batches with a mesh")
        if rows < 1:
            raise EngineError(f"continuous batching needs at least one row, got {rows}")
        self.engine, self.speculative, self.rows, self.num_slots = engine, speculative, rows, num_slots
        self.tiers = row_tiers_lib.tiers(rows, row_tiers)
        self.tier = self.tiers[0]  # rows of the state now
        self.grows = self.shrinks = 0  # tier changes (for tests and reports)
        self.shrink_after = shrink_after
        self._calls_small, self._need = 0, 0  # calls in a row a smaller tier held, the largest they needed
        self.eos = tuple(engine.llm.cfg.eos_token_ids if eos_ids is None else eos_ids)
        self.sampling, self.sampled_children = sampling, sampled_children
        self.steps_per_call, self.target = steps_per_call, target
        self.room = engine.spec_room() if speculative else INCREMENTAL_ROOM
        if num_slots < self.room + 1:
            raise EngineError(f"{num_slots} cache slots do not hold one step ({self.room} slots) after a prompt")
        self.record = num_slots  # R: no request runs more steps than it has slots
        self.waiting: collections.deque[Request] = collections.deque()
        self.lock = threading.Condition()
        self.active: dict[int, Request] = {}  # row (< self.tier) -> request
        self.sent = np.zeros(rows, np.int64)  # tokens handed to on_tokens, per row
        self.started = np.zeros(rows)  # when the row's request was admitted (perf_counter)
        self.refills = 0  # requests put into rows (for tests and reports)
        self.state = self._empty_state(seed)
        self.watch: Watch | None = None  # speculation watched (engine.fallback), per busy period
        self._n = steps_per_call or FIRST_STEPS
        self.t0 = time.perf_counter()
        self.c0 = engine.compile_seconds
        self.to_compile: collections.deque = collections.deque()  # (label, spec) for compile_next
        self.idle_compiled, self.idle_compile_seconds = 0, 0.0  # what compile_next compiled, and its time

    # -- building rows ---------------------------------------------------------------------
    def _empty_state(self, seed: int):
        """self.tier finished dummy rows (one-token prompts, nothing to generate) in S slots."""
        dummies = [[0]] * self.tier
        if not self.speculative:
            state, _ = self.engine.init_state(dummies, 0, seed, self.room, self.record, num_slots=self.num_slots)
            return state
        state, self.cfg = self.engine.init_spec_state(dummies, 0, self.sampling, seed, self.eos,
                                                      self.sampled_children, num_slots=self.num_slots,
                                                      record_steps=self.record)
        return state

    def _base(self, state=None) -> DecodeState:
        state = self.state if state is None else state
        return state.base if self.speculative else state

    def fits(self, prompt_tokens: int, max_new_tokens: int) -> bool:
        """Whether a request gets all max_new_tokens inside S slots (its last step's room included)."""
        return prompt_tokens - 1 + max_new_tokens + self.room <= self.num_slots

    def _row_state(self, req: Request):
        if req.seed is None:
            req.seed = int(np.random.default_rng().integers(2 ** 31))
        keys = sampling_lib.request_key(req.seed, req.index)[None]
        if not self.speculative:
            row, _ = self.engine.init_state([req.prompt], req.max_new_tokens, 0, self.room, self.record,
                                            num_slots=self.num_slots, keys=keys)
            return row
        for d, s in zip(self.cfg.drafters, self.state.drafters):  # shared state the new row starts from
            if d.kind == "recycle":
                self.engine.persistent["recycle_table"] = s.table
        row, _ = self.engine.init_spec_state([req.prompt], req.max_new_tokens, self.sampling, 0, self.eos,
                                             self.sampled_children, num_slots=self.num_slots,
                                             record_steps=self.record, keys=keys)
        return row

    # -- the executables (one per tier and sampling config) ----------------------------------
    # Each _*_spec returns (name, jitted fn, args, static) for Engine._executable; state may be arrays
    # or ShapeDtypeStructs (a tier's shapes: compiled ahead of use, see compile_plan).
    def _cfg(self, sampling: SamplingConfig) -> SpecConfig:
        return self.cfg if self.cfg.sampling == sampling else dataclasses.replace(self.cfg, sampling=sampling)

    def _insert_spec(self, state, row, sampling: SamplingConfig):
        if self.speculative:
            return "insert_spec", insert_spec_row, (state, row, _ROW), dict(cfg=self._cfg(sampling))
        return "insert", insert_decode_row, (state, row, _ROW), {}

    def _release_spec(self, base):
        return "release", release_row, (base, _ROW), {}

    def _move_spec(self, state, index, sampling: SamplingConfig):
        if self.speculative:
            return "move_spec", row_tiers_lib.move_spec_rows, (state, index), dict(cfg=self._cfg(sampling))
        return "move", row_tiers_lib.move_decode_rows, (state, index), {}

    def _incremental_spec(self, base, sampling: SamplingConfig):
        static = dict(cfg=self.engine.llm.cfg, sampling_cfg=sampling, eos_ids=self.eos)
        return "incremental_cb", incremental_until_finish, (self.engine.llm.params, base, _STEPS), static

    def _loop_spec(self, state, sampling: SamplingConfig):
        if self.speculative:
            args = (self.engine.llm.params, self.engine.drafter_params(), state, _STEPS)
            return "spec_cb", spec_until_finish, args, dict(cfg=self._cfg(sampling))
        return self._incremental_spec(state, sampling)

    def _executable(self, spec):
        return self.engine._executable(*spec)

    # -- compiling ahead of use --------------------------------------------------------------
    def compile_plan(self, samplings: Sequence[SamplingConfig] = ()) -> list[tuple[str, tuple]]:
        """(label, spec) of each executable the row tiers run that is not compiled yet, for the batch's
        sampling config and each of `samplings` (the loop, and speculative inserts and moves, are static
        in it): each tier's loop, a row's insert and release and (speculative, watched by the engine's
        fallback) the incremental loop a watch may switch to, and the moves between tiers. Smallest
        tiers first (a lone client needs tier 1 only), each with the moves to and from the tier below
        it; the moves between tiers further apart (a burst that skips a tier, a shrink by several)
        last. Shapes only: no tier's state is built, no row prefilled."""
        sampling = list(dict.fromkeys((self.sampling, *samplings)))
        shapes = {t: self._tier_shapes(t) for t in self.tiers}
        row = shapes[1] if 1 in shapes else self._tier_shapes(1)  # a request's row: a 1-row state
        sharding = jax.tree.leaves(self.state)[0].sharding  # a move's index array lives with the state
        index = lambda u: jax.ShapeDtypeStruct((u,), jnp.int32, sharding=sharding)
        move = lambda t, u, s: (f"move {t} -> {u} rows ({_name(s)})", self._move_spec(shapes[t], index(u), s))
        plan = []
        for i, t in enumerate(self.tiers):
            for s in sampling:
                plan += [(f"tier {t} loop ({_name(s)})", self._loop_spec(shapes[t], s)),
                         (f"tier {t} insert ({_name(s)})", self._insert_spec(shapes[t], row, s)),
                         (f"tier {t} release", self._release_spec(self._base(shapes[t])))]
                if self.speculative and self.engine.fallback is not None:
                    plan.append((f"tier {t} fallback loop ({_name(s)})",
                                 self._incremental_spec(self._base(shapes[t]), s)))
                if i > 0:
                    plan += [move(self.tiers[i - 1], t, s), move(t, self.tiers[i - 1], s)]
        for i, t in enumerate(self.tiers):
            for u in self.tiers[i + 2:]:
                plan += [move(t, u, s) for s in sampling] + [move(u, t, s) for s in sampling]
        seen = set(self.engine._compiled)
        out = []
        for label, (name, fn, args, static) in plan:
            key = self.engine._key(name, args, static)
            if key not in seen:  # an insert or move of incremental decoding serves every config
                seen.add(key)
                out.append((label, (name, fn, args, static)))
        return out

    def precompile(self, samplings: Sequence[SamplingConfig] = ()) -> float:
        """Compiles now everything compile_plan(samplings) lists, instead of at its first use (while
        other requests wait). Returns the seconds it took. Call it while the batcher is idle;
        precompile_when_idle spreads the same work over the batcher's idle time instead."""
        if self.busy:
            raise EngineError("precompile: the batcher is busy (call it before adding requests)")
        t0 = time.perf_counter()
        for _, spec in self.compile_plan(samplings):
            self._executable(spec)
        return time.perf_counter() - t0

    def precompile_when_idle(self, samplings: Sequence[SamplingConfig] = ()) -> int:
        """Queues compile_plan(samplings) for compile_next: one executable at a time, whenever the
        batcher is idle. Returns how many are queued."""
        self.to_compile = collections.deque(self.compile_plan(samplings))
        return len(self.to_compile)

    def compile_next(self) -> bool:
        """While nothing is active or waiting, compiles the next queued executable (precompile_when_idle;
        one already compiled by traffic meanwhile is skipped). Returns whether it compiled one: a request
        that arrives meanwhile waits for this one executable at most. Call it from the thread that
        steps the batcher (the engine's compile cache is not thread-safe)."""
        while self.to_compile and not self.busy:
            label, spec = self.to_compile.popleft()
            n = len(self.engine._compiled)
            t0 = time.perf_counter()
            self._executable(spec)
            if len(self.engine._compiled) > n:
                self.idle_compiled += 1
                self.idle_compile_seconds += time.perf_counter() - t0
                return True
        return False

    def _tier_shapes(self, tier: int):
        """The state's shapes at `tier` rows (ShapeDtypeStructs with the state's shardings)."""
        index = jax.ShapeDtypeStruct((tier,), jnp.int32)
        fn = (functools.partial(row_tiers_lib.move_spec_rows, cfg=self.cfg) if self.speculative
              else row_tiers_lib.move_decode_rows)
        out = jax.eval_shape(fn, self.state, index)
        return jax.tree.map(lambda o, x: jax.ShapeDtypeStruct(o.shape, o.dtype, sharding=x.sharding,
                                                              weak_type=o.weak_type), out, self.state)

    def _fill(self, b: int, req: Request) -> None:
        row = self._row_state(req)
        exe = self._executable(self._insert_spec(self.state, row, self.sampling))
        self.state = exe(self.state, row, jnp.int32(b))
        self.active[b] = req
        self.sent[b] = 0
        self.started[b] = time.perf_counter()
        self.refills += 1

    def _release(self, b: int) -> None:
        base = self._base()
        base = self._executable(self._release_spec(base))(base, jnp.int32(b))
        self.state = self.state.replace(base=base) if self.speculative else base

    # -- the queue -------------------------------------------------------------------------
    def add(self, req: Request) -> Request:
        """Queues a request (any thread). It must fit the cache (see fits)."""
        if not req.prompt:
            raise EngineError("the prompt is empty (no tokens)")
        if not self.fits(len(req.prompt), req.max_new_tokens):
            raise EngineError(f"a prompt of {len(req.prompt)} tokens and max_new_tokens={req.max_new_tokens} "
                              f"need {len(req.prompt) - 1 + req.max_new_tokens + self.room} cache slots "
                              f"(one step needs {self.room}), more than the batch's {self.num_slots}")
        with self.lock:
            self.waiting.append(req)
            self.lock.notify_all()
        return req

    @property
    def busy(self) -> bool:
        return bool(self.active or self.waiting)

    def _admit(self) -> None:
        """Free rows take waiting requests in arrival order, while they share the batch's sampling."""
        with self.lock:
            while self.waiting and self.waiting[0].cancelled:
                self._finish_cancelled_waiting(self.waiting.popleft())
            if not self.active and self.waiting:
                head = self.waiting[0]
                if head.sampling != self.sampling:  # the batch drained: switch to the next config
                    self.sampling = head.sampling
                    if self.speculative:
                        self.cfg = dataclasses.replace(self.cfg, sampling=head.sampling)
            admissible = 0  # the requests this call will admit
            for req in self.waiting:
                if admissible == self.rows - len(self.active) or req.sampling != self.sampling:
                    break
                admissible += not req.cancelled
            left = sum(not r.cancelled for r in self.waiting) > admissible  # some still wait after this call
        self._fit(len(self.active) + admissible, left)
        with self.lock:
            todo = []
            free = [b for b in range(self.tier) if b not in self.active]
            while free and self.waiting and self.waiting[0].sampling == self.sampling:
                req = self.waiting.popleft()
                if req.cancelled:
                    self._finish_cancelled_waiting(req)
                    continue
                todo.append((free.pop(0), req))
        for b, req in todo:
            self._fill(b, req)

    def _fit(self, n: int, waiting: bool = False) -> None:
        """Moves the state to the smallest tier holding n rows (the active and about-to-be-admitted
        requests): growing at once; shrinking only once smaller tiers have held every request for
        shrink_after calls in a row with nothing left waiting, then to the largest tier those calls
        needed (an idle call, n = 0, needs the smallest). A row that finishes just before the next
        request comes so moves nothing: each move copies the whole state."""
        tier = row_tiers_lib.tier_for(n, self.tiers)
        if tier < self.tier and not waiting:
            self._calls_small, self._need = self._calls_small + 1, max(self._need, tier)
            if self._calls_small < self.shrink_after:
                return
            tier = self._need
        self._calls_small, self._need = 0, 0
        if tier == self.tier or (tier < self.tier and waiting):
            return
        rows = sorted(self.active)  # row order kept: the active rows become rows 0 .. len - 1
        index = jnp.asarray(row_tiers_lib.move_index(rows, tier))
        self.state = self._executable(self._move_spec(self.state, index, self.sampling))(self.state, index)
        self.active = {i: self.active[b] for i, b in enumerate(rows)}
        for per_row in (self.sent, self.started):
            per_row[:len(rows)] = per_row[rows]
        if tier > self.tier:
            self.grows += 1
        else:
            self.shrinks += 1
        self.tier = tier

    def _finish_cancelled_waiting(self, req: Request) -> None:
        if req.on_done is not None:
            req.on_done(GenerationResult(prompt_ids=list(req.prompt), token_ids=[], finish_reason="cancelled",
                                         llm_steps=0, accepted_per_step=[], seconds=0.0, batch=0))

    # -- running ---------------------------------------------------------------------------
    def _exe(self):
        exe = self._executable(self._loop_spec(self.state, self.sampling))
        if self.speculative:
            params = self.engine.drafter_params()
            return lambda st, n: exe(self.engine.llm.params, params, st, n)
        return lambda st, n: exe(self.engine.llm.params, st, n)

    def _watched(self, call):
        """The speculative call watched by specjax.fallback when the engine asks for it (the automatic
        choice): once speculation is slower than incremental decoding, the batch decodes incrementally
        until it is idle again (the rows' drafter states stay valid for requests admitted meanwhile;
        the rows that ran incrementally never speculate again). Other calls as they are."""
        if not self.speculative or self.engine.fallback is None:
            return call
        if self.watch is None:
            params = self.engine.llm.params
            exe = lambda base: self._executable(self._incremental_spec(base, self.sampling))

            def inc(base):  # compiled now for this tier; the call finds the tier it is given (row tiers)
                exe(base)
                return lambda b, n: exe(b)(params, b, n)
            self.watch = Watch(self.engine.fallback, call, inc, base=lambda st: st.base,
                               replace_base=lambda st, b: st.replace(base=b), log=self.engine.progress)
        self.watch.spec = call
        return self.watch

    def step(self) -> bool:
        """Frees cancelled rows, fills free rows, runs one call of the loop and hands out what it
        committed. Returns False when nothing ran (nothing active or waiting)."""
        for b, req in list(self.active.items()):
            if req.cancelled:
                self._release(b)
        self._admit()
        if not self.active:
            self.watch = None  # idle: the next requests speculate again
            return False
        call = self._watched(self._exe())
        before = sharding.fetch(self._base().steps)
        t0 = time.perf_counter()
        self.state = call(self.state, jnp.asarray(self._n, jnp.int32))
        if self.watch is not None and self.watch.reason:
            self.engine.last_fallback = self.watch.reason
        base = self._base()
        tokens, num_new, finish, steps = sharding.fetch((base.tokens, base.num_new, base.finish, base.steps))
        seconds = time.perf_counter() - t0
        ran = int((steps - before).max())
        for b, req in list(self.active.items()):
            n = int(num_new[b])
            if n > self.sent[b] and req.on_tokens is not None and not req.cancelled:
                p = len(req.prompt)
                req.on_tokens(tokens[b, p + int(self.sent[b]): p + n].tolist())
            self.sent[b] = n
        done = [b for b in sorted(self.active) if finish[b] != 0]
        if done:
            self._finished(done)
        if self.steps_per_call is None and ran > 0:
            self._n = next_chunk(ran, seconds, self.target)
        return True

    def _finished(self, rows: list[int]) -> None:
        prompts = [self.active[b].prompt if b in self.active else [0] for b in range(self.tier)]
        compile_s = self.engine.compile_seconds - self.c0
        res = self.engine.results(prompts, self._base(), time.perf_counter() - self.t0 - compile_s, compile_s, rows)
        if self.speculative:
            c = sharding.fetch(self.state.credit)
            for b, r in zip(rows, res):
                r.drafter_tokens = {d.name: int(c[b, i]) for i, d in enumerate(self.engine.drafters)}
        for b, r in zip(rows, res):
            req = self.active.pop(b)
            r.batch = 0
            if req.cancelled:
                r.finish_reason = "cancelled"
            if req.on_done is not None:
                req.on_done(r)

    def keep_drafter_state(self) -> None:
        """The recycling table outlives the batch (as after a static batch)."""
        if self.speculative:
            self.engine._keep_drafter_state(self.state)

    def run(self, should_stop: Callable[[], bool] | None = None) -> None:
        """Steps until nothing is active or waiting; should_stop() polled between calls (True raises
        Interrupted: finished requests were handed to on_done already)."""
        while self.step():
            if should_stop is not None and should_stop():
                raise Interrupted("stopped between decode steps")
        self.keep_drafter_state()

    def wait_for_work(self, timeout: float) -> None:
        with self.lock:
            if not self.waiting:
                self.lock.wait(timeout)


def slots_for(engine: Engine, prompts: Sequence[Sequence[int]], max_new_tokens: int, speculative: bool) -> int:
    """S for a set of requests: the engine's sizing for the longest prompt (max_len if it has one)."""
    room = engine.spec_room() if speculative else INCREMENTAL_ROOM
    return engine._num_slots(max(len(p) for p in prompts), max_new_tokens, room)


def generate(engine: Engine, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int],
             speculative: bool, rows: int, sampling: SamplingConfig = SamplingConfig(), seed: int = 0,
             eos_ids: tuple[int, ...] | None = None, on_finish: Callable[[int, GenerationResult], None] | None = None,
             should_stop: Callable[[], bool] | None = None, steps_per_call: int | None = None,
             num_slots: int | None = None, first_index: int = 0, row_tiers: bool | Sequence[int] = False) -> list[GenerationResult]:
    """Prompts (token ids) decoded with continuous batching in `rows` rows (row_tiers: see Batcher);
    results in input order.
    max_new_tokens: one for all or one per prompt. on_finish(i, result) as request i finishes.
    Sampling: prompt i draws from sampling.request_key(seed, first_index + i)."""
    from specjax.engine import check_prompts

    prompts = check_prompts(prompts, engine.llm.cfg.vocab_size)
    limits = [max_new_tokens] * len(prompts) if isinstance(max_new_tokens, int) else list(max_new_tokens)
    if len(limits) != len(prompts):
        raise EngineError(f"{len(limits)} max_new_tokens for {len(prompts)} prompts")
    S = num_slots or slots_for(engine, prompts, max(limits), speculative)
    engine.last_fallback = ""
    batcher = Batcher(engine, speculative, min(rows, len(prompts)), S, eos_ids, sampling, seed,
                      steps_per_call=steps_per_call, row_tiers=row_tiers)
    out: dict[int, GenerationResult] = {}

    def done(i):
        def f(r: GenerationResult):
            out[i] = r
            if on_finish is not None:
                on_finish(i, r)
        return f

    for i, (p, n) in enumerate(zip(prompts, limits)):
        # S may be below a request's full need at the model's context limit: it stops with "length"
        batcher.waiting.append(Request(prompt=p, max_new_tokens=n, sampling=sampling, seed=seed,
                                       index=first_index + i, on_done=done(i)))
    batcher.run(should_stop)
    engine.last_batcher = batcher
    return [out[i] for i in range(len(prompts))]
