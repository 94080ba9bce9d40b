"""The kernel's weight matmuls (every layer + the head, B=1, the chain of scripts/probe_kernel_matmuls.py)
on four copies of the same packed weights, interleaved in one process: as packed ("orig"), an ordinary
XLA copy ("copy"), that copy collapsed into 2 MB pages (madvise MADV_HUGEPAGE + MADV_COLLAPSE), and
float32 panels written into anonymous memory marked MADV_HUGEPAGE before the first touch and handed to
JAX without a copy through DLPack ("mmap"). Linux only; not shipped (docs/benchmarks.md, 2026-12-07).

    python docs/experiments/kernel-zen4/pages_probe.py [1,8,16]
"""
import ctypes, mmap, statistics, sys, time
from pathlib import Path
import jax, jax.numpy as jnp, numpy as np
from specjax import api, skinny
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
from probe_kernel_matmuls import weight_chain  # noqa: E402

H = 2 << 20  # a transparent huge page
libc = ctypes.CDLL(None, use_errno=True)
libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def collapse(a):
    ptr = a.unsafe_buffer_pointer(); lo, hi = ptr // H * H, -(-(ptr + a.nbytes) // H) * H
    if libc.madvise(lo, hi - lo, 14) == 0:  # MADV_HUGEPAGE
        libc.madvise(lo, hi - lo, 25)  # MADV_COLLAPSE (Linux 6.1+)
    return a


def in_huge_pages(a):
    a = np.asarray(a)
    m = mmap.mmap(-1, a.nbytes + H, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # shared memory gets no THP
    off = -ctypes.addressof(ctypes.c_char.from_buffer(m)) % H
    m.madvise(mmap.MADV_HUGEPAGE, off, a.nbytes)
    buf = np.frombuffer(m, a.dtype, count=a.size, offset=off).reshape(a.shape)
    buf[...] = a  # first touch
    return jax.dlpack.from_dlpack(buf)  # aliases buf (checked: same pointer), keeps the mapping alive


is_packed = lambda x: isinstance(x, skinny.PackedWeight)
llm = api.load(None); cfg = llm.cfg; D = cfg.hidden_size
orig = skinny.pack_params(llm.params, cfg)
copy = lambda p: jax.block_until_ready(jax.tree.map(lambda x: x + 0, p))
variants = {"orig": orig, "copy": copy(orig),
            "collapsed": jax.tree.map(lambda w: w.replace(data=collapse(w.data)) if is_packed(w) else w,
                                      copy(orig), is_leaf=is_packed),
            "mmap": jax.tree.map(lambda w: w.replace(data=in_huge_pages(w.data)) if is_packed(w) else w,
                                 orig, is_leaf=is_packed)}
print("AnonHugePages:", open("/proc/meminfo").read().split("AnonHugePages:")[1].split("\n")[0].strip())


chain = weight_chain(cfg)
sizes = [int(t) for t in (sys.argv[1] if len(sys.argv) > 1 else "1,8,16").split(",")]
xs = {T: jnp.ones((1, T, D)) for T in sizes}
for T in sizes:
    for p in variants.values():
        jax.block_until_ready(chain(p, xs[T]))
res = {(n, T): [] for n in variants for T in sizes}
for _ in range(15):
    for T in sizes:
        for n, p in variants.items():
            t = time.perf_counter(); jax.block_until_ready(chain(p, xs[T])); res[(n, T)].append(time.perf_counter() - t)
for T in sizes:
    base = statistics.median(res[("orig", T)])
    print(f"T={T}: " + "  ".join(f"{n} {statistics.median(res[(n, T)]) * 1e3:.1f} ms ({statistics.median(res[(n, T)]) / base:.2f})"
                                  for n in variants))
