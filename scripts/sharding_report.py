"""Parameter bytes per device under a dp x tp mesh, against the whole model.

    python scripts/sharding_report.py                          # default LLM, largest tp that fits 8 devices
    python scripts/sharding_report.py --preset llama-3-8b --mesh tp=8 --dtype bfloat16
    python scripts/sharding_report.py --llm DIR --mesh dp=2,tp=4 --load

Runs on fake CPU devices (--devices, default 8) unless an accelerator is present. The numbers come from
the partition rules (`specjax.sharding.param_bytes`); --load also loads the checkpoint with
`load_sharded` and sums what each device really holds (`addressable_shards`). Expected: about
1/tp of the split parameters plus the replicated ones (norms) on each device; kv heads repeated
when tp > K count tp / K times.
"""

from __future__ import annotations

import argparse
import os
import sys


PRESETS = {  # configs of well-known models (weights not needed for the analytical report)
    "llama-3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
                       num_kv_heads=8, head_dim=128),
    "llama-3-70b": dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_layers=80, num_heads=64,
                        num_kv_heads=8, head_dim=128),
    "llama-2-7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
                       num_kv_heads=32, head_dim=128),
}
GROUPS = (("embedding / lm_head", ("embed", "lm_head", "pos_embed", "project_")),
          ("attention", (".q", ".k", ".v", ".o")), ("mlp", (".gate", ".up", ".down")), ("norms", ("norm",)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--llm", help="specjax checkpoint dir (default: the embedded default LLM)")
    src.add_argument("--preset", choices=sorted(PRESETS))
    p.add_argument("--mesh", default=None, help="'dp=2,tp=4', 'tp=8', 'auto' (default: dp=1 and the largest tp "
                                                "that fits the model and the devices)")
    p.add_argument("--devices", type=int, default=8, help="fake CPU devices when no accelerator (default 8)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--load", action="store_true", help="load the checkpoint sharded and measure the shards")
    p.add_argument("--replicate-vocab", action="store_true",
                   help="the alternative specjax does not take: embed / lm_head replicated instead of split over V")
    return p.parse_args(argv)


def group_of(name: str) -> str:
    for group, keys in GROUPS:
        if any(k in name for k in keys):
            return group
    return "other"


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={args.devices}")
    import jax
    import numpy as np

    from specjax import checkpoint, default_model, sharding
    from specjax.config import ModelConfig

    if args.preset:
        cfg = ModelConfig(family="llama", max_position_embeddings=8192, **PRESETS[args.preset])
        name = args.preset
    else:
        path = args.llm or str(default_model.default_llm_dir())
        cfg, name = checkpoint.load_config(path), path
    split = {k: v for k, v in sharding.TP_SPLIT.items() if not (args.replicate_vocab and k == "V")}
    n = jax.device_count()
    try:
        if args.mesh is None:
            tp = max(t for t in range(1, n + 1) if sharding.fits_tp(cfg, t, split))
            mesh = sharding.make_mesh(1, tp)
        else:
            mesh = sharding.parse_mesh(args.mesh)
        specs = sharding.param_specs(cfg, mesh, split)
    except sharding.ShardingError as e:
        raise SystemExit(f"error: {e}")
    itemsize = np.dtype(args.dtype if args.dtype != "bfloat16" else "float16").itemsize
    sizes = dict(mesh.shape)
    print(f"{name}: mesh {sharding.describe(mesh)} on {mesh.devices.size} of {n} {jax.default_backend()} "
          f"device(s), {args.dtype}")
    rows: dict[str, list[int]] = {}
    on_mesh = checkpoint.expected_shapes(sharding.mesh_config(cfg, mesh, split))  # kv heads may be repeated
    for pname, shape in checkpoint.expected_shapes(cfg).items():
        ways = int(np.prod([sizes[a] for a in specs[pname] if a is not None]))
        row = rows.setdefault(group_of(pname), [0, 0])
        row[0] += int(np.prod(shape)) * itemsize
        row[1] += int(np.prod(on_mesh[pname])) * itemsize // ways
    mib = lambda b: f"{b / 2**20:12.1f}"
    print(f"{'':22}{'total MiB':>12}{'per device':>12}{'fraction':>10}")
    for group, (total, per) in rows.items():
        print(f"{group:22}{mib(total)}{mib(per)}{per / total:10.3f}")
    b = sharding.param_bytes(cfg, mesh, split, itemsize=itemsize)
    print(f"{'all parameters':22}{mib(b['total'])}{mib(b['per_device'])}{b['per_device'] / b['total']:10.3f}"
          f"   (1/tp = {1 / sizes['tp']:.3f}; replicated: {b['replicated'] / b['total']:.2%} of the model)")

    if args.load:
        if args.preset:
            raise SystemExit("--load needs a checkpoint (--llm or the default LLM), not a preset")
        params, _ = sharding.load_sharded(path, mesh, split, dtype=np.dtype(args.dtype) if args.dtype != "bfloat16"
                                          else jax.numpy.bfloat16)
        held: dict = {}
        for x in jax.tree.leaves(params):
            for s in x.addressable_shards:
                held[s.device] = held.get(s.device, 0) + s.data.nbytes
        print("measured (load_sharded, addressable_shards):")
        for device, nbytes in sorted(held.items(), key=lambda kv: kv[0].id):
            print(f"  {str(device):22}{mib(nbytes)} MiB  ({nbytes / b['total']:.3f} of the model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
