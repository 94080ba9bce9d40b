"""The host-side engine: batches requests, picks static shapes, runs the jitted loops, reads results.

    prompt ids -> pad into a length bucket -> prefill -> loop (incremental or speculative) -> results

Nothing here runs per step: each batch is one call into a jitted prefill and one into a jitted loop.
Static shapes come from buckets (prompt length rounded up to a power of two, or above 512 to a
multiple of 256; cache slots rounded up to a multiple of 64), so new prompt lengths in a bucket do not recompile.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from specjax import sharding
from specjax.config import ModelConfig
from specjax.decode_state import FINISH_REASONS, MAX_NEW_TOKENS, RUNNING, DecodeState, prefill
from specjax.drafters.setup import build_drafters, check_budget, prefill_successors
from specjax.incremental import STEP_ROOM as INCREMENTAL_ROOM
from specjax.incremental import incremental_loop
from specjax.sampling import SamplingConfig
from specjax.speculative import SpecConfig, SpecState, init_stats, spec_loop
from specjax.tree import TreeConfig


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
    seconds: float  # wall time of the batch this request ran in (prefill + loop, compilation excluded)
    compile_seconds: float = 0.0  # compilation time spent for this batch (0 when cached)
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


BUCKET_STEP = 256  # above 2 * BUCKET_STEP, buckets grow linearly


def prompt_bucket(n: int) -> int:
    """Padded prompt length: the next power of two >= n (at least 16) up to 512, then the next multiple
    of 256: a 1100-token prompt pads to 1280, not 2048 (the prefill computes every padded position, and
    every decoding step reads every cache slot)."""
    if n > 2 * BUCKET_STEP:
        return round_up(n, BUCKET_STEP)
    return max(16, 1 << (max(n, 1) - 1).bit_length())


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m


@functools.partial(jax.jit, static_argnames=("cfg", "bucket", "successors"), donate_argnames=("cache",))
def _prefill(params, cache, tokens, prompt_len, cfg: ModelConfig, bucket: int, successors: int = 0):
    """The prefilled cache; with successors = k > 0 also the LLM's top-k tokens at every prefilled
    position [B, bucket, k] (the recycling drafter's first table entries)."""
    if not successors:
        return prefill(params, cfg, cache, tokens, prompt_len, bucket)
    return prefill_successors(params, cfg, cache, tokens, prompt_len, bucket, successors)


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
    """

    def __init__(self, llm: LoadedModel, ssms: Sequence[LoadedModel] = (), tree: TreeConfig | None = None,
                 max_len: int | None = None, mesh=None, drafters: Sequence | None = None,
                 budget: int | None = None, recycle_table=None):
        """drafters: names ('ssm', 'recycle', 'lookup') or drafter configs (specjax.drafters), merged in
        this order; 'ssm' stands for every SSM given, each expanding `tree`. None: the SSMs alone.
        budget: candidate nodes verified per step, the best by path score (None: every proposed node).
        recycle_table: a [V, k] table to start token recycling from (drafters.recycle.load)."""
        self.llm = llm
        self.ssms = tuple(ssms)
        self.tree = tree
        self.max_len = max_len
        self._compiled: dict = {}
        self.compile_seconds = 0.0
        check_drafters(llm, self.ssms)
        if self.ssms and tree is not None and tree.num_ssms != len(self.ssms):
            raise EngineError(f"the tree config is for {tree.num_ssms} SSM(s) but {len(self.ssms)} were given")
        self.drafters = build_drafters(drafters, llm.cfg, tuple(s.cfg for s in self.ssms), tree)
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

    # -- shapes ---------------------------------------------------------------------------
    def _slot_limit(self) -> tuple[int, str] | None:
        """The most cache slots every model can serve exactly, and why: learned positions (OPT) do not
        extrapolate, and a sliding window (Mistral) is not implemented, so sequences must fit in it."""
        limits = []
        for name, m in (("the LLM", self.llm), *((f"SSM {i}", s) for i, s in enumerate(self.ssms))):
            if not m.cfg.uses_rope:
                limits.append((m.cfg.max_position_embeddings, f"{name}'s {m.cfg.max_position_embeddings} learned positions"))
            if m.cfg.sliding_window is not None:
                limits.append((m.cfg.sliding_window, f"{name}'s sliding_window={m.cfg.sliding_window} "
                                                      "(not implemented, so sequences must fit in it)"))
        return min(limits, default=None)

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
                   record_steps: int, successors: int = 0) -> tuple[DecodeState, int]:
        """Pads prompts into [B, S] and runs the LLM prefill. Returns (state, prompt bucket); with
        successors = k > 0, self.prefill_successors holds the LLM's top-k at every prefilled position."""
        cfg = self.llm.cfg
        n = len(prompts)
        B = sharding.padded_batch(n, self.mesh)  # a multiple of dp: rows n.. are finished dummies
        longest = max(len(p) for p in prompts)
        S = self._num_slots(longest, max_new_tokens, room)
        bucket = min(prompt_bucket(longest), S)
        tokens = np.zeros((B, S), np.int32)
        for b, p in enumerate(prompts):
            tokens[b, : len(p)] = p
        prompt_len = np.asarray([len(p) for p in prompts] + [1] * (B - n), np.int32)
        tokens, prompt_len = sharding.shard_rows((tokens, prompt_len), self.mesh)
        dtype = jax.tree.leaves(self.llm.params)[0].dtype
        cache = sharding.new_cache(cfg, B, S, dtype, self.mesh)
        out = self._run("prefill", _prefill, (self.llm.params, cache, tokens, prompt_len),
                        dict(cfg=cfg, bucket=bucket, successors=successors))
        cache, self.prefill_successors = out if successors else (out, None)
        zeros = lambda: jnp.zeros((B,), jnp.int32)  # distinct buffers: the state is donated
        max_new = np.where(np.arange(B) < n, max_new_tokens, 0).astype(np.int32)
        state = DecodeState(
            cache=cache, tokens=tokens, length=prompt_len - 1, prompt_len=prompt_len,
            max_new=jnp.asarray(max_new), num_new=zeros(),
            finish=jnp.asarray(np.where(max_new > 0, RUNNING, MAX_NEW_TOKENS).astype(np.int32)),
            steps=zeros(), emitted=jnp.zeros((B, record_steps), jnp.int32), key=jax.random.PRNGKey(seed),
        )
        return sharding.shard_decode_state(state, cfg, self.mesh), bucket

    def _run(self, name: str, fn, args: tuple, static: dict):
        """Calls jitted fn, compiling ahead of time once per (static args, shapes) so that compile
        time is counted apart from run time."""
        shapes = jax.tree.map(lambda x: (x.shape, x.dtype, getattr(x, "sharding", None)), args)
        key = (name, tuple(sorted(static.items(), key=lambda kv: kv[0])), jax.tree.structure(args), str(shapes))
        exe = self._compiled.get(key)
        if exe is None:
            t0 = time.perf_counter()
            exe = fn.lower(*args, **static).compile()
            self.compile_seconds += time.perf_counter() - t0
            self._compiled[key] = exe
        return exe(*args)

    # -- generation -----------------------------------------------------------------------
    def generate_incremental(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 128,
                             sampling: SamplingConfig = SamplingConfig(), seed: int = 0,
                             eos_ids: tuple[int, ...] | None = None) -> list[GenerationResult]:
        """One batch of prompts (token ids), decoded one LLM token per step."""
        prompts = check_prompts(prompts, self.llm.cfg.vocab_size)
        eos = tuple(self.llm.cfg.eos_token_ids if eos_ids is None else eos_ids)
        c0, t0 = self.compile_seconds, time.perf_counter()
        state, _ = self.init_state(prompts, max_new_tokens, seed, INCREMENTAL_ROOM, max(max_new_tokens, 1))
        state = self._run("incremental", incremental_loop, (self.llm.params, state),
                          dict(cfg=self.llm.cfg, sampling_cfg=sampling, eos_ids=eos))
        jax.block_until_ready(state.tokens)
        compile_s = self.compile_seconds - c0
        return self.results(prompts, state, time.perf_counter() - t0 - compile_s, compile_s)

    def generate_spec(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 128,
                      sampling: SamplingConfig = SamplingConfig(), seed: int = 0,
                      eos_ids: tuple[int, ...] | None = None, sampled_children: bool = True
                      ) -> list[GenerationResult]:
        """One batch of prompts (token ids), decoded speculatively with the engine's SSMs and tree."""
        prompts = check_prompts(prompts, self.llm.cfg.vocab_size)
        c0, t0 = self.compile_seconds, time.perf_counter()
        state, cfg = self.init_spec_state(prompts, max_new_tokens, sampling, seed, eos_ids, sampled_children)
        state = self._run("spec", spec_loop, (self.llm.params, self.drafter_params(), state), dict(cfg=cfg))
        jax.block_until_ready(state.base.tokens)
        compile_s = self.compile_seconds - c0
        out = self.results(prompts, state.base, time.perf_counter() - t0 - compile_s, compile_s)
        self._keep_drafter_state(state)
        credit = sharding.fetch(state.credit)
        for b, r in enumerate(out):
            r.drafter_tokens = {d.name: int(credit[b, i]) for i, d in enumerate(self.drafters)}
        return out

    def init_spec_state(self, prompts: list[list[int]], max_new_tokens: int, sampling: SamplingConfig,
                        seed: int = 0, eos_ids: tuple[int, ...] | None = None, sampled_children: bool = True
                        ) -> tuple[SpecState, SpecConfig]:
        """The speculative loop's static config and its state after the LLM's and every SSM's prefill."""
        from specjax import drafters as drafters_lib
        from specjax.drafters.base import InitContext

        if not self.drafters:
            raise EngineError("speculative decoding needs at least one drafter (an SSM, recycle or lookup)")
        eos = tuple(self.llm.cfg.eos_token_ids if eos_ids is None else eos_ids)
        cfg = SpecConfig(llm=self.llm.cfg, drafters=self.drafters, sampling=sampling, eos_ids=eos,
                         sampled_children=sampled_children, budget=self.budget)
        k = max((d.k for d in self.drafters if d.kind == "recycle"), default=0)
        base, bucket = self.init_state(prompts, max_new_tokens, seed, cfg.step_room, max(max_new_tokens, 1),
                                       successors=k)
        states = []
        for d, params in zip(self.drafters, self.drafter_params()):
            ctx = InitContext(base=base, bucket=bucket, run=self._run, params=params,
                              successors=self.prefill_successors, persistent=self.persistent, mesh=self.mesh)
            states.append(drafters_lib.module(d).init_state(ctx, d))
        hits, credit = init_stats(cfg, base.tokens.shape[0])
        state = SpecState(base=base, drafters=tuple(states), hits=hits, credit=credit)
        return sharding.shard_spec_state(state, cfg, self.mesh), cfg

    def drafter_params(self) -> tuple:
        """Per drafter, its params (an SSM's weights; None for the model-free drafters)."""
        return tuple(self.ssms[d.index].params if d.kind == "ssm" else None for d in self.drafters)

    def _keep_drafter_state(self, state: SpecState) -> None:
        """What outlives a batch: the recycling table."""
        for d, s in zip(self.drafters, state.drafters):
            if d.kind == "recycle":
                self.persistent["recycle_table"] = s.table
        self.last_hits = sharding.fetch(state.hits)

    @staticmethod
    def results(prompts: list[list[int]], state: DecodeState, seconds: float,
                compile_seconds: float) -> list[GenerationResult]:
        tokens, num_new, finish, steps, emitted = sharding.fetch(
            (state.tokens, state.num_new, state.finish, state.steps, state.emitted))
        out = []
        for b, p in enumerate(prompts):
            n = int(num_new[b])
            out.append(GenerationResult(
                prompt_ids=list(p), token_ids=tokens[b, len(p): len(p) + n].tolist(),
                finish_reason=FINISH_REASONS[int(finish[b])], llm_steps=int(steps[b]),
                accepted_per_step=emitted[b, : int(steps[b])].tolist(), seconds=seconds,
                compile_seconds=compile_seconds))
        return out
