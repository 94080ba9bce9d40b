"""The feature SSM's attention limited to its last W positions (setup.FEATURE_WINDOW, feature.Config.window;
first run with the patch window.patch's feature.WINDOW; its training samples are
at most 256 positions long) vs unlimited, on long prompts: MAT of feature + lookup at budget 8 and of
the feature SSM alone (its own dynamic tree), greedy, 128 tokens, the watch off, one window per process.

    python docs/experiments/drafter-window/window_mat.py W|none SOURCE [COUNT]
SOURCE: specbench (Spec-Bench's COUNT longest first turns: evaluation only, nothing tuned on it) or
heldout (context_tasks.jsonl lines 5000+ whose prompt is over 600 tokens, the first COUNT)."""
import json, sys
from itertools import islice
from specjax import api
from specjax.drafters import setup

W = None if sys.argv[1] == "none" else int(sys.argv[1])
source, count = sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 6
setup.FEATURE_WINDOW = W
gens = {"feature+lookup b8": api.Generator.load(drafters="feature,lookup", budget=8),
        "feature alone": api.Generator.load(drafters="feature")}
tok = gens["feature alone"].llm.tokenizer
if source == "specbench":
    rows = [json.loads(l) for l in open("/work/shared/data/eval/spec_bench_questions.jsonl")]
    texts = [r["turns"][0] for r in sorted(rows, key=lambda r: -len(r["turns"][0]))[:count]]
else:
    texts = []
    with open("/work/shared/data/boost_prompts/context_tasks.jsonl") as f:
        for line in islice(f, 5000, None):
            r = json.loads(line)
            t = r["messages"][0]["content"] if "messages" in r else r.get("prompt", "")
            if len(tok.encode(t, chat=True)) > 600:
                texts.append(t)
            if len(texts) == count:
                break
ps = [tok.encode(t, chat=True) for t in texts]
print(f"W={W} {source}: {len(ps)} prompts of {min(map(len, ps))}-{max(map(len, ps))} tokens")
for name, g in gens.items():
    g.engine.fallback = None
    steps = toks = 0
    for p in ps:
        r = g.generate_ids([p], 128, batch_size=1, batching="static")[0]
        steps += r.llm_steps; toks += len(r.token_ids)
    print(f"  {name}: MAT {toks / steps:.3f} ({toks} tokens, {steps} steps)")
