"""Input-pipeline throughput at ImageNet shape: vitx's tf.data pipeline vs timm's loader.

    python scripts/bench_pipeline.py                 # 3 interleaved rounds, prints the ratio
    python scripts/bench_pipeline.py --smoke         # tiny (CI): 32 px, a few batches, no timm

Both sides do the AugReg / DeiT train-time work on the same JPEG files (the `sample_photos`
TFDS dataset: 3,000 crops of varied size of scikit-learn's photos, `vitx.data.builders`):
JPEG decode, random-resized crop to 224, left-right flip, RandAugment (2 layers, magnitude 9),
normalise, batched.

- vitx: `vitx.data.pipeline.build_dataset` (the trainer's pipeline: tf.data, parallel map,
  prefetch) with `decode|inception_crop(224)|flip_lr|randaug(2, 9)|value_range(-1, 1)`,
  batches as numpy arrays.
- timm: `timm.data.create_transform(224, is_training=True, auto_augment='rand-m9-mstd0.5')`
  (RandomResizedCrop, flip, RandAugment m9 with magnitude noise 0.5, ToTensor, Normalize;
  colour jitter is off whenever auto_augment is set) in a `torch.utils.data.DataLoader` over
  the same JPEG bytes written to files (PIL decode), `--workers` worker processes (default:
  the CPU count), in a persistent subprocess of `--timm_python` (a venv with torch and timm;
  the row is skipped if it has none).

The two run in turn (`--rounds` rounds, each `--images` images per side, the first batches
of each round not timed so a buffer filled while the other side ran does not count); a round
on one side never overlaps the other's. Prints images/s per round and side, the medians and
their ratio (vitx / timm; >= 1 means vitx is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

VITX_PP = "decode|inception_crop({size})|flip_lr|randaug(2, 9)|value_range(-1, 1)|keep('image')"

# The timm side: a persistent worker; reads "N" lines from stdin, prints "images_per_sec".
TIMM_WORKER = textwrap.dedent("""
    import os, sys, time
    import torch
    from PIL import Image
    from timm.data import create_transform
    folder, batch, size, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    tf = create_transform(size, is_training=True, auto_augment="rand-m9-mstd0.5")

    class Photos(torch.utils.data.Dataset):
        def __len__(self):
            return 10 ** 9
        def __getitem__(self, i):
            with open(files[i % len(files)], "rb") as f:
                img = Image.open(f).convert("RGB")
            return tf(img), 0

    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(Photos(), batch_size=batch, num_workers=workers,
                                         shuffle=False, drop_last=True,
                                         persistent_workers=workers > 0)
    it = iter(loader)
    next(it)
    print("ready", flush=True)
    for line in sys.stdin:
        n_batches, skip = (int(v) for v in line.split())
        for _ in range(skip):
            next(it)
        t = time.perf_counter()
        for _ in range(n_batches):
            x, _ = next(it)
        assert x.shape == (batch, 3, size, size), x.shape
        print(n_batches * batch / (time.perf_counter() - t), flush=True)
""")


def export_jpegs(data_dir: str, folder: str) -> int:
    """Writes every `sample_photos` train JPEG (its stored bytes) to `folder`; returns the count."""
    import tensorflow_datasets as tfds

    from vitx.data.builders import ensure_built

    builder = ensure_built("sample_photos", data_dir)
    ds = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    n = 0
    for ex in ds.as_numpy_iterator():
        with open(os.path.join(folder, f"{int(ex['id']):05d}.jpg"), "wb") as f:
            f.write(ex["image"])
        n += 1
    return n


class TimmLoader:
    """The timm side in a subprocess of `python` (torch + timm); `rate(n, skip)` -> images/s."""

    def __init__(self, python: str, folder: str, batch: int, size: int, workers: int):
        self.proc = subprocess.Popen([python, "-c", TIMM_WORKER, folder, str(batch), str(size),
                                      str(workers)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the timm loader in {python} did not start")

    def rate(self, n_batches: int, skip: int) -> float:
        self.proc.stdin.write(f"{n_batches} {skip}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def vitx_loader(data_dir: str, batch: int, size: int):
    """(rate(n_batches, skip) -> images/s) of vitx's train pipeline on `sample_photos`."""
    from vitx.data import pipeline

    ds = pipeline.build_dataset(name="sample_photos", split="train", data_dir=data_dir,
                                pp=VITX_PP.format(size=size), global_batch_size=batch,
                                train=True, seed=0, shuffle_buffer=1_000)
    it = ds.as_numpy_iterator()
    next(it)

    def rate(n_batches: int, skip: int) -> float:
        for _ in range(skip):
            next(it)
        t = time.perf_counter()
        for _ in range(n_batches):
            x = next(it)["image"]
        assert x.shape == (batch, size, size, 3), x.shape
        return n_batches * batch / (time.perf_counter() - t)

    return rate


def has_timm(python: str) -> bool:
    if not os.path.exists(python):
        return False
    return subprocess.run([python, "-c", "import timm, torch"], capture_output=True).returncode == 0


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", default="data/tfds")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--images", type=int, default=1_024, help="timed images per round and side")
    p.add_argument("--skip", type=int, default=2, help="untimed batches at each round's start")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="timm DataLoader worker processes")
    p.add_argument("--timm_python", default=".venv-bench/bin/python",
                   help="a Python with torch and timm (the row is skipped without them)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny: 32 px, batch 4, 2 batches, one round, no timm (a CI check)")
    a = p.parse_args(argv)
    if a.smoke:
        a.size, a.batch_size, a.images, a.skip, a.rounds, a.timm_python = 32, 4, 8, 0, 1, ""
    n_batches = max(1, a.images // a.batch_size)
    vitx = vitx_loader(a.data_dir, a.batch_size, a.size)
    timm = None
    if a.timm_python and has_timm(a.timm_python):
        folder = tempfile.mkdtemp(prefix="bench_pipeline_")
        n = export_jpegs(a.data_dir, folder)
        timm = TimmLoader(a.timm_python, folder, a.batch_size, a.size, a.workers)
        print(f"{n} JPEGs; timm loader: {a.workers} workers ({a.timm_python})")
    elif a.timm_python:
        print(f"timm row skipped: no torch + timm in {a.timm_python!r}")
    rates: dict[str, list[float]] = {"vitx": [], "timm": []}
    for r in range(a.rounds):
        rates["vitx"].append(vitx(n_batches, a.skip))
        line = f"round {r}: vitx {rates['vitx'][-1]:.1f} img/s"
        if timm is not None:
            rates["timm"].append(timm.rate(n_batches, a.skip))
            line += f", timm {rates['timm'][-1]:.1f} img/s"
        print(line, flush=True)
    if timm is not None:
        timm.close()
    out = {f"{k}_images_per_sec": statistics.median(v) for k, v in rates.items() if v}
    summary = f"vitx tf.data: {out['vitx_images_per_sec']:.1f} images/s"
    if rates["timm"]:
        out["ratio"] = out["vitx_images_per_sec"] / out["timm_images_per_sec"]
        summary += (f"; timm DataLoader: {out['timm_images_per_sec']:.1f} images/s; "
                    f"vitx / timm = {out['ratio']:.2f}")
    print(f"{summary} (medians of {a.rounds} interleaved rounds of {n_batches * a.batch_size} "
          f"images, {a.size} px, batch {a.batch_size}, {os.cpu_count()} CPUs)")
    return out


if __name__ == "__main__":
    main()
    sys.exit(0)
