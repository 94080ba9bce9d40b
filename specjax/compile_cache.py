"""A persistent cache of XLA's compiled executables: a second `specjax` run skips compiling.

Every `specjax generate` compiles the prefill and the decoding loop (the default speculative loop
~8-17 s on 2 cores), and without a cache each run pays it again: for a 128-token answer that is most
of the wall time. JAX can keep compiled executables on disk (`jax_compilation_cache_dir`); the
command line turns that on for its own process (`specjax.cli`); a program using specjax's API calls
`enable()` itself if it wants it.

Where: $SPECJAX_COMPILE_CACHE, else <specjax's user cache dir>/xla/<machine tag>. The machine tag
is a hash of the processor's model and instruction-set flags: XLA:CPU compiles for the processor it
runs on (AVX-512 code on a Zen 4), and JAX's own cache key does not say which, so a cache directory
shared between machines (a network home) must not hand one machine's code to another.
SPECJAX_COMPILE_CACHE=off turns it off; a cache directory the user already gave JAX
(JAX_COMPILATION_CACHE_DIR or jax.config) is left as it is.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from pathlib import Path

ENV = "SPECJAX_COMPILE_CACHE"
OFF = ("0", "off", "false", "no")


def machine_tag() -> str:
    """16 hex digits naming this processor's model and instruction-set flags (/proc/cpuinfo's first
    processor), or the platform's machine name where there is no /proc/cpuinfo."""
    keep = ("vendor_id", "cpu family", "model", "model name", "flags", "features", "cpu part")
    try:
        first = Path("/proc/cpuinfo").read_text().split("\n\n")[0]
        lines = [ln for ln in first.splitlines() if ln.split(":")[0].strip().lower() in keep]
    except OSError:
        lines = []
    text = "\n".join(lines) or f"{platform.machine()} {platform.processor()}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def directory() -> Path | None:
    """The cache directory enable() would use, None when SPECJAX_COMPILE_CACHE turns it off."""
    value = os.environ.get(ENV, "").strip()
    if value.lower() in OFF:
        return None
    if value:
        return Path(value)
    from specjax.default_model import cache_dir

    return cache_dir() / "xla" / machine_tag()


def enable() -> Path | None:
    """Points JAX's persistent compilation cache at directory(), unless one is already configured
    (returned as it is) or it is turned off / cannot be created (None, and one line on stderr naming
    the directory and why; decoding works the same, it only compiles again). Call before the first
    compilation."""
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    path = directory()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK):
            raise PermissionError("not writable")
    except OSError as e:
        print(f"specjax: compile cache off: {path} ({ENV}) cannot be used: {e}", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    return path
