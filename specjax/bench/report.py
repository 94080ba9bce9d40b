"""The benchmark's arithmetic and its reports: records in, per-category figures, a table and a plot out.

A *record* is one request run by one system: {"system", "category", "qid", "new_tokens", "llm_steps",
"seconds"} (llm_steps is None where a system does not expose it, e.g. transformers). Definitions, the
same as Spec-Bench's:

  * MAT (mean accepted tokens) of a set of requests = sum(new_tokens) / sum(llm_steps): tokens emitted
    per LLM forward, the bonus token included, so plain decoding is exactly 1.00;
  * tokens/s = sum(new_tokens) / sum(seconds) (each request's wall time: prefill + decoding);
  * speedup of a system over its baseline = its tokens/s / the baseline's tokens/s over the same
    requests (the rows both ran), per category and overall.

"overall" pools every record of a system (tokens and seconds summed over all categories), not a mean
of the per-category ratios.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Sequence

OVERALL = "overall"


def _pool(records: Sequence[dict]) -> dict:
    tokens = sum(r["new_tokens"] for r in records)
    seconds = sum(r["seconds"] for r in records)
    steps = [r["llm_steps"] for r in records]
    mat = tokens / sum(steps) if steps and all(s is not None for s in steps) and sum(steps) > 0 else None
    by: dict[str, int] = {}
    for r in records:  # accepted tokens each drafter had proposed (speculative systems)
        for name, n in (r.get("drafter_tokens") or {}).items():
            by[name] = by.get(name, 0) + n
    return {"requests": len(records), "new_tokens": tokens, "seconds": seconds, "mat": mat,
            "tokens_per_s": tokens / seconds if seconds > 0 else None, "accepted_by": by}


def drafter_table(summary: dict) -> str:
    """Markdown: per speculative system, the share of its new tokens each drafter had proposed
    (overall; a token proposed by several drafters counts for each; the rest are bonus tokens)."""
    rows = [(s, c[OVERALL]) for s, c in summary.items() if c.get(OVERALL, {}).get("accepted_by")]
    names = list(dict.fromkeys(n for _, f in rows for n in f["accepted_by"]))
    if not rows:
        return ""
    lines = ["| system | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for s, f in rows:
        lines.append(f"| {s} | " + " | ".join(
            _fmt(f["accepted_by"][n] / f["new_tokens"] if n in f["accepted_by"] and f["new_tokens"] else None, ".1%")
            for n in names) + " |")
    return "\n".join(lines)


def summarize(records: Iterable[dict], baselines: dict[str, str]) -> dict:
    """records -> {system: {category | "overall": {"requests", "new_tokens", "seconds", "mat",
    "tokens_per_s", "speedup", "baseline"}}}.

    baselines: system -> the system its speedup is measured against (a system absent from it, or its
    own baseline, gets speedup 1.0 against itself). The speedup pools only the requests (category, qid)
    that both the system and its baseline ran.
    """
    by_sys: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_sys[r["system"]].append(r)
    out: dict[str, dict] = {}
    for system, rows in by_sys.items():
        base_name = baselines.get(system, system)
        base_rows = {(r["category"], r["qid"]): r for r in by_sys.get(base_name, [])}
        cats = sorted({r["category"] for r in rows})
        out[system] = {}
        for cat in cats + [OVERALL]:
            mine = [r for r in rows if cat == OVERALL or r["category"] == cat]
            fig = _pool(mine)
            paired = [r for r in mine if (r["category"], r["qid"]) in base_rows]
            theirs = _pool([base_rows[(r["category"], r["qid"])] for r in paired])
            ours = _pool(paired)
            fig["speedup"] = (ours["tokens_per_s"] / theirs["tokens_per_s"]
                              if paired and ours["tokens_per_s"] and theirs["tokens_per_s"] else None)
            fig["baseline"] = base_name
            out[system][cat] = fig
    return out


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def markdown_table(summary: dict, value: str, systems: Sequence[str] | None = None) -> str:
    """One markdown table: a row per category (overall last), a column per system, cells `value`
    ("mat", "tokens_per_s" or "speedup")."""
    systems = list(systems or summary)
    cats = sorted({c for s in systems for c in summary[s] if c != OVERALL}) + [OVERALL]
    spec = {"mat": ".2f", "tokens_per_s": ".1f", "speedup": ".2f"}[value]
    lines = ["| category | " + " | ".join(systems) + " |", "|---|" + "---|" * len(systems)]
    for c in cats:
        cells = [_fmt(summary[s].get(c, {}).get(value), spec) for s in systems]
        name = f"**{c}**" if c == OVERALL else c
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def throughput(records: Iterable[dict]) -> list[dict]:
    """Batch-mode records {"system", "batch_size", "new_tokens", "seconds", "llm_steps"} (one per batch)
    -> one row per (system, batch size): {"system", "batch_size", "tokens_per_s", "mat", ...}."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["system"], r["batch_size"])].append(r)
    return [{"system": s, "batch_size": b, **_pool(rows)} for (s, b), rows in sorted(groups.items())]


def plot(summary: dict, path: str | Path, systems: Sequence[str], title: str) -> Path:
    """Grouped bars: speedup over each system's baseline, per category (overall last)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cats = sorted({c for s in systems for c in summary[s] if c != OVERALL}) + [OVERALL]
    x = np.arange(len(cats))
    width = 0.8 / max(len(systems), 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(cats) + 2), 4.5))
    for i, s in enumerate(systems):
        vals = [summary[s].get(c, {}).get("speedup") for c in cats]
        vals = [np.nan if v is None else v for v in vals]  # no bar, rather than a bar at 0
        ax.bar(x + (i - (len(systems) - 1) / 2) * width, vals, width, label=s)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(x, cats, rotation=35, ha="right")
    ax.set_ylabel("speedup (tokens/s over baseline)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_json(obj, path: str | Path) -> Path:
    Path(path).write_text(json.dumps(obj, indent=2) + "\n")
    return Path(path)
