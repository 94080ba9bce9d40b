"""The host-side engine: batches requests, picks static shapes, runs the jitted loops, reads results.

    prompt ids -> pad into a length bucket -> prefill -> loop (incremental or speculative) -> results

Nothing here runs per step: each batch is a call into a jitted prefill, then calls into a jitted loop of
a bounded number of steps each (specjax.chunked: the host sees finished rows and Ctrl-C between them).
Static shapes come from buckets (prompt length rounded up to a power of two, or above 512 to a
multiple of 256; cache slots rounded up to a multiple of 64), so new prompt lengths in a bucket do not recompile.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specjax import model, sharding, skinny
from specjax import sampling as sampling_lib
from specjax.chunked import run_chunked
from specjax.config import ModelConfig
from specjax.decode_state import FINISH_REASONS, MAX_NEW_TOKENS, RUNNING, DecodeState, prefill, step_room
from specjax.prefill import plan as prefill_plan
from specjax.prefill import place, prefill_chunk
from specjax.drafters.setup import build_drafters, check_budget, prefill_outputs
from specjax.fallback import FallbackConfig, Watch
from specjax.incremental import STEP_ROOM as INCREMENTAL_ROOM
from specjax.incremental import incremental_loop
from specjax.sampling import SamplingConfig
from specjax.speculative import SpecConfig, SpecState, init_stats, spec_loop
from specjax.tree import TreeConfig


_STEPS = jax.ShapeDtypeStruct((), jnp.int32)  # the loops' max_steps argument (traced), for compiling


class EngineError(ValueError):
    """A request or set-up the engine cannot serve faithfully."""


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model ready to run: params pytree, its config and (optionally) its tokenizer."""

    params: Any
    cfg: ModelConfig
    tokenizer: Any = None


@dataclasses.dataclass
class GenerationResult:
    prompt_ids: list[int]
    token_ids: list[int]  # new tokens only
    finish_reason: str
    llm_steps: int
    accepted_per_step: list[int]  # tokens emitted per LLM step (accepted + bonus)
    seconds: float  # wall time of the batch this request ran in until it finished (prefill + loop,
    # compilation excluded); the batch's time is its requests' largest
    compile_seconds: float = 0.0  # compilation time spent for this batch (0 when cached)
    batch: int | None = None  # the batch it ran in (continuous batching: 0, one batch refilled); None: by index
    drafter_tokens: dict = dataclasses.field(default_factory=dict)  # drafter -> accepted tokens it proposed

    @property
    def mean_accepted(self) -> float:
        """MAT: tokens emitted per LLM step, bonus included (plain decoding: 1.0)."""
        return len(self.token_ids) / max(self.llm_steps, 1)

    def acceptance_by_depth(self, max_depth: int) -> list[float]:
        """[d-1] = fraction of LLM steps that accepted at least d drafted tokens, d = 1..max_depth.

        A step that emitted n tokens accepted n - 1 (the last is the LLM's own). The final step is left
        out (EOS, max_new_tokens or the cache may have cut it short) unless it is the only one."""
        steps = self.accepted_per_step[:-1] or self.accepted_per_step
        return [sum(n - 1 >= d for n in steps) / max(len(steps), 1) for d in range(1, max_depth + 1)]


PROGRESS_SECONDS = 3.0  # a long prefill reports its progress this often

OnFinish = Callable[[int, GenerationResult], None]  # (row in the batch, its result)

BUCKET_STEP = 256  # above 2 * BUCKET_STEP, buckets grow linearly


def prompt_bucket(n: int) -> int:
    """Padded prompt length: the next power of two >= n (at least 16) up to 512, then the next multiple
    of 256: a 1100-token prompt pads to 1280, not 2048 (the prefill computes every padded position, and
    every decoding step reads every cache slot)."""
    if n > 2 * BUCKET_STEP:
        return round_up(n, BUCKET_STEP)
    return max(16, 1 << (max(n, 1) - 1).bit_length())


PREFILL_STEP = 64  # from 64 to 2 * BUCKET_STEP tokens, the prefill pads to multiples of this


