"""python -m checkpoints_convert [--to-hf] SRC DST"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from checkpoints_convert import convert, export_hf
from specjax.config import ConfigError
from specjax.checkpoint import CheckpointError

DTYPES = {"float32": np.float32, "float16": np.float16}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m checkpoints_convert",
        description="Convert a Hugging Face model directory or a llama .gguf file to a specjax checkpoint "
                    "directory, or (--to-hf) a specjax checkpoint back to a Hugging Face directory.")
    parser.add_argument("src", help="HF directory (config.json + safetensors / pytorch_model.bin), .gguf file, "
                                    "or with --to-hf a specjax checkpoint directory")
    parser.add_argument("dst", help="output directory")
    parser.add_argument("--to-hf", action="store_true", help="export a specjax checkpoint to Hugging Face format")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="dtype of the stored specjax weights (default float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    args = parser.parse_args(argv)
    try:
        if args.to_hf:
            out = export_hf(args.src, args.dst, overwrite=args.overwrite)
        else:
            out = convert(args.src, args.dst, dtype=DTYPES[args.dtype], overwrite=args.overwrite)
    except (ConfigError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
