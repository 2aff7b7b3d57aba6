r"""Scale on paper: per-device memory of big ViT train steps on simulated meshes, no hardware.

    python scripts/scale_on_paper.py                 # the README table (takes minutes on CPU)
    python scripts/scale_on_paper.py --quick         # ViT-Ti/16 on 1 and 2 devices (a smoke test)

Each row AOT-compiles the trainer's own train step (`vitx.train.trainer.setup` + `make_step`,
its shardings, adamw, bf16 matmuls, float32 params) for a mesh of N simulated CPU devices
(`--xla_force_host_platform_device_count=N`, one subprocess per row) on abstract inputs, so no
memory is allocated; it reports per-device bytes:
  params, optimizer state   summed shard sizes of the state's shardings (exact)
  temp                      XLA's memory analysis of the compiled program: activations kept
                            for the backward pass and scratch (the CPU backend's buffer
                            assignment; a GPU/TPU compiler fuses and schedules differently, so
                            read this column as an estimate)
  total                     arguments + outputs + temp - donated aliases (XLA)
With fsdp (ZeRO-3: every param and its Adam moments sharded over the "fsdp" axis) params and
optimizer state must shrink ~1/N; the per-device batch is fixed, so temp stays ~flat.
Rows: ViT-L/16 (224 px, 8 images per device) with fsdp on 1, 2, 4, 8 devices; ViT-g/14
(224 px, 4 images per device, scan + remat) on 64 devices as fsdp 16 x model 4
(`FSDP_TENSOR_PARALLEL_RULES`: each encoder matrix split Megatron-style over "model" and its other
dimension over "fsdp"; fsdp for the rest). Writes workdirs/scale_on_paper.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = [  # (variant, devices, fsdp, model, images per device, scan+remat)
    ("L/16", 1, 1, 1, 8, False), ("L/16", 2, 2, 1, 8, False), ("L/16", 4, 4, 1, 8, False),
    ("L/16", 8, 8, 1, 8, False), ("g/14", 64, 16, 4, 4, True),
]
QUICK = [("Ti/16", 1, 1, 1, 8, False), ("Ti/16", 2, 2, 1, 8, False)]


def _worker(args) -> dict:
    import jax
    import numpy as np

    from vitx.config import load_config
    from vitx.train import sharding as shd
    from vitx.train import trainer

    c = load_config(os.path.join(REPO, "configs", "vit_digits.py"))
    c.data_dir = args.data_dir
    c.num_classes = 1000
    c.model = dict(variant=args.variant, dtype_mm="bfloat16", scan=args.scan,
                   remat_policy="nothing_saveable" if args.scan else None)
    pp = "decode(channels=3)|resize(224)|value_range(-1,1)|onehot(1000)|keep('image', 'label')"
    c.input.pp = pp
    c.evals.test.pp = pp
    c.input.batch_size = args.per_device * args.devices
    c.evals.test.batch_size = 2 * args.devices
    c.mesh = [("data", 1), ("fsdp", args.fsdp), ("model", args.model)]
    c.sharding_rules = ([*shd.FSDP_TENSOR_PARALLEL_RULES, (".*", "fsdp")] if args.model > 1
                        else [(".*", "fsdp")])
    s = trainer.setup(c)
    state, shardings = s.init_state(materialize=False)
    bs = shd.batch_sharding(s.mesh)
    batch = {k: jax.ShapeDtypeStruct((c.input.batch_size, *shape), dtype, sharding=bs)
             for k, (shape, dtype) in s.spec.items()}
    t0 = time.perf_counter()
    compiled = jax.jit(s.make_step(s.plan(0)), in_shardings=(shardings, bs),
                       out_shardings=(shardings, shd.replicated(s.mesh)),
                       donate_argnums=(0,)).lower(state, batch).compile()
    compile_s = time.perf_counter() - t0

    def per_device(tree, sh) -> int:
        leaves, shs = jax.tree.leaves(tree), jax.tree.leaves(sh)
        return int(sum(np.prod(z.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
                       for x, z in zip(leaves, shs, strict=True)))

    mem = compiled.memory_analysis()
    n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state["params"])))
    return {"variant": args.variant, "devices": args.devices, "mesh": dict(s.mesh.shape),
            "per_device_batch": args.per_device, "scan_remat": args.scan, "params": n_params,
            "params_bytes": per_device(state["params"], shardings["params"]),
            "opt_bytes": per_device(state["opt_state"], shardings["opt_state"]),
            "temp_bytes": int(mem.temp_size_in_bytes),
            "total_bytes": int(mem.argument_size_in_bytes + mem.output_size_in_bytes
                               + mem.temp_size_in_bytes - mem.alias_size_in_bytes),
            "compile_s": compile_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--only", default=None, help="rows of this variant only, e.g. g/14")
    p.add_argument("--data-dir", default=os.path.join("data", "tfds"))
    p.add_argument("--out", default=os.path.join("workdirs", "scale_on_paper.json"))
    p.add_argument("--worker", nargs=6, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        v, n, f, m, b, scan = args.worker
        args.variant, args.devices, args.fsdp, args.model = v, int(n), int(f), int(m)
        args.per_device, args.scan = int(b), scan == "True"
        print(json.dumps(_worker(args)))
        return 0
    rows = []
    gib = 2**30
    print("| model | devices (mesh) | batch/device | params | opt state | temp (XLA:CPU) | total "
          "| compile |")
    print("|---|---|---|---|---|---|---|---|")
    for row in QUICK if args.quick else ROWS:
        if args.only and row[0] != args.only:
            continue
        flags = os.environ.get("XLA_FLAGS", "")  # the caller's flags, plus the device count
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={row[1]}".strip())
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--data-dir",
                              args.data_dir, "--worker", *map(str, row)], env=env, cwd=REPO,
                             capture_output=True, text=True)
        if out.returncode:
            print(f"{row}: failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(r)
        mesh = " x ".join(f"{k} {v}" for k, v in r["mesh"].items() if v > 1) or "1"
        print(f"| ViT-{r['variant']} ({r['params'] / 1e6:.0f}M) | {r['devices']} ({mesh}) | "
              f"{r['per_device_batch']} | {r['params_bytes'] / gib:.2f} GiB | "
              f"{r['opt_bytes'] / gib:.2f} GiB | {r['temp_bytes'] / gib:.2f} GiB | "
              f"{r['total_bytes'] / gib:.2f} GiB | {r['compile_s']:.0f} s |", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    if args.only and os.path.exists(args.out):  # keep the other rows of an earlier run
        with open(args.out) as f:
            rows = [r for r in json.load(f) if r["variant"] != args.only] + rows
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
