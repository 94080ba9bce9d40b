"""Where the default speculative loop's time goes (jax.profiler over a 128-token generation), by op name."""
import collections, glob, shutil, sys, time
import jax
from specjax import api
mode = sys.argv[1] if len(sys.argv) > 1 else "spec"
g = api.Generator.load(mode="incremental") if mode == "inc" else api.Generator.load()
prompt = "What is speculative decoding?"
g.generate([prompt], max_new_tokens=128, chat=True)
d = f"/tmp/probe/spec_{mode}"; shutil.rmtree(d, ignore_errors=True)
jax.profiler.start_trace(d)
t = time.perf_counter(); r = g.generate([prompt], max_new_tokens=128, chat=True)[0]; wall = time.perf_counter() - t
jax.profiler.stop_trace()
steps = r["llm_steps"]
print(mode, "steps", steps, f"wall {wall:.3f}s", f"{wall / steps * 1e3:.2f} ms/step")
from jax.profiler import ProfileData
f = glob.glob(f"{d}/**/*.xplane.pb", recursive=True)[0]
pd = ProfileData.from_file(f)
tot = collections.Counter(); cnt = collections.Counter()
for plane in pd.planes:
    for line in plane.lines:
        if "python" in line.name.lower(): continue
        for ev in line.events:
            name = ev.name.split(".")[0]
            tot[(line.name[:24], name)] += ev.duration_ns; cnt[(line.name[:24], name)] += 1
for (ln, n), ns in tot.most_common(28):
    print(f"{ns / 1e6 / steps:8.3f} ms/step n/step={cnt[(ln, n)] / steps:7.1f}  {ln:24s} {n}")
# Kernel calls (ffi_call) on XLA's threads: total busy time, and time with two running at once.
evs = sorted((ev.start_ns, ev.start_ns + ev.duration_ns) for plane in pd.planes for line in plane.lines
             if "Eigen" in line.name for ev in line.events if ev.name.startswith("ffi_call"))
pts = sorted([(s, 1) for s, e in evs] + [(e, -1) for s, e in evs])
cur, last, both, busy = 0, None, 0.0, 0.0
for t, dlt in pts:
    if last is not None:
        both += (t - last) if cur >= 2 else 0
        busy += (t - last) if cur >= 1 else 0
    cur, last = cur + dlt, t
print(f"kernel calls {len(evs) / steps:.1f} a step, {busy / 1e6 / steps:.2f} ms a step, two at once {both / 1e6 / steps:.3f} ms a step")
