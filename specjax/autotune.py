"""`--tree auto`: choose the drafters and the node budget for the machine this runs on.

    costs (measured once per machine, cached) x acceptance (shipped with the drafters) -> choice

Costs, in seconds, measured with the engine's own params and model.forward (so a faster matmul
kernel is measured when it lands): verify(N), one LLM forward + LM head over N tree tokens
(N = 1 is an incremental step), for N in VERIFY_SIZES; each drafter's own cost per step (an SSM's
catch-up and levels; a feature SSM's catch-up and levels, its propose timed whole; the recycling
update's top-k over the verified nodes' logits; lookup's matching); and "incremental", a step of the
real incremental loop (the forward plus the loop's own work: sampling, bookkeeping, the while loop),
which is the baseline and whose excess over verify(1) is charged to speculative steps too. The LLM is
timed whole (one compile per size; a few seconds for small models).

Acceptance: node_acceptance[name][j] = P(drafter's local node j is accepted), per step, from
drafters/acceptance.json. One drafter with budget N expects 1 + the sum of its N largest node
acceptances (its nodes are distinct sequences: each accepted token is one node). Merged drafters
propose the same easy tokens (a sum counts them twice) and the budget picks each step's best nodes by
live scores (a sum of averages misses that): a mix uses its measured
MAT at that budget where acceptance.json has it (scripts/measure_acceptance.py --merged), else the
sum times the overlap factor measured on the shipped mixes. The choice maximises expected tokens /
step seconds, taking the smallest budget within MARGIN of the best (a bigger tree costs the loop more
than the forward curve shows); if no choice beats plain decoding by MARGIN, decoding is incremental (and a request
whose speculation runs slower than incremental falls back while it runs: specjax.fallback).

The cache: <user cache>/autotune/costs-<key>.json, key = processor (or accelerator) model, jax
version, the matmul path (CPU kernel or XLA's dot), specjax's own code (a faster step in a new
version must not be judged by the old one's costs) and the models' configs. A file that does not parse, or whose key or fields do not match,
is measured again and rewritten.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np

VERIFY_SIZES = (1, 2, 4, 8, 16, 32)
BUDGETS = (1, 2, 4, 8, 16, 32)
MARGIN = 1.03  # a choice must beat incremental decoding, and a bigger budget a smaller one, by 3%
FORMAT = 2  # 2: the real incremental loop's step is measured ("incremental")


@dataclasses.dataclass(frozen=True)
class Choice:
    drafters: tuple[str, ...]  # () = incremental decoding
    budget: int | None
    expected_tokens: float
    speedup: float  # estimated, over incremental decoding
    reason: str


def processor_name() -> str:
    import jax

    dev = jax.devices()[0]
    if dev.platform != "cpu":
        return f"{dev.platform}:{dev.device_kind}"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return "cpu:" + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu:" + (platform.processor() or platform.machine())


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """A hash of specjax's sources (Python and the CPU kernel's C++): what decoding costs depends on them."""
    root = Path(__file__).parent
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.suffix in (".py", ".cc") and p.is_file()):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def cache_key(engine) -> dict:
    import jax

    from specjax import skinny

    models = [engine.llm.cfg.to_json()] + [s.cfg.to_json() for s in engine.ssms]
    if getattr(engine, "feature_ssm", None) is not None:
        models.append(engine.feature_ssm.cfg.to_json())
    return {"format": FORMAT, "processor": processor_name(), "jax": jax.__version__,
            "matmul": skinny.describe(engine.llm.params),  # the CPU kernel changes every cost
            "code": code_hash(),
            "models": hashlib.sha256("\n".join(models).encode()).hexdigest()[:16],
            "drafters": [d.name for d in engine.drafters]}


def cache_path(key: dict) -> Path:
    """$SPECJAX_AUTOTUNE_DIR, else <specjax's user cache dir>/autotune, one file per key."""
    import os

    from specjax.default_model import cache_dir

    h = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(os.environ["SPECJAX_AUTOTUNE_DIR"]) if os.environ.get("SPECJAX_AUTOTUNE_DIR") else cache_dir() / "autotune"
    return root / f"costs-{h}.json"


