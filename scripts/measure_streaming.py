"""Streaming per loop chunk vs a per-step host callback (issue 13), at batch 1, on the embedded model.

    python scripts/measure_streaming.py --rounds 3 --max-tokens 64

(a) chunk: what `specjax serve` does: the Batcher's loop runs about 0.1 s of steps per call
    (STREAM_TARGET_SECONDS), then the host reads the committed tokens and hands them out.
(b) callback: the same Batcher and chunking, but the jitted loop also sends each step's committed
    tokens to the host through `jax.experimental.io_callback` as the step ends (a loop defined here,
    not in the library: spec_step / incremental_step followed by the callback).

Both alternate in one process, for incremental and speculative decoding (drafters and budget pinned,
the fallback watch off), over the same greedy chat prompts, one request at a time (batch 1, the same
S cache slots as serve). Per request: tokens/s (admission to the last token), TTFT (admission to the
first token on the host), ITL as scripts/loadgen.py computes it (first to last token over the tokens
after the first), and the gaps between deliveries to the host (each delivery carries >= 1 token). In
(b) the chunk return is observed too, so `chunk_delay_ms` is how long per-chunk streaming holds a
token after the step committed it (same run, same tokens). Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import queue
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import io_callback

from specjax import batching
from specjax.batching import _STEPS, Batcher, Request, _until_a_row_finishes
from specjax.incremental import incremental_step
from specjax.speculative import spec_step

QUESTIONS = ["Explain why the sky is blue.", "Write a short poem about the sea.", "What is a prime number?",
             "Give three tips for learning to cook."]

QUEUE: queue.SimpleQueue = queue.SimpleQueue()  # (host time, row, token ids) per step, from the callback


def _emit(old, new, window):
    t = time.perf_counter()
    for b in np.flatnonzero(new > old):
        QUEUE.put((t, int(b), window[b, :new[b] - old[b]].tolist()))


def _emitting(step, base_of, width: int):
    """step, then the step's committed tokens to the host: per row the count before and after and a
    window of `width` token ids from the first new one (a step commits at most width tokens)."""
    def stepped(s):
        old = base_of(s).num_new
        s = step(s)
        base = base_of(s)
        at = jnp.minimum(base.prompt_len[:, None] + old[:, None] + jnp.arange(width)[None], base.tokens.shape[1] - 1)
        io_callback(_emit, None, old, base.num_new, jnp.take_along_axis(base.tokens, at, axis=1), ordered=False)
        return s
    return stepped


@functools.partial(jax.jit, static_argnames=("cfg", "sampling_cfg", "eos_ids"), donate_argnames=("state",))
def incremental_io(params, state, max_steps, cfg, sampling_cfg, eos_ids):
    step = _emitting(lambda s: incremental_step(params, cfg, s, sampling_cfg, eos_ids), lambda s: s, 1)
    return _until_a_row_finishes(step, lambda s: s.done, state, max_steps)


@functools.partial(jax.jit, static_argnames=("cfg", "width"), donate_argnames=("state",))
def spec_io(llm_params, drafter_params, state, max_steps, cfg, width):
    step = _emitting(lambda s: spec_step(llm_params, drafter_params, s, cfg), lambda s: s.base, width)
    return _until_a_row_finishes(step, lambda s: s.base.done, state, max_steps)


class CallbackBatcher(Batcher):
    """A Batcher whose loop also sends each step's new tokens to the host (QUEUE)."""

    def _loop_spec(self, state, sampling):
        e = self.engine
        if self.speculative:
            return ("spec_io", spec_io, (e.llm.params, e.drafter_params(), state, _STEPS),
                    dict(cfg=self._cfg(sampling), width=self.room))
        return ("incremental_io", incremental_io, (e.llm.params, state, _STEPS),
                dict(cfg=e.llm.cfg, sampling_cfg=sampling, eos_ids=self.eos))


