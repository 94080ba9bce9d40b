import os, time, sys, numpy as np
from specjax import api
from specjax.sampling import SamplingConfig
gen = api.Generator.load(drafters="feature,lookup", budget=4, tree=None)
inc = api.Generator.load(mode="incremental")
tok = gen.tokenizer if hasattr(gen, "tokenizer") else gen.llm.tokenizer
prompt = tok.encode("What is speculative decoding?", chat=True)
def run(g, spec):
    r = (g.engine.generate_spec if spec else g.engine.generate_incremental)([prompt], 128, eos_ids=()) if not spec else g.engine.generate_spec([prompt], 128, SamplingConfig(), eos_ids=())
    return 128 / r[0].seconds
for g, spec in ((gen, True), (inc, False)): run(g, spec)
res = {}
for rep in range(int(sys.argv[1]) if len(sys.argv) > 1 else 4):
    for pool in ("xla", "spin"):
        os.environ["SPECJAX_SKINNY_POOL"] = pool
        for name, g, spec in (("spec", gen, True), ("inc", inc, False)):
            res.setdefault((pool, name), []).append(run(g, spec))
for k, v in res.items(): print(k, [round(x, 1) for x in v], "median", round(float(np.median(v)), 1))