def _valid_costs(d, key: dict, drafter_names) -> bool:
    try:
        if d["key"] != key:
            return False
        v = d["verify"]
        if sorted(int(n) for n in v) != list(VERIFY_SIZES):
            return False
        vals = [float(x) for x in v.values()] + [float(d["drafters"][n]) for n in drafter_names]
        inc = float(d["incremental"])
        return (all(np.isfinite(x) and x >= 0 for x in vals + [inc]) and min(float(x) for x in v.values()) > 0
                and inc > 0)
    except (KeyError, TypeError, ValueError, AttributeError):
        return False


def load_or_measure(engine, log=None) -> tuple[dict, bool]:
    """(costs, measured_now): {"verify": {N: s}, "drafters": {name: s per step}} from the cache, or
    measured (and cached) when the cache is missing, corrupt or for another machine/model."""
    key = cache_key(engine)
    path = cache_path(key)
    names = [d.name for d in engine.drafters]
    if path.is_file():
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            d = None
        if d is not None and _valid_costs(d, key, names):
            return {"verify": {int(n): float(s) for n, s in d["verify"].items()},
                    "drafters": {n: float(d["drafters"][n]) for n in names},
                    "incremental": float(d["incremental"])}, False
        if log:
            log(f"autotune: {path} is corrupt or stale: measuring again")
    costs = measure(engine, log)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"key": key, **costs}, indent=1))
    tmp.replace(path)
    return costs, True


# ----------------------------------------------------------------------------- measurement


def measure_verify(llm, sizes=VERIFY_SIZES, repeats: int = 5) -> dict[int, float]:
    """verify(N): the whole LLM's forward + LM head over N tree tokens (sizes interleaved, fastest of
    `repeats`: another job on the machine only ever adds time, and a cost measured beside one stays in
    the cache; measured on a busy Zen 3, medians put a feature SSM's step at 9.5 ms, quiet 2.3 ms).
    (Timing a 1- and a 2-layer slice and scaling the difference compiles faster, but multiplies the
    noise of a shared machine by the layer count: measured here, it was off by 4x.)"""
    from specjax.tree_search import tree_forward_seconds

    return tree_forward_seconds(llm.params, llm.cfg, sizes, repeats=repeats, stat=np.min)


def measure_drafter(engine, d, num_nodes: int, repeats: int = 7) -> float:
    """Seconds one step of drafter d adds, batch 1."""
    import jax
    import jax.numpy as jnp

    if d.kind == "ssm":
        from specjax.tree_search import Costs, step_seconds, tree_forward_seconds

        ssm = engine.ssms[d.index]
        widths = sorted({len(d.expansion) + 1, *_level_widths(d.expansion)})
        t = tree_forward_seconds(ssm.params, ssm.cfg, widths, repeats=repeats, stat=np.min)
        costs = Costs(draft_tokens=tuple(widths), draft_seconds=tuple(t[w] for w in widths),
                      verify_tokens=(1,), verify_seconds=(0.0,))
        return step_seconds(d.expansion, 1, costs)
    if d.kind == "feature":
        return measure_feature(engine, d, repeats)
    if d.kind == "recycle":
        V = engine.llm.cfg.vocab_size
        logits = jax.random.normal(jax.random.PRNGKey(0), (1, num_nodes, V))
        f = jax.jit(lambda x: jax.lax.top_k(x, d.k)[1])
        return _time(f, (logits,), repeats)
    from specjax.drafters import lookup

    S = 320
    toks = jax.random.randint(jax.random.PRNGKey(0), (1, S), 0, 50)
    f = jax.jit(lambda t: lookup.find(t, jnp.asarray([200]), d.max_ngram))
    return _time(f, (toks,), repeats)


