"""Incremental decoding speed on the default LLM, B=1, greedy: specjax vs transformers `generate`,
measured side by side in one run, and specjax's step time against the memory roofline.

    python scripts/bench_decode.py [--llm DIR] [--new-tokens 128] [--repeats 3] [--batch-sizes 1,8] [--batched-only]

Prints per system the median tokens/s over alternating repeats (each system in its own process),
their ratio, and the specjax step time over the roofline (weight bytes / measured memory read
bandwidth). transformers (PyTorch, fp32, 2 threads) loads the same GGUF the default checkpoint came
from, so both decode the same weights; their greedy tokens are compared too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import jax

from specjax.bench.memory import read_bandwidth

PROMPTS = [
    "Explain why the sky is blue in two sentences.",
    "Write a short poem about the sea.",
    "What are the three primary colors?",
]


def batch_worker(llm_path: str | None, new_tokens: int, batch: int) -> dict:
    """Incremental decoding of `batch` copies of the prompts (exactly new_tokens each): tokens/s of the
    whole call (prefill included), and of the decode steps alone (from the same call at 16 tokens:
    batch x (new_tokens - 16) / the difference of the two times, the faster of two tries each)."""
    from specjax import api
    from specjax.engine import Engine

    llm = api.load(llm_path)
    prompts = [llm.tokenizer.encode(PROMPTS[b % len(PROMPTS)], chat=True) for b in range(batch)]
    engine = Engine(llm)
    short = min(16, new_tokens - 1)
    seconds = {}
    for n in (short, new_tokens):
        engine.generate_incremental(prompts, n, eos_ids=())  # warm-up: compilation
        seconds[n] = min(engine.generate_incremental(prompts, n, eos_ids=())[0].seconds for _ in range(2))
    return {"rate": batch * new_tokens / seconds[new_tokens],
            "decode_rate": batch * (new_tokens - short) / max(seconds[new_tokens] - seconds[short], 1e-9),
            "kernel": engine.cpu_kernel}


def worker(system: str, llm_path: str | None, new_tokens: int) -> dict:
    """Runs one system in this process: warm-up, then every prompt once. Returns tokens/s per prompt
    and the generated ids (cut at the first EOS, where greedy continuations stop being meaningful)."""
    from specjax import api, default_model

    llm = api.load(llm_path)
    prompts = [llm.tokenizer.encode(p, chat=True) for p in PROMPTS]
    eos = set(llm.tokenizer.eos_token_ids)
    n = new_tokens
    if system == "specjax":
        from specjax.engine import Engine

        engine = Engine(llm)

        def run(ids):
            r = engine.generate_incremental([ids], n, eos_ids=())  # exactly n tokens, no early stop
            return r[0].token_ids, r[0].seconds
    else:
        import torch
        import transformers

        gguf = default_model.default_gguf_path()
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                               dtype=torch.float32).eval()
        hf.generation_config.eos_token_id = None  # exactly n tokens, no early stop, no EOS suppression

        def run(ids):
            x = torch.tensor([ids])
            with torch.inference_mode():
                t = time.perf_counter()
                out = hf.generate(x, max_new_tokens=n, do_sample=False, attention_mask=torch.ones_like(x),
                                  pad_token_id=0)
                return out[0, len(ids):].tolist(), time.perf_counter() - t

    run(prompts[0])  # warm-up: compilation / first-call costs
    rates, outputs = [], []
    for ids in prompts:
        toks, seconds = run(ids)
        rates.append(n / seconds)
        cut = next((i + 1 for i, t in enumerate(toks) if t in eos), len(toks))
        outputs.append(toks[:cut])
    return {"rates": rates, "outputs": outputs}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", default=None, help="specjax checkpoint (default: the embedded LLM; "
                                                 "transformers always loads the embedded GGUF)")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-sizes", default="1,8", help="batched incremental throughput at these B "
                                                         "(kernel vs XLA); empty to skip")
    ap.add_argument("--worker", choices=["specjax", "transformers", "batch"], help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--batched-only", action="store_true", help="only the batched part (no transformers run)")
    args = ap.parse_args()
    if args.new_tokens < 2 or args.repeats < 1:
        ap.error("--new-tokens must be >= 2 (decode rates come from two lengths) and --repeats >= 1")
    if args.batched_only:
        batched(args, [int(b) for b in args.batch_sizes.split(",") if b.strip()])
        return
    if args.worker == "batch":
        print(json.dumps(batch_worker(args.llm, args.new_tokens, args.batch)))
        return
    if args.worker:
        print(json.dumps(worker(args.worker, args.llm, args.new_tokens)))
        return

    # Each system runs in its own process (JAX's and torch's thread pools would otherwise compete),
    # alternating, so drift on this shared machine hits both alike.
    results = {"specjax": [], "transformers": []}
    outputs = {}
    for rep in range(args.repeats):
        for system in results:
            cmd = [sys.executable, __file__, "--worker", system, "--new-tokens", str(args.new_tokens)]
            if args.llm:
                cmd += ["--llm", args.llm]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            results[system] += r["rates"]
            outputs[system] = r["outputs"]
    sj, ht = statistics.median(results["specjax"]), statistics.median(results["transformers"])

    from specjax import api

    from specjax.engine import Engine

    llm = api.load(args.llm)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(llm.params))
    kernel_on = Engine(llm).cpu_kernel
    del llm
    bw = read_bandwidth(nbytes)
    step, roofline = 1.0 / sj, nbytes / bw
    same = sum(a == b for a, b in zip(outputs["specjax"], outputs["transformers"]))
    print(f"specjax incremental: {sj:.1f} tokens/s (median of {len(results['specjax'])} runs)")
    print(f"transformers generate: {ht:.1f} tokens/s (median of {len(results['transformers'])} runs)")
    print(f"ratio specjax / transformers: {sj / ht:.2f}")
    print(f"(specjax with the CPU skinny-matmul kernel: {kernel_on})")
    print(f"weights {nbytes / 1e6:.0f} MB, read bandwidth {bw / 1e9:.1f} GB/s, roofline "
          f"{roofline * 1e3:.1f} ms/token, specjax step {step * 1e3:.1f} ms (prefill included) = "
          f"{step / roofline:.2f} x roofline")
    print(f"greedy outputs identical to transformers (up to the first EOS): {same}/{len(PROMPTS)}")
    sizes = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    if sizes:
        batched(args, sizes)


def batched(args, sizes: list[int]) -> None:
    import os

    rates = {(path, b): [] for path in ("kernel", "xla") for b in sizes}
    decode = {(path, b): [] for path in ("kernel", "xla") for b in sizes}
    for _ in range(args.repeats):
        for path in ("kernel", "xla"):
            for b in sizes:
                cmd = [sys.executable, __file__, "--worker", "batch", "--batch", str(b),
                       "--new-tokens", str(args.new_tokens)] + (["--llm", args.llm] if args.llm else [])
                env = dict(os.environ, SPECJAX_SKINNY="1" if path == "kernel" else "0")
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
                r = json.loads(out.strip().splitlines()[-1])
                if path == "kernel" and not r["kernel"]:
                    print("(the kernel is unavailable here: both rows use XLA's dot)")
                rates[(path, b)].append(r["rate"])
                decode[(path, b)].append(r["decode_rate"])
    print(f"\nbatched incremental decoding, {args.new_tokens} tokens per row, median of {args.repeats} "
          "(tok/s of the whole call, prefill included; decode: the steps alone):")
    print(f"{'B':>4} {'kernel tok/s':>13} {'x B=1':>6} {'decode':>8} {'x B=1':>6} {'XLA tok/s':>10} {'x B=1':>6} "
          f"{'decode':>8} {'x B=1':>6}")
    med = {k: statistics.median(v) for k, v in rates.items()}
    dec = {k: statistics.median(v) for k, v in decode.items()}
    for b in sizes:
        row = f"{b:>4}"
        for path, w in (("kernel", 13), ("xla", 10)):
            k, d = med[(path, b)], dec[(path, b)]
            row += (f" {k:>{w}.1f} {k / med[(path, sizes[0])]:>6.2f} {d:>8.1f} {d / dec[(path, sizes[0])]:>6.2f}")
        print(row)


if __name__ == "__main__":
    main()
