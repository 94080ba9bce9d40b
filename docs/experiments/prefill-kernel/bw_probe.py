"""Read bandwidth (numpy one thread; specjax.bench.memory.read_bandwidth) and the kernel's one-token weight
matmuls (probe_kernel_matmuls.weight_chain), four interleaved rounds.   python docs/experiments/prefill-kernel/bw_probe.py"""
import time, numpy as np, jax, jax.numpy as jnp, sys
sys.path.insert(0, "scripts")
from probe_kernel_matmuls import weight_chain
from specjax import api, skinny
from specjax.bench.memory import read_bandwidth
llm = api.load(None); cfg = llm.cfg
p = skinny.pack_params(llm.params, cfg)
chain = weight_chain(cfg)
x = jnp.ones((1, 1, cfg.hidden_size))
nb = sum(l.nbytes for l in jax.tree.leaves(p))
a = np.ones(nb // 4, np.float32)
for _ in range(4):  # numpy one thread, read_bandwidth (XLA), the kernel M = 1 chain, interleaved
    t = time.perf_counter(); a.sum(); np1 = nb / (time.perf_counter() - t)
    bw = read_bandwidth(nb, 3)
    jax.block_until_ready(chain(p, x)); ts = []
    for _ in range(5):
        t = time.perf_counter(); jax.block_until_ready(chain(p, x)); ts.append(time.perf_counter() - t)
    print(f"numpy 1-thread {np1/1e9:.1f} GB/s, read_bandwidth {bw/1e9:.1f} GB/s, kernel M=1 chain {min(ts)*1e3:.1f} ms = {nb/min(ts)/1e9:.1f} GB/s")