def measure_feature(engine, d, repeats: int = 7, num_slots: int = 320, root: int = 200) -> float:
    """One propose of feature drafter d, batch 1, with the engine's params: a catch-up of M + 1 pairs
    (M = its own depth) and one forward per tree level but the last, at root slot `root`."""
    import types

    import jax
    import jax.numpy as jnp

    from specjax import model
    from specjax.drafters import feature
    from specjax.sampling import SamplingConfig

    fcfg = d.model
    W = d.topology.max_depth + 1
    Sd = num_slots + feature.num_run(d.expansion, d.frontier)
    state = feature.State(cache=model.init_cache(fcfg.layer, 1, Sd),
                          o=jnp.zeros((1, fcfg.layer.hidden_size), jnp.float32),
                          feats=jax.random.normal(jax.random.PRNGKey(0), (1, W, fcfg.feature_width)),
                          next=jnp.ones((1, W), jnp.int32), count=jnp.full((1,), W, jnp.int32),
                          start=jnp.full((1,), root - W, jnp.int32))
    tokens = jnp.ones((1, num_slots), jnp.int32)

    def f(params, state, tokens, length):
        base = types.SimpleNamespace(tokens=tokens, length=length, done=jnp.zeros((1,), bool))
        prop, st = feature.propose(jax.random.PRNGKey(0), params, state, d, base, SamplingConfig(), False)
        return prop.tokens, st.o

    params = feature.engine_params(engine.feature_ssm, engine.llm.params)
    return _time(jax.jit(f), (params, state, tokens, jnp.full((1,), root, jnp.int32)), repeats)


def _level_widths(expansion):
    w, out = 1, []
    for k in expansion[:-1]:
        w *= k
        out.append(w)
    return out


def _time(f, args, repeats: int) -> float:
    import jax

    jax.block_until_ready(f(*args))
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t)
    return float(np.min(ts))


def measure_incremental(engine, prompt_len: int = 100, repeats: int = 3, rows: int = 1) -> float:
    """Seconds per step of the engine's real incremental loop (B = rows, 1 for the choice; greedy): the forward that
    verify(1) times plus the loop's own work (sampling, bookkeeping, the while loop). Calls of 8 and
    40 steps run back to back on one state; the difference over 32 steps leaves out the per-call
    cost. Median of `repeats` (one extra compile of the loop, once per machine)."""
    import jax

    from specjax.engine import _STEPS
    from specjax.incremental import STEP_ROOM, incremental_loop
    from specjax.sampling import SamplingConfig

    cfg = engine.llm.cfg
    prompt = [int(t) for t in np.arange(prompt_len) % max(cfg.vocab_size - 1, 1) + 1]
    static = dict(cfg=cfg, sampling_cfg=SamplingConfig(), eos_ids=())
    out = []
    for _ in range(repeats):
        state, _ = engine.init_state([prompt] * rows, 64, 0, STEP_ROOM, 64)
        exe = engine._executable("incremental", incremental_loop, (engine.llm.params, state, _STEPS), static)
        state = jax.block_until_ready(exe(engine.llm.params, state, np.int32(4)))  # warm
        t0 = time.perf_counter()
        state = jax.block_until_ready(exe(engine.llm.params, state, np.int32(8)))
        t1 = time.perf_counter()
        jax.block_until_ready(exe(engine.llm.params, state, np.int32(40)))
        t2 = time.perf_counter()
        out.append(((t2 - t1) - (t1 - t0)) / 32)
    return max(float(np.median(out)), 1e-9)


# verify(1) above this times the incremental loop's step means one of them was timed while something
# else had the processor (quiet, verify(1) is 1.0-1.1x: its per-call cost).
CONSISTENT = 1.25
ATTEMPTS = 3


