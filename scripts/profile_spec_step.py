"""Where a speculative step's time goes, on the default LLM and its shipped drafters (B=1, greedy).

    python scripts/profile_spec_step.py [--tree 1,1,3,1,1,1,1,1] [--llm DIR --ssm S ...] [--repeats 20]

Times, each jitted alone on a real mid-generation state (a chat prompt, a few steps in), medians over
interleaved repeats: each SSM's drafting (catch-up read + levels), the tree merge, the LLM's
verification forward + LM head, the greedy verification logic, the KV commit, and one whole jitted
spec_step; then the engine's real per-step time (a 128-token generation: seconds / LLM steps, the
prefill included) next to an incremental step. The rows that are not the whole step add up to less
than it where XLA fuses them; "loop and bookkeeping" is the whole step minus the parts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from specjax import api, model, tree as tree_lib, verify  # noqa: E402
from specjax.draft import draft_tree  # noqa: E402
from specjax.engine import Engine  # noqa: E402
from specjax.sampling import SamplingConfig  # noqa: E402
from specjax.speculative import commit_path, spec_step  # noqa: E402

PROMPT = "Explain how a refrigerator keeps food cold, step by step."


def median_ms(fns: dict, repeats: int) -> dict:
    for f in fns.values():
        jax.block_until_ready(f())
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f())
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v)) * 1e3 for k, v in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llm", default=None)
    ap.add_argument("--ssm", action="append", default=[])
    ap.add_argument("--tree", default=None)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)

    gen = api.Generator.load(llm=args.llm, ssms=args.ssm, tree=args.tree or "3", mode="spec", drafters="ssm")
    llm, ssms, tcfg = gen.llm, gen.ssms, gen.tree
    eos = gen.eos_ids()
    prompt = llm.tokenizer.encode(PROMPT, chat=True)
    engine = gen.engine
    state, cfg = engine.init_spec_state([prompt], 128, SamplingConfig(), 0, eos)
    ssm_params = engine.drafter_params()
    step = jax.jit(spec_step, static_argnames=("cfg",))
    for _ in range(3):  # a few steps in: caches and the SSMs' catch-up look as they do mid-generation
        state = step(llm.params, ssm_params, state, cfg=cfg)
    base = state.base
    P, S = base.length, base.tokens.shape[1]
    topo = tree_lib.ssm_topology(tcfg.expansion)
    key = jax.random.PRNGKey(0)

    def draft_fn(i):
        f = jax.jit(lambda params, cache, seq, ssm_len, P: draft_tree(
            key, params, ssms[i].cfg, cache, seq, ssm_len, P, topo, cfg.sampling, False)[0])
        return lambda: f(ssms[i].params, state.drafters[i].cache, base.tokens, state.drafters[i].ssm_len, P)

    drafts = [draft_tree(key, s.params, s.cfg, state.drafters[i].cache, base.tokens, state.drafters[i].ssm_len, P, topo,
                         cfg.sampling, False)[0] for i, s in enumerate(ssms)]
    node_tokens = jnp.concatenate([drafts[0]] + [d[:, 1:] for d in drafts[1:]], axis=1)
    merge = jax.jit(lambda t: tree_lib.merge_trees(t, tcfg))
    tree = merge(node_tokens)
    N = tree.tokens.shape[1]

    @jax.jit
    def verify_forward(params, cache, tree, P):
        mask = tree_lib.tree_attention_mask(tree, P, S, P)
        slots = P[:, None] + jnp.arange(N)[None, :]
        hidden, cache = model.forward(params, llm.cfg, tree.tokens, P[:, None] + tree.depth, cache, slots, mask)
        return model.lm_head(params, llm.cfg, hidden), cache

    logits, vcache = verify_forward(llm.params, base.cache, tree, P)
    greedy = jax.jit(lambda lg, tr: verify.greedy_verify(lg, tr.tokens, tr.parents, tr.valid, tcfg.depth))
    res = greedy(logits, tree)
    commit = jax.jit(lambda c, P, path, n: commit_path(c, P, path, n, jnp.ones_like(n, bool)))

    fns = {f"draft, SSM {i} ({len(tcfg.expansion)} levels)": draft_fn(i) for i in range(len(ssms))}
    fns.update({
        f"merge ({N} nodes)": lambda: merge(node_tokens),
        f"verify: LLM forward + LM head over {N} tokens": lambda: verify_forward(llm.params, base.cache, tree, P),
        "verify: greedy matching": lambda: greedy(logits, tree),
        "commit accepted K/V": lambda: commit(vcache, P, res.path, res.num_accepted),
        "whole spec_step (one jit)": lambda: step(llm.params, ssm_params, state, cfg=cfg),
    })
    ms = median_ms(fns, args.repeats)

    # The engine's loop: a real generation, per LLM step, next to incremental decoding.
    inc = Engine(llm)
    inc.generate_incremental([prompt], 8, SamplingConfig(), 0, eos)
    engine.generate_spec([prompt], 8, SamplingConfig(), 0, eos)
    [r_spec] = engine.generate_spec([prompt], 128, SamplingConfig(), 0, eos)
    [r_inc] = inc.generate_incremental([prompt], 128, SamplingConfig(), 0, eos)
    whole = ms["whole spec_step (one jit)"]
    parts = sum(v for k, v in ms.items() if k != "whole spec_step (one jit)")
    print(f"tree {','.join(map(str, tcfg.expansion))}, {len(ssms)} SSM(s), {N} tree tokens, cache {S} slots")
    print(f"{'component':48s} {'ms':>8s} {'% of step':>10s}")
    for k, v in ms.items():
        print(f"{k:48s} {v:8.2f} {100 * v / whole:9.1f}%")
    print(f"{'loop and bookkeeping (whole - parts)':48s} {whole - parts:8.2f} {100 * (whole - parts) / whole:9.1f}%")
    spec_step_ms = 1e3 * r_spec.seconds / r_spec.llm_steps
    inc_step_ms = 1e3 * r_inc.seconds / r_inc.llm_steps
    print(f"\nengine, 128 new tokens: speculative {spec_step_ms:.1f} ms per LLM step (MAT "
          f"{r_spec.mean_accepted:.2f}), incremental {inc_step_ms:.1f} ms per step (prefill included)")
    print(f"step cost ratio {spec_step_ms / inc_step_ms:.2f} = the MAT needed to break even; speedup "
          f"{(len(r_spec.token_ids) / r_spec.seconds) / (len(r_inc.token_ids) / r_inc.seconds):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
