"""The CPU skinny-matmul kernel: C++ sources and their build (see specjax.skinny)."""
