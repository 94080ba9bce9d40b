"""Fixed cost and per-step cost of the default and of incremental decoding: the README prompt at 64 and
256 new tokens, twice each (the slope between them is the loop's cost per step)."""
import sys
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from specjax import api
gens = {"auto": api.Generator.load(), "inc": api.Generator.load(mode="incremental")}
prompt = "What is speculative decoding?"
for rep in range(2):
    for name, g in gens.items():
        for n in (64, 256):
            r = g.generate([prompt], max_new_tokens=n, chat=True)[0]
            print(name, n, len(r["token_ids"]), r["llm_steps"], f"{r['seconds']:.3f}s", flush=True)
