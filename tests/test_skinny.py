"""The CPU skinny-matmul kernel (specjax.skinny, specjax/kernels/): parity with float64 and XLA's dot on
awkward shapes, bf16 weights, every instruction set this processor has, use inside jit loops, the
packed model against the unpacked one, and the fallback when the kernel is disabled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from specjax import model as M
from specjax import skinny
from specjax.config import ModelConfig
from specjax.engine import Engine, LoadedModel
from specjax.tree import TreeConfig

# Nothing here is skipped: where tests run (CI included) the kernel must build (a C++ compiler and
# jaxlib's headers); test_kernel_is_available fails with the reason when it does not.

# M rows (1..64, tiles of every remainder; a prefill's many rows over several k-major blocks of x), K
# (1, odd, > one panel's L1 share), N (< one panel, not a multiple of 16, several thread chunks).
SHAPES = [(1, 1, 1), (1, 7, 15), (2, 33, 16), (3, 64, 17), (5, 100, 33), (6, 577, 100), (7, 576, 1536),
          (8, 576, 1537), (11, 96, 200), (13, 129, 49), (16, 576, 1536), (17, 300, 31), (31, 64, 257),
          (33, 50, 65), (48, 577, 96), (63, 31, 300), (64, 576, 1536),
          (65, 64, 33), (129, 577, 100), (300, 96, 1537)]


def rel_err(got, want) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / max(np.max(np.abs(want)), 1e-30))


def case(m, k, n, seed=0):
    rng = np.random.default_rng(seed + 1000 * m + k + n)
    return rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)


def test_kernel_is_available():
    ok, line = skinny.status()
    assert ok and "kernel (" in line, line


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_matches_float64_and_xla(m, k, n):
    x, w = case(m, k, n)
    want = x.astype(np.float64) @ w.astype(np.float64)
    got = skinny.matmul(jnp.asarray(x), skinny.pack(w))
    assert got.shape == (m, n) and got.dtype == jnp.float32
    assert rel_err(got, want) < 1e-5
    xla = np.asarray(jnp.asarray(x) @ jnp.asarray(w))
    assert rel_err(got, xla.astype(np.float64)) < 1e-5


def test_a_row_does_not_depend_on_the_batch():
    """Bitwise: a tree verification computes the same floats for a row as an incremental step."""
    x, w = case(37, 577, 300)
    packed = skinny.pack(w)
    full = np.asarray(skinny.matmul(jnp.asarray(x), packed))
    for m in (1, 2, 5, 13):
        np.testing.assert_array_equal(np.asarray(skinny.matmul(jnp.asarray(x[:m]), packed)), full[:m])
    alone = np.concatenate([np.asarray(skinny.matmul(jnp.asarray(x[i:i + 1]), packed)) for i in range(37)])
    np.testing.assert_array_equal(alone, full)


def test_bf16_weights_are_widened_exactly():
    x, w = case(16, 577, 1537)
    w_bf16 = w.astype(ml_dtypes.bfloat16)
    want = x.astype(np.float64) @ w_bf16.astype(np.float64)  # the rounding is the storage's, nothing else
    packed = skinny.pack(w, jnp.bfloat16)
    assert packed.data.dtype == jnp.bfloat16
    assert rel_err(skinny.matmul(jnp.asarray(x), packed), want) < 1e-5


def test_leading_dims_many_rows_and_columns(monkeypatch):
    x, w = case(2 * 3 * 5, 40, 70)
    packed = skinny.pack(w)
    x3 = jnp.asarray(x.reshape(2, 3, 5, 40))
    want = x.astype(np.float64) @ w.astype(np.float64)
    assert rel_err(skinny.matmul(x3, packed).reshape(30, 70), want) < 1e-5
    # More rows than the kernel serves (the baseline instruction set's limit): XLA's dot over the
    # unpacked weight, same result.
    xb, _ = case(skinny.GENERIC_MAX_ROWS + 1, 40, 70)
    monkeypatch.setattr(skinny, "max_rows", lambda: skinny.GENERIC_MAX_ROWS)
    assert rel_err(skinny.matmul(jnp.asarray(xb), packed), xb.astype(np.float64) @ w) < 1e-5
    np.testing.assert_array_equal(np.asarray(packed.unpack()), w)
    ids = jnp.asarray([[0, 69], [16, 17]])
    np.testing.assert_array_equal(np.asarray(packed.columns(ids)), np.moveaxis(w[:, np.asarray(ids)], 0, -1))


def test_inside_jitted_while_loop():
    x, w = case(4, 64, 80)  # [4, 64] @ [64, 80], the first 64 columns fed back
    packed = skinny.pack(w * 0.1)

    @jax.jit
    def run(x, packed):
        return jax.lax.fori_loop(0, 5, lambda i, h: jnp.tanh(skinny.matmul(h, packed)[:, :64]), x)

    h = x.astype(np.float64)
    for _ in range(5):
        h = np.tanh((h @ (w * 0.1).astype(np.float64))[:, :64])
    assert rel_err(run(jnp.asarray(x), packed), h) < 1e-5


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="2-D weight"):
        skinny.pack(np.zeros((2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        skinny.pack(np.zeros((2, 3), np.float32), jnp.float16)
    with pytest.raises(ValueError, match="3 features but the packed weight expects 4"):
        skinny.matmul(jnp.zeros((1, 3)), skinny.pack(np.zeros((4, 5), np.float32)))


def test_every_instruction_set_this_processor_has():
    """The ISA is chosen once per process: each variant is checked in a subprocess of its own."""
    script = textwrap.dedent("""
        import json, os, sys
        import numpy as np, jax, jax.numpy as jnp
        from specjax import model, skinny
        ok, line = skinny.status()
        if not ok:
            print(json.dumps({"ok": ok, "line": line, "err": 0.0}))
            sys.exit(0)
        errs = []
        for m, k, n in [(1, 577, 1537), (7, 64, 17), (12, 96, 200), (16, 576, 1536), (64, 33, 65), (200, 577, 70)]:
            rng = np.random.default_rng(m)
            x, w = rng.standard_normal((m, k)).astype(np.float32), rng.standard_normal((k, n)).astype(np.float32)
            want = x.astype(np.float64) @ w
            for dt in (jnp.float32, jnp.bfloat16):
                ref = want if dt == jnp.float32 else x.astype(np.float64) @ np.asarray(jnp.asarray(w, dt), np.float64)
                got = np.asarray(skinny.matmul(jnp.asarray(x), skinny.pack(w, dt)), np.float64)
                errs.append(float(np.max(np.abs(got - ref)) / np.max(np.abs(ref))))
        # attention (head dims with and without a tail past 8 lanes) against float64 softmax attention,
        # with RoPE (cos / sin tables) or without, and the new keys / values written at their slots
        written_ok = True
        for B, T, H, K, S, A, rope in [(2, 5, 6, 2, 40, 12, True), (1, 3, 9, 3, 70, 64, True), (2, 4, 4, 2, 9, 8, False)]:
            rng = np.random.default_rng(S)
            q, kn, vn = (rng.standard_normal(s).astype(np.float32) for s in [(B, T, H, A), (B, T, K, A), (B, T, K, A)])
            kc, vc = (rng.standard_normal((B, K, S, A)).astype(np.float32) for _ in range(2))
            om, nm = rng.random((B, T, S)) < 0.7, rng.random((B, T, T)) < 0.5
            nm[:, np.arange(T), np.arange(T)] = True
            slots = np.stack([rng.permutation(S + 2)[:T] for _ in range(B)]).astype(np.int32)
            slots[:, 0], slots[-1, -1] = S, S + 7  # outside [0, S): written nowhere
            ang = rng.uniform(0, 50, (B, T, A // 2)).astype(np.float32)
            cos, sin = np.cos(ang), np.sin(ang)
            def rot(x):  # XLA's rotation (model.rotate): the kernel gives its floats where the ISA has FMA, as XLA does
                return np.asarray(jax.jit(model.rotate)(x, cos, sin)) if rope else x
            out, kc2, vc2 = skinny.attend(*map(jnp.asarray, (q, kn, vn, kc, vc, om, nm, slots)),
                                          (jnp.asarray(cos), jnp.asarray(sin)) if rope else None)
            got = np.asarray(out, np.float64)
            qr, kr = rot(q), rot(kn)
            want_k, want_v = kc.copy(), vc.copy()
            for b in range(B):
                for t in range(T):
                    if slots[b, t] < S:
                        want_k[b, :, slots[b, t]], want_v[b, :, slots[b, t]] = kr[b, t], vn[b, t]
            if os.environ["SPECJAX_SKINNY_ISA"] == "generic":  # no FMA: unfused, within rounding of XLA's
                written_ok &= np.allclose(np.asarray(kc2), want_k, rtol=1e-6, atol=1e-6)
            else:
                written_ok &= np.array_equal(np.asarray(kc2), want_k)
            written_ok &= np.array_equal(np.asarray(vc2), want_v)
            G = H // K
            for b in range(B):
                for t in range(T):
                    for h in range(H):
                        keys = np.concatenate([kc[b, h // G][om[b, t]], kr[b, nm[b, t], h // G]]).astype(np.float64)
                        vals = np.concatenate([vc[b, h // G][om[b, t]], vn[b, nm[b, t], h // G]]).astype(np.float64)
                        s = keys @ qr[b, t, h].astype(np.float64) / np.sqrt(A)
                        p = np.exp(s - s.max())
                        ref = p @ vals / p.sum()
                        errs.append(float(np.max(np.abs(got[b, t, h] - ref)) / np.max(np.abs(ref))))
        if not written_ok:
            errs.append(1.0)
        print(json.dumps({"ok": ok, "line": line, "err": max(errs)}))
    """)
    isas = ["generic", "avx2", "avx512"] if os_machine() == "x86_64" else ["generic"]
    ran = []
    for isa in isas:
        env = dict(os.environ, SPECJAX_SKINNY_ISA=isa, JAX_PLATFORMS="cpu")
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        res = json.loads(out.stdout.strip().splitlines()[-1])
        if not res["ok"]:  # this processor lacks it: a clear line (the engine then keeps XLA's dot)
            assert "lacks" in res["line"], res["line"]
        else:
            assert f"({isa})" in res["line"]
            ran.append(isa)
        assert res["err"] < 1e-5, (isa, res)
    assert "generic" in ran and (os_machine() != "x86_64" or "avx2" in ran or "avx512" in ran)


def os_machine() -> str:
    import platform

    return platform.machine()


# ----------------------------------------------------------------------------- inside the model

TINY = ModelConfig(family="llama", vocab_size=67, hidden_size=48, intermediate_size=80, num_layers=2,
                   num_heads=4, num_kv_heads=2, head_dim=12, max_position_embeddings=256,
                   tie_word_embeddings=True, eos_token_ids=(2,))


def test_packed_model_matches_unpacked():
    params = M.init_params(TINY, jax.random.PRNGKey(0), std=0.2)
    packed = skinny.pack_params(params, TINY)
    assert skinny.is_packed(packed) and isinstance(packed["embed"], skinny.PackedWeight)
    assert skinny.pack_params(packed, TINY) is packed  # packing twice is a no-op
    logits = jax.jit(M.causal_logits, static_argnums=1)
    toks = jnp.asarray(np.random.default_rng(0).integers(0, 67, (3, 9)))  # 27 rows: the kernel
    np.testing.assert_allclose(np.asarray(logits(packed, TINY, toks)), np.asarray(logits(params, TINY, toks)),
                               atol=1e-5, rtol=1e-5)
    toks = jnp.asarray(np.random.default_rng(1).integers(0, 67, (2, 40)))  # 80 rows: XLA over unpacked
    np.testing.assert_allclose(np.asarray(logits(packed, TINY, toks)), np.asarray(logits(params, TINY, toks)),
                               atol=1e-5, rtol=1e-5)


def test_engine_output_same_with_and_without_kernel():
    llm = LoadedModel(M.init_params(TINY, jax.random.PRNGKey(1), std=0.3), TINY)
    ssm_cfg = TINY.__class__(**{**TINY.__dict__, "num_layers": 1})
    ssm = LoadedModel(M.init_params(ssm_cfg, jax.random.PRNGKey(2), std=0.3), ssm_cfg)
    tree = TreeConfig(expansion=(1, 2, 1))
    prompts = [[5, 6, 7], list(range(3, 20)), [9]]
    on = Engine(llm, [ssm], tree)
    off = Engine(llm, [ssm], tree, cpu_kernel=False)
    assert on.cpu_kernel and not off.cpu_kernel and skinny.is_packed(on.ssms[0].params)
    for run in ("generate_incremental", "generate_spec"):
        a = [r.token_ids for r in getattr(on, run)(prompts, max_new_tokens=24)]
        b = [r.token_ids for r in getattr(off, run)(prompts, max_new_tokens=24)]
        assert a == b, run
    bf16 = Engine(llm, [ssm], tree, weight_dtype="bfloat16")
    assert bf16.llm.params["embed"].data.dtype == jnp.bfloat16
    assert M.compute_dtype(bf16.llm.params) == jnp.float32
    assert len(bf16.generate_spec(prompts, max_new_tokens=8)[0].token_ids) == 8


def test_disabled_kernel_falls_back_in_one_line():
    script = textwrap.dedent("""
        import jax
        from specjax import model as M, skinny
        from specjax.config import ModelConfig
        from specjax.engine import Engine, LoadedModel
        cfg = ModelConfig(family="llama", vocab_size=40, hidden_size=32, intermediate_size=48, num_layers=1,
                          num_heads=2, num_kv_heads=1, head_dim=16, max_position_embeddings=64)
        eng = Engine(LoadedModel(M.init_params(cfg, jax.random.PRNGKey(0), std=0.3), cfg))
        print("packed", eng.cpu_kernel, eng.generate_incremental([[1, 2, 3]], max_new_tokens=6)[0].token_ids)
    """)
    outs = {}
    for flag in ("0", "1"):
        env = dict(os.environ, SPECJAX_SKINNY=flag, JAX_PLATFORMS="cpu")
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        outs[flag] = out
    assert "packed False" in outs["0"].stdout and "packed True" in outs["1"].stdout
    notes = [l for l in outs["0"].stderr.splitlines() if "skinny-matmul" in l]
    assert notes == ["specjax: CPU skinny-matmul kernel not used (disabled by SPECJAX_SKINNY=0); XLA's dot is used instead"]
    assert outs["0"].stdout.split("packed False")[1] == outs["1"].stdout.split("packed True")[1]


def test_a_library_without_a_build_id_is_stale(tmp_path):
    """A kernel library built before build ids existed (e.g. left in the user cache by an older
    specjax) is treated as stale, so it is rebuilt, never loaded or crashed on."""
    import subprocess

    src = tmp_path / "old.cc"
    src.write_text('extern "C" const char* specjax_skinny_isa() { return "avx2"; }\n')
    lib = tmp_path / "_skinny.so"
    subprocess.run(["g++", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    assert skinny._open(lib, "anything") is None


def test_a_stale_cached_library_is_rebuilt_and_loads_in_the_same_process(tmp_path):
    """After a source change or a jaxlib upgrade the cached library is stale: the rebuild loads in the
    process that found it stale (an old build under the rebuild's file name would be handed back by
    dlopen once opened, so each build has a name of its own), and the old builds are removed."""
    script = textwrap.dedent("""
        import pathlib, subprocess, sys
        from specjax import skinny
        from specjax.kernels import build as kbuild
        cache = pathlib.Path(sys.argv[1])
        skinny._KERNELS = cache / "nowhere"  # not the package's own build
        skinny._cache_dir = lambda: cache
        src = cache / "old.cc"
        src.write_text('extern "C" const char* specjax_skinny_build_id() { return "0000000000000000"; }')
        for name in ("_skinny.so", skinny.cache_library_name("0" * 16)):  # older specjax builds
            subprocess.run(["g++", "-shared", "-fPIC", "-o", str(cache / name), str(src)], check=True)
            assert skinny._open(cache / name, kbuild.source_hash()) is None  # opened, stale, kept mapped
        print("isa", skinny._load())
        print(sorted(p.name for p in cache.glob("_skinny*.so")))
    """)
    env = dict(os.environ, JAX_PLATFORMS="cpu", SPECJAX_SKINNY="1")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    from specjax.kernels import build as kbuild

    assert out.stdout.splitlines()[0].startswith("isa ")
    assert out.stdout.splitlines()[1] == str([skinny.cache_library_name(kbuild.source_hash())])