def run_one(batcher: Batcher, prompt: list[int], max_tokens: int) -> dict:
    deliveries: list[tuple[float, int]] = []  # (host time, tokens) per on_tokens
    done = []
    t0 = time.perf_counter()
    batcher.add(Request(prompt=prompt, max_new_tokens=max_tokens, seed=0,
                        on_tokens=lambda ids: deliveries.append((time.perf_counter(), len(ids))),
                        on_done=done.append))
    batcher.run()
    events = deliveries
    if isinstance(batcher, CallbackBatcher):
        got = [QUEUE.get() for _ in range(QUEUE.qsize())]
        assert [i for _, _, ids in got for i in ids] == done[0].token_ids  # the callback's ids are the output
        events = [(t, len(ids)) for t, _, ids in got]
    tokens = sum(n for _, n in events)
    assert tokens == sum(n for _, n in deliveries) == len(done[0].token_ids), (tokens, len(done[0].token_ids))
    times = np.array([t for t, _ in events])
    out = dict(tokens=tokens, seconds=times[-1] - t0, ttft=times[0] - t0,
               itl=(times[-1] - times[0]) / (tokens - 1) if tokens > 1 else float("nan"),
               gaps=np.diff(times).tolist(), deliveries=len(events), token_ids=done[0].token_ids)
    if isinstance(batcher, CallbackBatcher):  # per token: chunk return time - step commit time
        commit = np.repeat(times, [n for _, n in events])
        chunk = np.repeat([t for t, _ in deliveries], [n for _, n in deliveries])
        out["chunk_delay"] = (chunk - commit).tolist()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="alternations of (a) and (b) per mode")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--slots", type=int, default=2048, help="S cache slots (serve's default)")
    p.add_argument("--drafters", default="lookup", help="speculative drafters (pinned: no autotune)")
    p.add_argument("--budget", type=int, default=4)
    p.add_argument("--target", type=float, default=0.1, help="seconds of loop per call (serve: 0.1)")
    args = p.parse_args(argv)
    from specjax.api import Generator

    gen = Generator.load(drafters=args.drafters, budget=args.budget)
    gen.engine.fallback = None  # the same loop every call
    prompts = [gen.encode_row({"prompt": q}, chat=True) for q in QUESTIONS]
    report = dict(describe=gen.describe(), jax=jax.__version__, max_tokens=args.max_tokens, slots=args.slots,
                  target=args.target, prompts=len(prompts), rounds=args.rounds, modes={})
    for mode in ("incremental", "spec"):
        spec = mode == "spec"
        make = {v: cls(gen.engine, spec, 1, args.slots, gen.eos_ids(), target=args.target)
                for v, cls in (("chunk", Batcher), ("callback", CallbackBatcher))}
        for b in make.values():  # warm-up: compiles, prefill buckets
            run_one(b, prompts[0], 8)
        runs = {v: [] for v in make}
        for r in range(args.rounds):
            for v in (("chunk", "callback") if r % 2 == 0 else ("callback", "chunk")):
                runs[v] += [run_one(make[v], q, args.max_tokens) for q in prompts]
        for i in range(len(runs["chunk"])):  # same greedy tokens either way
            assert runs["chunk"][i]["token_ids"] == runs["callback"][i]["token_ids"], (mode, i)
        report["modes"][mode] = {}
        for v, rs in runs.items():
            tok, sec = sum(x["tokens"] for x in rs), sum(x["seconds"] for x in rs)
            gaps = np.concatenate([x["gaps"] for x in rs]) * 1e3
            row = dict(tokens=tok, tokens_per_s=tok / sec, ttft_ms=float(np.median([x["ttft"] for x in rs]) * 1e3),
                       itl_ms=float(np.median([x["itl"] for x in rs]) * 1e3),
                       tokens_per_delivery=tok / sum(x["deliveries"] for x in rs),
                       gap_ms_p50=float(np.percentile(gaps, 50)), gap_ms_p90=float(np.percentile(gaps, 90)))
            if v == "callback":
                d = np.concatenate([x["chunk_delay"] for x in rs]) * 1e3
                row.update(chunk_delay_ms_mean=float(d.mean()), chunk_delay_ms_p90=float(np.percentile(d, 90)))
            report["modes"][mode][v] = row
            print(f"{mode:11s} {v:8s} {tok:5d} tokens {row['tokens_per_s']:6.1f} tok/s  TTFT {row['ttft_ms']:6.0f} ms  "
                  f"ITL {row['itl_ms']:5.1f} ms  {row['tokens_per_delivery']:4.1f} tok/delivery  "
                  f"gap p50/p90 {row['gap_ms_p50']:5.0f}/{row['gap_ms_p90']:5.0f} ms"
                  + (f"  chunk delay mean/p90 {row['chunk_delay_ms_mean']:.0f}/{row['chunk_delay_ms_p90']:.0f} ms"
                     if v == "callback" else ""), file=sys.stderr, flush=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
