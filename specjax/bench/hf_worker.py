"""The transformers side of the benchmark, in its own process: `python -m specjax.bench.hf_worker`.

PyTorch runs in a separate process so that its thread pool and JAX's never run at once: the parent
sends one request at a time and waits, so the systems alternate on the same cores. Protocol: one JSON
object per line on stdin, one JSON answer per line on stdout.

    {"cmd": "load", "llm": PATH, "assistant": PATH | null, "export_dir": DIR, "threads": N}
        -> {"ok": true, "llm": "...", "assistant": "..."}
    {"cmd": "generate", "ids": [...], "max_new_tokens": N, "assisted": bool, "eos": [...]}
        -> {"token_ids": [...], "seconds": float}     (greedy; seconds: the generate call alone)
    {"cmd": "quit"}

PATH is a specjax checkpoint (exported once to a Hugging Face directory under DIR), a Hugging Face
model directory, or a .gguf file. Models run in float32. Errors come back as {"error": "..."}.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path


def hf_model_path(path: str, export_dir: Path, name: str) -> tuple[str, dict]:
    """-> (directory for from_pretrained, extra from_pretrained kwargs)."""
    p = Path(path)
    if p.suffix == ".gguf":
        return str(p.parent), {"gguf_file": p.name}
    if (p / "config.json").is_file():
        return str(p), {}
    from specjax.checkpoint import is_checkpoint

    if is_checkpoint(p):
        from checkpoints_convert import export_hf

        dst = export_dir / name
        export_hf(p, dst, overwrite=True)
        return str(dst), {}
    raise ValueError(f"{path}: not a specjax checkpoint, a Hugging Face model directory or a .gguf file")


def load(path: str, export_dir: Path, name: str):
    import torch
    import transformers

    directory, kw = hf_model_path(path, export_dir, name)
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, **kw).eval()


def main() -> int:
    import torch
    import transformers

    models: dict = {}
    out = os.fdopen(os.dup(1), "w")  # the protocol's own copy of stdout ...
    os.dup2(2, 1)  # ... and anything else written to fd 1 (libraries, C code) goes to stderr
    sys.stdout = sys.stderr
    for line in sys.stdin:
        req = json.loads(line)
        try:
            if req["cmd"] == "quit":
                break
            if req["cmd"] == "load":
                torch.set_num_threads(int(req.get("threads") or torch.get_num_threads()))
                export_dir = Path(req["export_dir"])
                models["llm"] = load(req["llm"], export_dir, "llm")
                models["assistant"] = load(req["assistant"], export_dir, "assistant") if req.get("assistant") else None
                ans = {"ok": True, "llm": type(models["llm"]).__name__}
            elif req["cmd"] == "generate":
                llm = models["llm"]
                kw = {}
                if req.get("assisted"):
                    if models.get("assistant") is None:
                        raise ValueError("assisted generation needs an assistant model (none loaded)")
                    kw["assistant_model"] = models["assistant"]
                eos = list(req.get("eos") or [])
                # A fresh config: greedy, these stops and nothing else from the checkpoint's
                # generation_config (repetition penalties and the like would change the output).
                gcfg = transformers.GenerationConfig(do_sample=False, max_new_tokens=req["max_new_tokens"],
                                                     eos_token_id=eos or None, pad_token_id=eos[0] if eos else 0)
                x = torch.tensor([req["ids"]])
                with torch.inference_mode():
                    t = time.perf_counter()
                    y = llm.generate(x, attention_mask=torch.ones_like(x), generation_config=gcfg, **kw)
                    seconds = time.perf_counter() - t
                ans = {"token_ids": y[0, x.shape[1]:].tolist(), "seconds": seconds}
            else:
                raise ValueError(f"unknown command {req['cmd']!r}")
        except Exception as e:  # reported to the parent, which raises it with this text
            ans = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        out.write(json.dumps(ans) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
