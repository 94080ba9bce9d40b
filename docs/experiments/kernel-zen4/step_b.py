import sys, time
from specjax import api
from specjax.engine import Engine
P = ["Explain why the sky is blue in two sentences.", "Write a short poem about the sea.", "What are the three primary colors?"]
llm = api.load(None)
eng = Engine(llm)
print("kernel", eng.cpu_kernel)
for B in [int(x) for x in sys.argv[1].split(",")]:
    prompts = [llm.tokenizer.encode(P[b % 3], chat=True) for b in range(B)]
    print("prompt lens", [len(p) for p in prompts])
    for n in (16, 80):
        eng.generate_incremental(prompts, n, eos_ids=())
    res = {}
    for rep in range(3):
        for n in (16, 80):
            r = eng.generate_incremental(prompts, n, eos_ids=())
            res.setdefault(n, []).append(r[0].seconds)
    a, b = min(res[16]), min(res[80])
    step = (b - a) / 64
    print(f"B={B} t16={a:.3f} t80={b:.3f} step={step*1e3:.1f} ms  decode tok/s={B/step:.1f}  with prefill tok/s={B*80/b:.1f}", flush=True)