def measure(engine, log=None) -> dict:
    """The costs, timed until verify(1) and the incremental step agree (a busy machine slows one
    measurement and not the other, and the choice would follow the noise): up to ATTEMPTS tries, else
    the most consistent one, its curve scaled to the incremental step (the curve's ratios are timed
    side by side, so they hold)."""
    tries = []
    for attempt in range(ATTEMPTS):
        verify = measure_verify(engine.llm)
        inc = measure_incremental(engine)
        ratio = verify[1] / inc
        tries.append((abs(np.log(ratio)), verify, inc))
        if ratio <= CONSISTENT:
            break
        if log:
            log(f"autotune: verify(1) {verify[1] * 1e3:.1f} ms vs the incremental step {inc * 1e3:.1f} ms: "
                f"the machine was busy{', measuring again' if attempt + 1 < ATTEMPTS else ''}")
    _, verify, inc = min(tries, key=lambda t: t[0])
    if verify[1] / inc > CONSISTENT:
        verify = {n: s * inc / verify[1] for n, s in verify.items()}
        if log:
            log("autotune: verification costs scaled to the incremental step (their ratios kept)")
    drafters = {d.name: measure_drafter(engine, d, 16) for d in engine.drafters}
    return {"verify": verify, "drafters": drafters, "incremental": inc}


# ----------------------------------------------------------------------------- the choice


def node_acceptance(d, sampled: bool = False) -> np.ndarray:
    """P(local node j is accepted) per step, from the shipped statistics (greedy or sampled) or the
    drafter's rates."""
    from specjax.drafters import acceptance
    from specjax.drafters.base import path_scores

    shipped = acceptance.node_acceptance(d.name, d.topology.num_nodes, sampled)
    if shipped is not None:
        return shipped
    return path_scores(d.topology, acceptance.rate_fn(d.rates or acceptance.PRIORS[d.kind]))


def _interp(table: dict[int, float], n: int) -> float:
    xs = sorted(table)
    ys = [table[x] for x in xs]
    if n <= xs[-1]:
        return float(np.interp(n, xs, ys))
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return ys[-1] + slope * (n - xs[-1])


def expected_tokens(subset: tuple, n: int, pool: np.ndarray, overlap: float,
                    sampled: bool = False) -> tuple[float | None, str]:
    """Expected tokens per step of drafters `subset` merged at budget n, and where it comes from: a
    single drafter's n best node acceptances summed (its nodes are distinct sequences); a mix's
    measured MAT where shipped at that budget; else the members' summed node acceptances times the
    overlap factor measured on the shipped mixes (merged drafters propose the same easy tokens); None
    for a mix of drafters the shipped file measured alone but not together (acceptance.only_measured_mixes)."""
    from specjax.drafters import acceptance

    s = float(pool[:n].sum())
    if len(subset) == 1:
        return 1.0 + s, "measured alone"
    names = tuple(d.name for d in subset)
    measured = acceptance.merged_mat(names, sampled)
    if measured is not None and n in measured:
        return measured[n], "measured mix"
    if acceptance.only_measured_mixes(names, sampled):
        return None, "not measured"
    return 1.0 + overlap * s, f"estimated: summed x{overlap:.2f} overlap"


def candidates(costs: dict, drafters: tuple, budgets=BUDGETS, sampled: bool = False) -> list[tuple]:
    """Every (est. speedup, drafter names, budget, expected tokens, step seconds, source) the choice
    weighs: each non-empty subset of `drafters` (in the given order) at each budget its nodes fill;
    sampled: from the acceptance measured under sampling (acceptance.section).

    A step's cost is an incremental step (costs["incremental"], the real loop's; verify(1) when not
    measured) + what verifying N + 1 tokens costs beyond one (verify(N + 1) - verify(1), measured side
    by side) + the drafters' own. (verify(1) itself, a jitted call per forward, carries a per-call cost
    that the loop does not pay: only differences of the curve are used.)"""
    from specjax.drafters import acceptance

    inc = float(costs.get("incremental", costs["verify"][1]))
    loop = inc - costs["verify"][1]  # verify(N + 1) + loop = inc + (verify(N + 1) - verify(1))
    acc = {d.name: node_acceptance(d, sampled) for d in drafters}
    overlap = acceptance.overlap_factor(sampled)
    out = []
    for r in range(1, len(drafters) + 1):
        for subset in itertools.combinations(drafters, r):
            pool = np.sort(np.concatenate([acc[d.name] for d in subset]))[::-1]
            draft_s = sum(costs["drafters"][d.name] for d in subset)
            for n in budgets:
                if n > len(pool):
                    continue
                e, source = expected_tokens(subset, n, pool, overlap, sampled)
                if e is None:
                    continue
                t = draft_s + _interp(costs["verify"], n + 1) + loop
                out.append((e / t * inc, tuple(d.name for d in subset), n, e, t, source))
    return out


