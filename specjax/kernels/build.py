"""Builds the skinny-matmul XLA FFI library (skinny.cc + skinny_isa.cc once per instruction set).

Used by setup.py at install time (the library lands in the package) and by specjax.skinny at run
time when no built library is found (it builds into the user cache). Needs a C++17 compiler (g++ or
clang++; $CXX overrides) and jaxlib's FFI headers. No jax import: setup.py calls it from the build
environment, where only jaxlib is installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCES = ("skinny.cc", "skinny_isa.cc", "attend_isa.cc")
LIBRARY = "_skinny.so"
COMMON = ["-O3", "-std=gnu++17", "-fPIC", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math", "-Wno-psabi"]
# (namespace, micro-tile rows, flags): rows of x held in registers for each vector register file
# (AVX2: 6 rows x 2 ymm of 16; AVX-512: 16 rows x 1 zmm of 32, measured best: 24 spills, 12 costs
# 16 rows ~15% more as two k-blocked tiles, scripts/ab_kernel.py).
ISAS_X86 = (("generic", 3, []), ("avx2", 6, ["-mavx2", "-mfma"]), ("avx512", 16, ["-mavx512f", "-mfma"]))
ISAS_OTHER = (("generic", 6, []),)


class BuildError(RuntimeError):
    """The kernel could not be built here (no compiler, no headers, or a compiler error)."""


def ffi_include_dir() -> Path:
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        raise BuildError("jaxlib is not installed (its include/ has the XLA FFI headers)")
    inc = Path(list(spec.submodule_search_locations)[0]) / "include"
    if not (inc / "xla" / "ffi" / "api" / "ffi.h").is_file():
        raise BuildError(f"jaxlib at {inc.parent} has no XLA FFI headers (include/xla/ffi/api/ffi.h)")
    return inc


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++") or shutil.which("c++")
    if not cxx:
        raise BuildError("no C++ compiler found (install g++ or set CXX)")
    return cxx


def source_hash() -> str:
    """Identifies a build: the sources, the jaxlib version whose headers it used, the architecture."""
    from importlib.metadata import PackageNotFoundError, version

    ffi_include_dir()  # raises when jaxlib or its headers are missing
    try:
        jaxlib_version = version("jaxlib")
    except PackageNotFoundError:
        jaxlib_version = "unknown"
    h = hashlib.sha256()
    for name in (*SOURCES, "build.py"):  # build.py: its flags and tile sizes make a different library
        h.update((HERE / name).read_bytes())
    h.update(jaxlib_version.encode())
    h.update(platform.machine().encode())
    return h.hexdigest()[:16]


def build(out_dir: str | os.PathLike, name: str = LIBRARY) -> Path:
    """Compiles the library into out_dir/name (atomically replaced) and returns its path. The
    library's specjax_skinny_build_id() returns source_hash(), so a stale build is recognised."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cxx, inc = compiler(), ffi_include_dir()
    isas = ISAS_X86 if platform.machine() in ("x86_64", "AMD64") else ISAS_OTHER
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        objects = []
        for ns, rows, flags in isas:
            for src in ("skinny_isa.cc", "attend_isa.cc"):
                obj = Path(tmp) / f"{Path(src).stem}_{ns}.o"
                run([cxx, *COMMON, "-fvisibility=hidden", *flags, f"-DSKINNY_NS={ns}", f"-DSKINNY_MR={rows}", "-c",
                     str(HERE / src), "-o", str(obj)])
                objects.append(str(obj))
        main_obj = Path(tmp) / "skinny.o"
        run([cxx, *COMMON, f"-I{inc}", f'-DSKINNY_BUILD_ID="{source_hash()}"', "-c", str(HERE / "skinny.cc"),
             "-o", str(main_obj)])
        lib_tmp = Path(tmp) / LIBRARY
        run([cxx, "-shared", "-o", str(lib_tmp), str(main_obj), *objects])
        target = out_dir / name
        os.replace(lib_tmp, target)
    return target


def run(cmd: list[str]) -> None:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise BuildError(f"cannot run {cmd[0]}: {e}") from None
    if proc.returncode:
        raise BuildError(f"{' '.join(cmd[:2])} ... failed:\n{proc.stderr[-2000:]}")


if __name__ == "__main__":
    import sys

    print(build(sys.argv[1] if len(sys.argv) > 1 else HERE))  # python build.py [DIR]
