"""The speculative step's profile (docs/experiments/spec-overhead/prof_both.py, run as is) and then the
other XLA ops (beside the kernel calls) by name, ms and count per LLM step, the largest first.

    python docs/experiments/step-ops/prof_ops.py
"""
import collections, re, runpy
from pathlib import Path

g = runpy.run_path(str(Path(__file__).resolve().parents[1] / "spec-overhead" / "prof_both.py"), run_name="__main__")
pd, mods, steps = g["pd"], g["mods"], g["steps"]
# The other ops by name (numbers stripped), ms per step, the largest first.
for n, mod in mods.items():
    by = collections.Counter(); cnt = collections.Counter()
    for plane in pd.planes:
        for line in plane.lines:
            if "Eigen" not in line.name and "PjRt" not in line.name: continue
            for ev in line.events:
                st = dict((k, v) for k, v in ev.stats if k == "hlo_module")
                if st.get("hlo_module") != mod or ev.name.startswith(("ffi_call", "ThunkExecutor", "while")): continue
                key = re.sub(r"[.\d]+$", "", ev.name)
                by[key] += ev.duration_ns; cnt[key] += 1
    print(n, "top other ops (ms/step, count/step):")
    for k, v in by.most_common(25):
        print(f"   {k:45s} {v / steps[n] / 1e6:6.3f} {cnt[k] / steps[n]:6.1f}")
