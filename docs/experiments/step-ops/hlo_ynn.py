"""The compiled speculative loop's HLO: which fusions XLA:CPU hands to YNNPACK (ynn_fusion), with their
shapes, and the gathers / scatters.   python docs/experiments/step-ops/hlo_ynn.py"""
import re, collections
from specjax import api
g = api.Generator.load()
g.generate(["What is speculative decoding?"], max_new_tokens=8, chat=True)
for key, exe in g.engine._compiled.items():
    print(key[0])
    if not key[0].startswith("spec"): continue
    txt = exe.as_text()
    open("/tmp/spec_hlo.txt", "w").write(txt)
    comps = {}
    for m in re.finditer(r"^(%?[\w.\-]+) .*?\{\n(.*?)\n\}", txt, re.S | re.M):
        comps[m.group(1).lstrip("%")] = m.group(2)
    n = 0
    for line in txt.splitlines():
        if "ynn" in line and "fusion(" in line and "calls=" in line:
            n += 1
            callee = re.search(r"calls=%?([\w.\-]+)", line).group(1)
            body = comps.get(callee, "")
            ops = collections.Counter(re.findall(r"= \w+\[[^\]]*\][^ ]* (\w[\w-]*)\(", body))
            print(line.strip()[:160]); print("     ", dict(ops))
    print(n, "ynn fusions")
