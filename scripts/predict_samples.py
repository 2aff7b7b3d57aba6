r"""Write the first test examples of the offline datasets as ordinary files, for `vitx predict`.

    python scripts/predict_samples.py --data_dir data/tfds --out workdirs/polyvit/samples

Writes, from the `test` split of each dataset (built on first use), the true class in the name:

  digit_<i>_<label>.png              digits: the 8x8 grayscale scan, as the dataset stores it
  dtmf_<i>_key<key>.wav              dtmf_keys: 1 s at 8 kHz, 16-bit PCM (key * -> star, # -> hash)
  clip_<i>_<digit>_<direction>.npy   moving_digits: the clip, uint8 (8, 32, 32, 1)
  clip_<i>_<digit>_<direction>/      the same clip as 8 PNG frames, 00.png .. 07.png

`--datasets digits` writes only the scans; `--count` files per dataset (default 2).
"""

from __future__ import annotations

import argparse
import os

import numpy as np

DATASETS = ("digits", "dtmf_keys", "moving_digits")
_KEY_NAMES = {"*": "star", "#": "hash"}


def write_samples(data_dir: str, out: str, count: int = 2,
                  datasets: tuple[str, ...] = DATASETS) -> list[str]:
    """Writes `count` test examples of each of `datasets` into `out`; returns the paths.

    Raises:
      ValueError: an unknown dataset name or a count below 1.
    """
    import tensorflow as tf
    from scipy.io import wavfile

    from vitx.data.builders import dtmf_keys, moving_digits
    from vitx.data.info import dataset_info

    unknown = sorted(set(datasets) - set(DATASETS))
    if unknown or count < 1:
        raise ValueError(f"datasets {unknown} / count={count}: use names of {DATASETS} and a "
                         f"count >= 1")
    os.makedirs(out, exist_ok=True)
    paths = []
    for name in datasets:
        ds = dataset_info(name, data_dir).read("test", skip_image_decoding=True)
        for i, ex in enumerate(ds.take(count).as_numpy_iterator()):
            if name == "digits":
                path = os.path.join(out, f"digit_{i}_{ex['label']}.png")
                with open(path, "wb") as f:
                    f.write(ex["image"])  # PNG bytes, as stored
            elif name == "dtmf_keys":
                key = dtmf_keys.KEYS[ex["label"]]
                path = os.path.join(out, f"dtmf_{i}_key{_KEY_NAMES.get(key, key)}.wav")
                pcm = np.round(np.clip(ex["audio"], -1, 1) * 32767).astype(np.int16)
                wavfile.write(path, dtmf_keys.SAMPLE_RATE, pcm)
            else:
                stem = f"clip_{i}_{ex['digit']}_{moving_digits.DIRECTIONS[ex['direction']]}"
                path = os.path.join(out, stem + ".npy")
                np.save(path, ex["video"])
                folder = os.path.join(out, stem)
                os.makedirs(folder, exist_ok=True)
                for t, frame in enumerate(ex["video"]):
                    tf.io.write_file(os.path.join(folder, f"{t:02d}.png"), tf.io.encode_png(frame))
                paths.append(folder)
            paths.append(path)
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data_dir", required=True, help="TFDS data dir (e.g. data/tfds)")
    p.add_argument("--out", required=True, help="folder to write the files into")
    p.add_argument("--count", type=int, default=2, help="files per dataset")
    p.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated")
    args = p.parse_args()
    paths = write_samples(args.data_dir, args.out, args.count, tuple(args.datasets.split(",")))
    print(f"wrote {len(paths)} files to {args.out}")


if __name__ == "__main__":
    main()