def prefill_bucket(n: int) -> int:
    """The positions the prefill computes for a longest prompt of n tokens: prompt_bucket(n), but between
    64 and 512 the next multiple of 64 (a 300-token prompt computes 320 positions, not 512). A prefill
    is compute-bound, so a padded position costs what a real one does (the default speculative
    prefill of 300 tokens: 919 -> 640 ms on 2 Zen 4 cores). The cache size still follows prompt_bucket,
    so the decoding loops compile no more often; only the prefill may compile once per bucket."""
    if PREFILL_STEP < n <= 2 * BUCKET_STEP:
        return round_up(n, PREFILL_STEP)
    return prompt_bucket(n)


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@functools.partial(jax.jit, static_argnames=("cfg", "bucket", "successors", "taps"), donate_argnames=("cache",))
def _prefill(params, cache, tokens, prompt_len, cfg: ModelConfig, bucket: int, successors: int = 0,
             taps: tuple = ()):
    """The prefilled cache; with successors = k > 0 or taps, (cache, the LLM's top-k tokens at every
    prefilled position [B, bucket, k] or None (the recycling drafter's first table entries), its
    features there [B, bucket, len(taps) * D] or None (what a feature drafter prefills from))."""
    if not successors and not taps:
        return prefill(params, cfg, cache, tokens, prompt_len, bucket)
    return prefill_outputs(params, cfg, cache, tokens, prompt_len, bucket, successors, taps)


def _vocab(tokenizer) -> dict:
    return getattr(tokenizer, "hf", tokenizer).get_vocab()


def check_drafters(llm: LoadedModel, ssms: Sequence[LoadedModel]) -> None:
    """SSMs must share the LLM's vocabulary (and tokenizer, when both have one)."""
    for i, ssm in enumerate(ssms):
        if ssm.cfg.vocab_size != llm.cfg.vocab_size:
            raise EngineError(f"SSM {i} has a vocabulary of {ssm.cfg.vocab_size} tokens but the LLM has "
                              f"{llm.cfg.vocab_size}: drafters must use the LLM's tokenizer")
        if llm.tokenizer is not None and ssm.tokenizer is not None:
            if _vocab(llm.tokenizer) != _vocab(ssm.tokenizer):
                raise EngineError(f"SSM {i}'s tokenizer differs from the LLM's (same size, different "
                                  "tokens): drafters must use the LLM's tokenizer")


def _most(max_new_tokens) -> int:
    """max_new_tokens is one int for every prompt or one per prompt (a static batch still runs until
    its last row stops)."""
    return int(max_new_tokens) if np.ndim(max_new_tokens) == 0 else int(max(max_new_tokens))


def check_prompts(prompts: Sequence[Sequence[int]], vocab_size: int) -> list[list[int]]:
    out = []
    for i, p in enumerate(prompts):
        p = [int(t) for t in p]
        if not p:
            raise EngineError(f"prompt {i} is empty: give at least one token (or use --chat)")
        bad = [t for t in p if not 0 <= t < vocab_size]
        if bad:
            raise EngineError(f"prompt {i} has token ids outside the vocabulary [0, {vocab_size}): {bad[:5]}")
        out.append(p)
    return out


