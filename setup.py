"""Builds specjax's CPU skinny-matmul kernel (specjax/kernels/) at install time.

Everything else is in pyproject.toml. The kernel needs a C++17 compiler and jaxlib's XLA FFI headers
(jaxlib is a build requirement); if it cannot be built the install still succeeds with a warning, and
specjax builds it into the user cache on first use or falls back to XLA's dot with a one-line note.
"""

import importlib.util
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


def _kernel_build_module():
    spec = importlib.util.spec_from_file_location("specjax_kernel_build", HERE / "specjax" / "kernels" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class BuildKernel(build_ext):
    """Compiles the kernel library with specjax/kernels/build.py instead of distutils' compiler."""

    def build_extension(self, ext):
        target = Path(self.get_ext_fullpath(ext.name))
        kbuild = _kernel_build_module()
        try:
            path = kbuild.build(target.parent, target.name)
            print(f"specjax: built the CPU skinny-matmul kernel: {path}")
        except kbuild.BuildError as e:
            print(f"WARNING: specjax: the CPU skinny-matmul kernel was not built ({str(e).splitlines()[0]}); "
                  "specjax will try again on first use, else use XLA's dot", file=sys.stderr)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"")  # an empty placeholder: the install goes on; specjax skips it


setup(
    ext_modules=[Extension("specjax.kernels._skinny", sources=["specjax/kernels/skinny.cc", "specjax/kernels/skinny_isa.cc"])],
    cmdclass={"build_ext": BuildKernel},
)
