r"""Peer benchmark: the same ViT train step in vitx, big_vision and timm, measured in one run.

    python scripts/bench_peers.py                              # ViT-S/16, batch 32, 224 px, adam
    python scripts/bench_peers.py --variant B/16 --dtype bfloat16 --batch 64   # e.g. on a GPU
    python scripts/bench_peers.py --big-vision PATH            # adds big_vision (a checkout)

Needs the `bench` extra for timm (`pip install -e ".[bench]"`: timm, torch, torchvision); without
timm the timm row is skipped. Each framework runs in its own subprocess (one process tree, so no
framework's thread pool or compile cache leaks into another's), `--rounds` times, interleaved
(vitx, vitx-plain, big_vision, timm, vitx, ...), so a load change on a shared machine hits
every row alike; a row reports the mean +- std of its rounds' images/s (ratios and MFU from the
means). Every step is the same math: the model's
forward pass on a fixed random batch, softmax cross-entropy on one-hot labels, backward, an
adam update (lr 1e-3, no schedule, no weight decay), all params float32; `--dtype bfloat16`
runs the matmuls in bfloat16 (vitx / big_vision `dtype_mm`, timm `torch.autocast`).

Columns: images/s; the ratio to timm; FLOPs per step (XLA's cost analysis of the vitx step,
used for every row: the same model and update); achieved FLOP/s; the run's own matmul peak
(JAX, float32 or bfloat16 square matmuls, best of a few sizes) and each row's fraction of it
(MFU against the measured peak, not a datasheet's). Rows:
  vitx        vitx's `make_train_step` (NaN guard, grad norm) with the default fast paths
  vitx-plain  the same with `patch_embed=conv, attention_impl=einsum` (the layouts before the
              fast paths; the ones big_vision uses)
  big_vision  big_vision's `models/vit.py` (from --big-vision), a plain jitted adam step
  timm        timm's `vit_*_patch*_*` in PyTorch, eager, `torch.set_num_threads(--threads)`
Writes the rows as JSON to --out (default workdirs/bench_peers.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

TIMM_NAMES = {"Ti": "tiny", "S": "small", "B": "base", "L": "large"}


def _batch_np(args):
    import numpy as np

    rng = np.random.RandomState(0)
    x = rng.uniform(-1, 1, (args.batch, args.image_size, args.image_size, 3)).astype(np.float32)
    y = rng.randint(0, 1000, (args.batch,))
    return x, y


def _time(step, n: int, sync) -> tuple[float, float]:
    """(compile/first-step seconds, seconds per step over `n` steps)."""
    t0 = time.perf_counter()
    sync(step())
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = None
    for _ in range(n):
        out = step()
    sync(out)
    return first, (time.perf_counter() - t0) / n


def _jax_worker(args) -> dict:
    import jax
    import jax.numpy as jnp
    import optax

    x_np, y_np = _batch_np(args)
    x, labels = jnp.asarray(x_np), jax.nn.one_hot(y_np, 1000)
    tx = optax.adam(1e-3)
    if args.worker in ("vitx", "vitx-plain"):
        from vitx.models import vit
        from vitx.tasks import get_task
        from vitx.train import steps

        kw = dict(patch_embed="conv", attention_impl="einsum") if args.worker == "vitx-plain" \
            else {}
        model = vit.Model(1000, variant=args.variant, dtype_mm=args.dtype, **kw)
        params = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])["params"]
        task = get_task(dict(inputs="image", labels="labels"), 1000)
        state = dict(params=params, opt_state=tx.init(params), step=jnp.int32(0),
                     rng=jax.random.PRNGKey(1), model_state={})
        fn = jax.jit(steps.make_train_step(model, tx, task), donate_argnums=(0,))
        batch = dict(image=x, labels=labels)
    else:
        sys.path.insert(0, args.big_vision)
        from big_vision.models import vit as bv_vit

        model = bv_vit.Model(num_classes=1000, variant=args.variant, dtype_mm=args.dtype)
        params = jax.jit(model.init)(jax.random.PRNGKey(0), x[:1])["params"]

        def bv_step(state, batch):
            def loss_fn(p):
                logits, _ = model.apply({"params": p}, batch["image"], train=True)
                return jnp.mean(optax.softmax_cross_entropy(logits, batch["labels"]))
            loss, grads = jax.value_and_grad(loss_fn)(state["params"])
            updates, opt = tx.update(grads, state["opt_state"], state["params"])
            return dict(params=optax.apply_updates(state["params"], updates),
                        opt_state=opt), {"loss": loss}

        state = dict(params=params, opt_state=tx.init(params))
        fn = jax.jit(bv_step, donate_argnums=(0,))
        batch = dict(image=x, labels=labels)
    from vitx.utils import perf

    stats = perf.compiled_stats(fn.lower(state, batch).compile())
    holder = {"state": state}

    def step():
        holder["state"], m = fn(holder["state"], batch)
        return m["loss"]

    first, sec = _time(step, args.steps, jax.block_until_ready)
    return {"compile_s": first, "step_s": sec, **stats, "device": jax.devices()[0].device_kind,
            "jax": jax.__version__}


def _timm_worker(args) -> dict:
    import timm
    import torch

    torch.set_num_threads(args.threads)
    size, patch = args.variant.split("/")
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    model = timm.create_model(f"vit_{TIMM_NAMES[size]}_patch{patch}_224", img_size=args.image_size,
                              num_classes=1000, pretrained=False).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x_np, y_np = _batch_np(args)
    x = torch.from_numpy(x_np).permute(0, 3, 1, 2).contiguous().to(dev)
    y = torch.from_numpy(y_np).to(dev)
    autocast = torch.autocast(dev, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    def sync(loss):
        if dev == "cuda":
            torch.cuda.synchronize()
        return float(loss)

    first, sec = _time(step, args.steps, sync)
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    return {"compile_s": first, "step_s": sec, "device": name, "torch": torch.__version__,
            "timm": timm.__version__, "threads": torch.get_num_threads()}


def _peak_worker(args) -> dict:
    """The best matmul FLOP/s of square (n x n) @ (n x n) products in `--dtype`."""
    import jax

    from vitx.utils import perf

    return {"peak_flops": perf.matmul_peak(args.dtype), "device": jax.devices()[0].device_kind}


def _run_worker(args, name: str) -> dict | None:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--variant", args.variant,
           "--batch", str(args.batch), "--image-size", str(args.image_size), "--steps",
           str(args.steps), "--dtype", args.dtype, "--threads", str(args.threads)]
    if args.big_vision:
        cmd += ["--big-vision", os.path.abspath(args.big_vision)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        print(f"  {name}: failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variant", default="S/16", help="ViT size/patch, e.g. Ti/16, S/16, B/16")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--steps", type=int, default=3, help="timed steps per round (after one)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="PyTorch intra-op threads (XLA:CPU uses every core)")
    p.add_argument("--big-vision", default=None, help="a big_vision checkout (its repo root)")
    p.add_argument("--out", default=os.path.join("workdirs", "bench_peers.json"))
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        fn = {"timm": _timm_worker, "peak": _peak_worker}.get(args.worker, _jax_worker)
        print(json.dumps(fn(args)))
        return 0

    names = ["vitx", "vitx-plain"] + (["big_vision"] if args.big_vision else [])
    try:
        import timm  # noqa: F401
        names.append("timm")
    except ImportError:
        print("timm is not installed (pip install -e '.[bench]'): no timm row", file=sys.stderr)
    best: dict[str, dict] = {}
    peak = 0.0
    print(f"bench_peers: ViT-{args.variant}, batch {args.batch}, {args.image_size} px, "
          f"{args.dtype}, adam; {args.rounds} rounds x {args.steps} steps")
    for r in range(args.rounds):
        for name in ["peak", *names]:
            row = _run_worker(args, name)
            if row is None:
                continue
            if name == "peak":
                peak = max(peak, row["peak_flops"])
                continue
            row["img_per_s"] = args.batch / row["step_s"]
            print(f"  round {r}: {name:<11} {row['img_per_s']:8.2f} img/s")
            rounds = best.get(name, {}).get("rounds", []) + [row["img_per_s"]]
            best[name] = {**row, "rounds": rounds, "img_per_s": sum(rounds) / len(rounds),
                          "img_per_s_std": statistics.pstdev(rounds),
                          "step_s": args.batch * len(rounds) / sum(rounds)}
    flops = best.get("vitx", {}).get("flops", 0.0)
    timm_ips = best.get("timm", {}).get("img_per_s")
    print(f"\nmatmul peak ({args.dtype}, this run): {peak / 1e9:.1f} GFLOP/s; "
          f"FLOPs per step (XLA, vitx step): {flops / 1e9:.1f} GFLOP")
    print("| framework | images/s (mean ± std over rounds) | vs timm | achieved GFLOP/s | "
          "fraction of matmul peak |")
    print("|---|---|---|---|---|")
    rows = []
    for name, row in best.items():
        achieved = flops / row["step_s"]
        row.update(name=name, achieved_flops=achieved, mfu=achieved / peak if peak else None,
                   vs_timm=row["img_per_s"] / timm_ips if timm_ips else None)
        rows.append(row)
        vs = f"x{row['vs_timm']:.2f}" if row["vs_timm"] else "-"
        mfu = f"{row['mfu']:.0%}" if row["mfu"] is not None else "-"
        print(f"| {name} | {row['img_per_s']:.2f} ± {row['img_per_s_std']:.2f} | {vs} | "
              f"{achieved / 1e9:.1f} | {mfu} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"args": {k: v for k, v in vars(args).items() if k != "worker"},
                   "peak_flops": peak, "flops_per_step": flops, "rows": rows}, f, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