class Engine:
    """Generates with an LLM, incrementally or speculatively.

    Args:
      llm: the verifier LLM.
      max_len: cache slots per request (prompt + new tokens + one step's scratch). None: sized per
        batch from the prompts and max_new_tokens.
      mesh: a `dp` x `tp` jax.sharding.Mesh (see specjax.sharding): the LLM is split over tp by the
        partition rules, SSMs are replicated, batches are split over dp (padded with finished dummy
        rows to a multiple of dp). None: one device.
      cpu_kernel: pack the weights for specjax's CPU skinny-matmul kernel (specjax.skinny): None
        (default) does when the params live on CPU, no mesh is given and the kernel can be used
        (it says why in one line when it cannot); False keeps XLA's dot.
      weight_dtype: "bfloat16" has the kernel store the weights in bf16 (half the bytes read per
        step; activations and accumulation stay float32); None keeps the checkpoint's dtype.
    """

    def __init__(self, llm: LoadedModel, ssms: Sequence[LoadedModel] = (), tree: TreeConfig | None = None,
                 max_len: int | None = None, mesh=None, drafters: Sequence | None = None,
                 budget: int | None = None, recycle_table=None, cpu_kernel: bool | None = None,
                 weight_dtype: str | None = None, feature_ssm=None):
        """drafters: names ('ssm', 'recycle', 'lookup') or drafter configs (specjax.drafters), merged in
        this order; 'ssm' stands for every SSM given, each expanding `tree`. None: the SSMs alone.
        budget: candidate nodes verified per step, the best by path score (None: every proposed node).
        recycle_table: a [V, k] table to start token recycling from (drafters.recycle.load).
        feature_ssm: a feature SSM (drafters.feature.load) for drafter 'feature'.
        cpu_kernel, weight_dtype: see the class docstring."""
        self.llm = llm
        self.ssms = tuple(ssms)
        self.tree = tree
        self.max_len = max_len
        self._compiled: dict = {}
        self.compile_seconds = 0.0
        self.progress: Callable[[str], None] | None = None  # called with a line on long prefills
        # Watch speculation and fall back to incremental decoding within a request when it is slower
        # (specjax.fallback; the automatic choice sets it). last_fallback: why the last batch did, or "".
        self.fallback: FallbackConfig | None = None
        self.last_fallback = ""
        check_drafters(llm, self.ssms)
        self.feature_ssm = feature_ssm
        if feature_ssm is not None:
            from specjax.feature import model as feature_model

            feature_model.check_fits(feature_ssm.cfg, llm.cfg)
        if self.ssms and tree is not None and tree.num_ssms != len(self.ssms):
            raise EngineError(f"the tree config is for {tree.num_ssms} SSM(s) but {len(self.ssms)} were given")
        self.drafters = build_drafters(drafters, llm.cfg, tuple(s.cfg for s in self.ssms), tree,
                                       None if feature_ssm is None else feature_ssm.cfg)
        self.budget = budget
        self.persistent: dict = {"recycle_table": recycle_table}
        if max_len is not None and self._slot_limit() is not None and max_len > self._slot_limit()[0]:
            raise EngineError(f"max_len={max_len} exceeds {self._slot_limit()[1]}")
        if self.drafters:
            check_budget(budget, max_len, self._slot_limit())
        self.mesh = mesh
        if mesh is not None:  # weights placed once: the LLM split by the partition rules, SSMs replicated
            place = lambda m, split: dict(zip(("params", "cfg"), sharding.shard_model(m.params, m.cfg, mesh, split)))
            self.llm = dataclasses.replace(llm, **place(llm, sharding.TP_SPLIT))  # cfg: kv heads may be repeated
            self.ssms = tuple(dataclasses.replace(s, **place(s, sharding.SSM_SPLIT)) for s in self.ssms)
            if feature_ssm is not None:
                from specjax.drafters import feature

                self.feature_ssm = feature.replicate(feature_ssm, mesh)
        elif cpu_kernel is not False:  # weights re-laid-out once here, never per step
            pack = lambda m: dataclasses.replace(m, params=skinny.pack_params(m.params, m.cfg, weight_dtype))
            self.llm = pack(self.llm)
            self.ssms = tuple(pack(s) for s in self.ssms)
            if feature_ssm is not None:
                from specjax.drafters import feature

                self.feature_ssm = feature.pack(feature_ssm, weight_dtype)
        self.cpu_kernel = skinny.is_packed(self.llm.params)
        if weight_dtype is not None and not self.cpu_kernel:
            raise EngineError(f"weight_dtype={weight_dtype!r} needs the CPU skinny-matmul kernel "
                              f"({skinny.status()[1]})")

    # -- shapes ---------------------------------------------------------------------------
    def _slot_limit(self) -> tuple[int, str] | None:
        """The most cache slots every model can serve exactly, and why: learned positions (OPT) do not
        extrapolate, a RoPE model is trained up to max_position_embeddings, and a sliding window
        (Mistral) is not implemented, so sequences must fit in it."""
        limits = []
        for name, m in (("the LLM", self.llm), *((f"SSM {i}", s) for i, s in enumerate(self.ssms))):
            n = m.cfg.max_position_embeddings
            limits.append((n, f"{name}'s {n} learned positions" if not m.cfg.uses_rope else
                           f"{name}'s context of {n} positions (max_position_embeddings)"))
            if m.cfg.sliding_window is not None:
                limits.append((m.cfg.sliding_window, f"{name}'s sliding_window={m.cfg.sliding_window} "
                                                      "(not implemented, so sequences must fit in it)"))
        return min(limits, default=None)

    def max_prompt_tokens(self, speculative: bool) -> tuple[int, str] | None:
        """The longest prompt one request can have (its first step must fit after it), and what bounds
        it: the context limit or max_len; None: unbounded."""
        room = self.spec_room() if speculative else INCREMENTAL_ROOM
        limit = self._slot_limit()
        bounds = [] if limit is None else [(limit[0] - room + 1, limit[1])]
        if self.max_len is not None:
            bounds.append((self.max_len - room + 1, f"max_len={self.max_len} cache slots"))
        return min(bounds, default=None)

    def spec_room(self) -> int:
        """Slots one speculative step needs from its root on (see decode_state.step_room), for the
        engine's drafters merged (and budgeted) as the loop does (SpecConfig.step_room)."""
        if not self.drafters:
            return INCREMENTAL_ROOM
        cfg = SpecConfig(llm=self.llm.cfg, drafters=self.drafters, sampling=SamplingConfig(), budget=self.budget)
        return cfg.step_room

    def _num_slots(self, longest_prompt: int, max_new_tokens: int, room: int) -> int:
        need = longest_prompt - 1 + room  # the first step must fit after the prompt
        limit = self._slot_limit()
        if self.max_len is not None:
            if limit is not None and self.max_len > limit[0]:
                raise EngineError(f"max_len={self.max_len} exceeds {limit[1]}")
            if need > self.max_len:
                raise EngineError(
                    f"prompt of {longest_prompt} tokens does not fit the cache of {self.max_len} slots "
                    f"(one step needs {room} slots after the prompt): raise max_len or shorten the prompt")
            return self.max_len
        slots = round_up(prompt_bucket(longest_prompt) + max_new_tokens + room, 64)
        if limit is not None and slots > limit[0]:
            slots = limit[0]  # generation stops with finish_reason "length" at the limit
            if need > slots:
                raise EngineError(f"prompt of {longest_prompt} tokens does not fit {limit[1]} "
                                  f"(one step needs {room} slots after the prompt)")
        return slots

    def init_state(self, prompts: list[list[int]], max_new_tokens: int, seed: int, room: int,
                   record_steps: int, successors: int = 0, num_slots: int | None = None,
                   taps: tuple[int, ...] = (), keys=None, first_index: int = 0) -> tuple[DecodeState, int]:
        """Pads prompts into [B, S] and runs the LLM prefill. Returns (state, prompt bucket); with
        successors = k > 0, self.prefill_successors holds the LLM's top-k at every prefilled position,
        with taps, self.prefill_features its features there (the residual streams after those layers).
        num_slots: S as given (a row for continuous batching's fixed cache); None: sized from the prompts.
        keys: the rows' PRNG keys [B, 2]; None: row b is request first_index + b of a call seeded with
        `seed` (sampling.request_key), so a request draws the same however it is batched."""
        cfg = self.llm.cfg
        n = len(prompts)
        B = sharding.padded_batch(n, self.mesh)  # a multiple of dp: rows n.. are finished dummies
        longest = max(len(p) for p in prompts)
        S = self._num_slots(longest, _most(max_new_tokens), room) if num_slots is None else num_slots
        bucket = min(prefill_bucket(longest), S)
        tokens = np.zeros((B, S), np.int32)
        for b, p in enumerate(prompts):
            tokens[b, : len(p)] = p
        prompt_len = np.asarray([len(p) for p in prompts] + [1] * (B - n), np.int32)
        tokens, prompt_len = sharding.shard_rows((tokens, prompt_len), self.mesh)
        dtype = model.compute_dtype(self.llm.params)
        cache = sharding.new_cache(cfg, B, S, dtype, self.mesh)
        if (successors or taps) and longest <= 1 and self.mesh is None:
            # Nothing to prefill (one-token prompts: the last prompt token is the first root; a batcher's
            # empty rows): no position is real, so no LLM forward (one over `bucket` dummy positions
            # cost a speculative generate call ~30 ms on 2 cores). A mesh keeps the forward: its
            # outputs carry the mesh's sharding.
            self.prefill_successors = jnp.zeros((B, bucket, successors), jnp.int32) if successors else None
            self.prefill_features = jnp.zeros((B, bucket, len(taps) * cfg.hidden_size), dtype) if taps else None
        elif successors or taps:  # the recycling table / feature drafter start from the prefill's outputs
            cache, self.prefill_successors, self.prefill_features = self.prefill(
                self.llm.params, cfg, cache, tokens, prompt_len, longest, bucket, successors, tuple(taps))
        else:
            cache = self.prefill(self.llm.params, cfg, cache, tokens, prompt_len, longest, bucket)
            self.prefill_successors = self.prefill_features = None
        zeros = lambda: jnp.zeros((B,), jnp.int32)  # distinct buffers: the state is donated
        max_new = np.zeros(B, np.int32)  # rows n.. (mesh padding) have nothing to generate
        max_new[:n] = max_new_tokens  # one for all, or one per prompt
        state = DecodeState(
            cache=cache, tokens=tokens, length=prompt_len - 1, prompt_len=prompt_len,
            max_new=jnp.asarray(max_new), num_new=zeros(),
            finish=jnp.asarray(np.where(max_new > 0, RUNNING, MAX_NEW_TOKENS).astype(np.int32)),
            steps=zeros(), emitted=jnp.zeros((B, record_steps), jnp.int32),
            key=sampling_lib.request_keys(seed, first_index, B) if keys is None else jnp.asarray(keys),
        )
        return sharding.shard_decode_state(state, cfg, self.mesh), bucket

    def prefill(self, params, cfg: ModelConfig, cache, tokens, prompt_len, longest: int, bucket: int,
                successors: int = 0, taps: tuple[int, ...] = ()):
        """The prompts' K/V into the cache, in chunks (specjax.prefill): memory bounded by the chunk,
        a progress line every few seconds (self.progress) for long prompts. With successors = k > 0 or
        taps, returns (cache, the LLM's top-k [B, bucket, k] or None, features [B, bucket, F] or None)
        at every prefilled position, as drafters.setup.prefill_outputs does in one call."""
        t0 = last = time.perf_counter()
        steps = prefill_plan(longest, bucket, cache.num_slots)
        outputs = bool(successors or taps)
        end = max([bucket] + [start + chunk for start, chunk, _ in steps])  # chunk outputs land in [0, end)
        B = tokens.shape[0]
        made = {}  # "top" [B, end, k], "feats" [B, end, F]: allocated from the first chunk's outputs (their dtypes)
        for i, (start, chunk, window) in enumerate(steps):
            static = dict(cfg=cfg, chunk=chunk, window=window)
            if outputs:
                static.update(successors=successors, taps=tuple(taps))
            out = self._run("prefill", prefill_chunk, (params, cache, tokens, prompt_len, jnp.int32(start)), static)
            if outputs:
                cache, *parts = out
                for name, part in zip(("top", "feats"), parts):
                    if part is not None:
                        full = made.get(name)
                        if full is None:  # over the mesh's rows, as the chunk outputs are
                            full = sharding.shard_rows(jnp.zeros((B, end) + part.shape[2:], part.dtype), self.mesh)
                        made[name] = place(full, part, jnp.int32(start))
            else:
                cache = out
            if self.progress is not None and i + 1 < len(steps) and time.perf_counter() - last > PROGRESS_SECONDS:
                jax.block_until_ready(cache)
                last = time.perf_counter()
                self.progress(f"prefill: {min(start + chunk, longest - 1)}/{longest - 1} prompt tokens, "
                              f"{last - t0:.0f}s")
        if not outputs:
            return cache
        if not steps:  # nothing to prefill (one-token prompts): zeros of the outputs' shapes, over the rows
            made = sharding.shard_rows({"top": jnp.zeros((B, end, successors), jnp.int32),
                                        "feats": jnp.zeros((B, end, len(taps) * cfg.hidden_size),
                                                           model.compute_dtype(params))}, self.mesh)
        top = made["top"][:, :bucket] if successors else None
        return cache, top, made["feats"][:, :bucket] if taps else None

    def _run(self, name: str, fn, args: tuple, static: dict):
        """Calls jitted fn, compiling ahead of time once per (static args, shapes) so that compile
        time is counted apart from run time."""
        return self._executable(name, fn, args, static)(*args)

    @staticmethod
    def _key(name: str, args: tuple, static: dict) -> tuple:
        """The compile cache's key: the name, the static args and the arguments' shapes (arrays or
        ShapeDtypeStructs alike)."""
        shapes = jax.tree.map(lambda x: (x.shape, x.dtype, getattr(x, "sharding", None)), args)
        return name, tuple(sorted(static.items(), key=lambda kv: kv[0])), jax.tree.structure(args), str(shapes)

    def _executable(self, name: str, fn, args: tuple, static: dict):
        """jitted fn compiled for these static args and argument shapes (cached; compile time counted)."""
        key = self._key(name, args, static)
        exe = self._compiled.get(key)
        if exe is None:
            t0 = time.perf_counter()
            exe = fn.lower(*args, **static).compile()
            self.compile_seconds += time.perf_counter() - t0
            self._compiled[key] = exe
        return exe

    # -- generation -----------------------------------------------------------------------
    def generate_incremental(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 128,
                             sampling: SamplingConfig = SamplingConfig(), seed: int = 0,
                             eos_ids: tuple[int, ...] | None = None, on_finish: OnFinish | None = None,
                             should_stop: Callable[[], bool] | None = None,
                             steps_per_call: int | None = None, first_index: int = 0) -> list[GenerationResult]:
        """One batch of prompts (token ids), decoded one LLM token per step.

        on_finish(b, result) is called as each request finishes; should_stop() is polled between
        calls of the loop (True raises specjax.interrupt.Interrupted); steps_per_call: the loop's
        steps per call (None: about chunked.TARGET_SECONDS of work). Sampling: prompt b draws from
        sampling.request_key(seed, first_index + b), its own key."""
        prompts = check_prompts(prompts, self.llm.cfg.vocab_size)
        eos = tuple(self.llm.cfg.eos_token_ids if eos_ids is None else eos_ids)
        c0, t0 = self.compile_seconds, time.perf_counter()
        state, _ = self.init_state(prompts, max_new_tokens, seed, INCREMENTAL_ROOM, max(_most(max_new_tokens), 1),
                                   first_index=first_index)
        static = dict(cfg=self.llm.cfg, sampling_cfg=sampling, eos_ids=eos)
        exe = self._executable("incremental", incremental_loop, (self.llm.params, state, _STEPS), static)
        self._decode(prompts, lambda st, n: exe(self.llm.params, st, n), state, lambda st: st,
                     c0, t0, on_finish, should_stop, steps_per_call)
        return [self._done[b] for b in range(len(prompts))]

    def generate_spec(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 128,
                      sampling: SamplingConfig = SamplingConfig(), seed: int = 0,
                      eos_ids: tuple[int, ...] | None = None, sampled_children: bool = True,
                      on_finish: OnFinish | None = None, should_stop: Callable[[], bool] | None = None,
                      steps_per_call: int | None = None, first_index: int = 0) -> list[GenerationResult]:
        """One batch of prompts (token ids), decoded speculatively with the engine's SSMs and tree
        (on_finish, should_stop, steps_per_call, first_index: as generate_incremental)."""
        prompts = check_prompts(prompts, self.llm.cfg.vocab_size)
        c0, t0 = self.compile_seconds, time.perf_counter()
        state, cfg = self.init_spec_state(prompts, max_new_tokens, sampling, seed, eos_ids, sampled_children,
                                          first_index=first_index)
        params = self.drafter_params()
        exe = self._executable("spec", spec_loop, (self.llm.params, params, state, _STEPS), dict(cfg=cfg))

        def credit(st, rows, res):  # which drafter proposed the accepted tokens, per row
            c = sharding.fetch(st.credit)
            for b, r in zip(rows, res):
                r.drafter_tokens = {d.name: int(c[b, i]) for i, d in enumerate(self.drafters)}

        call = lambda st, n: exe(self.llm.params, params, st, n)
        if self.fallback is not None:
            inc_static = dict(cfg=self.llm.cfg, sampling_cfg=cfg.sampling, eos_ids=cfg.eos_ids)
            inc = lambda base: functools.partial(  # compiled only when the watch falls back
                self._executable("incremental", incremental_loop, (self.llm.params, base, _STEPS), inc_static),
                self.llm.params)
            call = Watch(self.fallback, call, inc, base=lambda st: st.base,
                         replace_base=lambda st, b: st.replace(base=b), log=self.progress)
        final = self._decode(prompts, call, state, lambda st: st.base, c0, t0, on_finish, should_stop,
                             steps_per_call, credit)
        self.last_fallback = call.reason if isinstance(call, Watch) else ""
        self._keep_drafter_state(final)
        return [self._done[b] for b in range(len(prompts))]

    def _decode(self, prompts, call, state, base, c0: float, t0: float, on_finish, should_stop,
                steps_per_call, decorate=None):
        """Runs a loop in bounded calls (specjax.chunked); each request's result is built when it
        finishes (decorate(state, rows, results) may add to it), its `seconds` the batch's wall time
        until then, compilation excluded. Returns the final state; the results are in self._done."""
        done: dict[int, GenerationResult] = {}
        self._done = done

        def finished(st, rows):
            rows = [b for b in rows if b < len(prompts)]  # rows past the prompts are mesh padding
            compile_s = self.compile_seconds - c0
            res = self.results(prompts, base(st), time.perf_counter() - t0 - compile_s, compile_s, rows)
            if decorate is not None:
                decorate(st, rows, res)
            for b, r in zip(rows, res):
                done[b] = r
                if on_finish is not None:
                    on_finish(b, r)

        return run_chunked(call, state, base, finished, should_stop, steps_per_call)

    def init_spec_state(self, prompts: list[list[int]], max_new_tokens: int, sampling: SamplingConfig,
                        seed: int = 0, eos_ids: tuple[int, ...] | None = None, sampled_children: bool = True,
                        num_slots: int | None = None, record_steps: int | None = None, keys=None,
                        first_index: int = 0) -> tuple[SpecState, SpecConfig]:
        """The speculative loop's static config and its state after the LLM's and every SSM's prefill
        (num_slots, record_steps: S and R as given, see init_state; None: sized from the prompts)."""
        from specjax import drafters as drafters_lib
        from specjax.drafters.base import InitContext

        if not self.drafters:
            raise EngineError("speculative decoding needs at least one drafter (an SSM, a feature SSM, recycle "
                              "or lookup)")
        eos = tuple(self.llm.cfg.eos_token_ids if eos_ids is None else eos_ids)
        cfg = SpecConfig(llm=self.llm.cfg, drafters=self.drafters, sampling=sampling, eos_ids=eos,
                         sampled_children=sampled_children, budget=self.budget)
        k = max((d.k for d in self.drafters if d.kind == "recycle"), default=0)
        R = max(_most(max_new_tokens), 1) if record_steps is None else record_steps
        base, bucket = self.init_state(prompts, max_new_tokens, seed, cfg.step_room, R, successors=k,
                                       num_slots=num_slots, taps=cfg.feature_taps, keys=keys,
                                       first_index=first_index)
        states = []
        for d, params in zip(self.drafters, self.drafter_params()):
            ctx = InitContext(base=base, bucket=bucket, run=self._run, params=params,
                              successors=self.prefill_successors, persistent=self.persistent, mesh=self.mesh,
                              features=self.prefill_features, feature_taps=cfg.feature_taps, max_depth=cfg.depth)
            states.append(drafters_lib.module(d).init_state(ctx, d))
        hits, credit = init_stats(cfg, base.tokens.shape[0])
        state = SpecState(base=base, drafters=tuple(states), hits=hits, credit=credit)
        return sharding.shard_spec_state(state, cfg, self.mesh), cfg

    def drafter_params(self) -> tuple:
        """Per drafter, its params (an SSM's weights; a feature SSM's with d2t and the LLM's embedding
        table; None for the model-free drafters)."""
        from specjax.drafters import feature

        def params(d):
            if d.kind == "ssm":
                return self.ssms[d.index].params
            if d.kind == "feature":
                return feature.engine_params(self.feature_ssm, self.llm.params)
            return None

        return tuple(params(d) for d in self.drafters)

    def _keep_drafter_state(self, state: SpecState) -> None:
        """What outlives a batch: the recycling table."""
        for d, s in zip(self.drafters, state.drafters):
            if d.kind == "recycle":
                self.persistent["recycle_table"] = s.table
        self.last_hits = sharding.fetch(state.hits)

    @staticmethod
    def results(prompts: list[list[int]], state: DecodeState, seconds: float,
                compile_seconds: float, rows: Sequence[int] | None = None) -> list[GenerationResult]:
        """The results of `rows` (default: every prompt) as the state holds them."""
        tokens, num_new, finish, steps, emitted = sharding.fetch(
            (state.tokens, state.num_new, state.finish, state.steps, state.emitted))
        out = []
        for b in (range(len(prompts)) if rows is None else rows):
            p = prompts[b]
            n = int(num_new[b])
            out.append(GenerationResult(
                prompt_ids=list(p), token_ids=tokens[b, len(p): len(p) + n].tolist(),
                finish_reason=FINISH_REASONS[int(finish[b])], llm_steps=int(steps[b]),
                accepted_per_step=emitted[b, : int(steps[b])].tolist(), seconds=seconds,
                compile_seconds=compile_seconds))
        return out