def speedup_at_rows(costs: dict, choice: Choice, rows: int) -> float:
    """The choice's estimated speedup over incremental decoding when the loop runs `rows` rows at a
    time (the choice itself is made for one). A step's matmuls then take rows x (budget + 1) tree
    tokens against rows for an incremental step, and on a CPU that many rows stop being free: measured
    on Zen 4, 32 tree tokens cost ~3x one token while 8 incremental rows cost ~1.2x, so the choice
    that gives 1.5x alone ran at half of incremental's speed in a batch of 8 (docs/benchmarks.md). The
    verify curve is taken as a function of the step's total rows (interpolated, linear past its end),
    the drafters' cost scaled as the LLM's from 1 to `rows` rows, what the loop adds as at one row."""
    if not choice.drafters or choice.budget is None:
        return 1.0
    v = {int(n): float(x) for n, x in costs["verify"].items()}
    loop = float(costs.get("incremental", v[1])) - v[1]
    inc = _interp(v, rows) + loop
    draft = sum(float(costs["drafters"][n]) for n in choice.drafters) * _interp(v, rows) / v[1]
    spec = draft + _interp(v, rows * (choice.budget + 1)) + loop
    return choice.expected_tokens * inc / spec


def choose(costs: dict, drafters: tuple, budgets=BUDGETS, allow_incremental: bool = True,
           sampled: bool = False) -> Choice:
    """The best mix of drafters and budget (`candidates`), or incremental (unless allow_incremental
    is False: --mode spec then gets the best tree even if it is slower). sampled: for sampled decoding
    (temperature > 0), from the acceptance measured under sampling where shipped."""
    from specjax.drafters import acceptance

    inc = float(costs.get("incremental", costs["verify"][1]))
    cands = candidates(costs, drafters, budgets, sampled)
    top = max(cands, key=lambda c: c[0], default=None)
    if top is not None:
        # The smallest budget within MARGIN of the best: a bigger tree costs more in the loop than the
        # forward curve says (Zen 4, README prompt: feature+lookup budget 8 est. 2.01x vs budget 4
        # 1.98x, but its step measured 1.16x budget 4's where the curve gave 1.08x, and it ran 7% slower).
        top = min((c for c in cands if c[0] * MARGIN >= top[0]), key=lambda c: (c[2], -c[0]))
    if top is None or (allow_incremental and top[0] < MARGIN):
        s = top[0] if top else 0.0
        return Choice((), None, 1.0, 1.0,
                      f"incremental: verifying 2 tokens costs {costs['verify'][2] / costs['verify'][1]:.2f}x one on "
                      f"this machine, the best tree would reach {s:.2f}x")
    speedup, names, n, e, t, source = top
    t_sampled = acceptance.sampled_temperature() if sampled else None
    if t_sampled is not None:
        source += f", sampled at T = {t_sampled:g}"
    elif sampled:
        source += ", greedy: no sampled statistics shipped"
    return Choice(names, n, e, speedup,
                  f"{'+'.join(names)} budget {n}: {e:.2f} expected tokens per step ({source}) at "
                  f"{t / inc:.2f}x an incremental step's cost (verify {n + 1} = "
                  f"{_interp(costs['verify'], n + 1) / costs['verify'][1]:.2f}x one token) -> est. {speedup:.2f}x incremental")
