"""The persistent compilation cache the command line turns on (specjax.compile_cache)."""

import json
import os
import subprocess
import sys

from specjax import compile_cache

PROBE = r"""
import json, sys
import jax, jax.numpy as jnp
from specjax import compile_cache
path = compile_cache.enable()
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
y = jax.jit(lambda x: jnp.sin(x) * 3 + 1)(jnp.arange(5.0))
print(json.dumps({"path": None if path is None else str(path), "config": jax.config.jax_compilation_cache_dir,
                  "y": [float(v) for v in y]}))
"""


def probe(env_update: dict, stderr: list | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", compile_cache.ENV)}
    env.update(env_update)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    if stderr is not None:
        stderr.append(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_directory_follows_the_environment(monkeypatch, tmp_path):
    tag = compile_cache.machine_tag()
    assert len(tag) == 16 and int(tag, 16) >= 0 and tag == compile_cache.machine_tag()
    monkeypatch.setenv("SPECJAX_CACHE", str(tmp_path / "c"))
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    assert compile_cache.directory() == tmp_path / "c" / "xla" / tag  # per processor: XLA:CPU code is
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "mine"))
    assert compile_cache.directory() == tmp_path / "mine"
    for off in ("off", "0", "OFF", "false"):
        monkeypatch.setenv(compile_cache.ENV, off)
        assert compile_cache.directory() is None


def test_enable_writes_compiled_code_and_respects_users_choice(tmp_path):
    """A second process finds the first one's executable (no new entry, same result); off writes
    nothing; a directory the user gave JAX stays."""
    d = tmp_path / "xla"
    first = probe({compile_cache.ENV: str(d)})
    assert first["path"] == first["config"] == str(d)
    entries = sorted(os.listdir(d))
    assert entries and first["y"][1] != 0
    second = probe({compile_cache.ENV: str(d)})
    assert sorted(os.listdir(d)) == entries and second["y"] == first["y"]
    off = probe({compile_cache.ENV: "off", "SPECJAX_CACHE": str(tmp_path / "home")})
    assert off["path"] is None and off["config"] is None and not (tmp_path / "home").exists()
    own = probe({"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "own"), compile_cache.ENV: str(d)})
    assert own["path"] == own["config"] == str(tmp_path / "own")
    # A directory that cannot be made: one line naming it and why, and decoding goes on uncached.
    (tmp_path / "file").write_text("x")
    err = []
    bad = probe({compile_cache.ENV: str(tmp_path / "file" / "xla")}, err)
    assert bad["path"] is None and bad["config"] is None and bad["y"] == first["y"]
    assert f"compile cache off: {tmp_path / 'file' / 'xla'}" in err[0] and compile_cache.ENV in err[0]
