"""TFDS builder `moving_digits`: one real digit scan bouncing around a small video clip.

Each clip has T=8 frames of 32x32 grayscale pixels. A single handwritten digit scan from
`vitx.data.builders.digits.load_arrays` (scikit-learn's 8x8 UCI scans, values 0..255) is
upsampled to a 16x16 sprite by nearest-neighbour pixel replication (every scan pixel becomes a
2x2 block; exact and deterministic) and pasted onto a black canvas. The sprite moves at a
constant integer velocity and bounces off the borders (moving-MNIST style).

Motion model (all in pixels; y = row index, growing downwards; x = column index):

* the sprite's top-left corner `p_t = (y_t, x_t)` lives in `[0, 16] x [0, 16]`;
* the initial velocity is `v_0 = s * (dy, dx)` with `(dy, dx)` the unit sign pattern of
  one of the 8 compass directions below and speed `s` in {2, 3} px/frame per moving axis
  (so diagonal clips move `s * sqrt(2)` px/frame);
* `p_{t+1} = p_t + v_t`; a coordinate that leaves `[0, 16]` is reflected back into it
  and that velocity component flips sign (a bounce).

Labels. `direction` is the compass direction of the INITIAL velocity `v_0`, index into
`DIRECTIONS = (N, NE, E, SE, S, SW, W, NW)` with N = up (dy=-1), E = right (dx=+1). Start
positions are drawn uniformly from the positions from which the first step needs no bounce,
so the displacement from frame 0 to frame 1 always equals `v_0` and the label is visible
in the clip. Later steps may bounce (about 90 % of clips bounce at least once within the 8
frames), which reverses the motion along that axis; a step that hits a border moves less than
`s` along it (possibly 0), but is still one rigid integer translation. Because the start
position is uniform over that (large) set, it gives away little about the direction.

Features of each example:

* `video`: uint8 (time=8, height=32, width=32, channels=1), values 0..255;
* `mask`: uint8 (time, height, width, 1), 1 where the frame's pixel is > 0 (the digit's
  ink), else 0;
* `flow`: float32 (time, height, width, 2), channels (dy, dx) in pixels per frame. Frame
  t's flow is the exact displacement `p_{t+1} - p_t` of the digit from frame t to t+1,
  set on frame t's ink pixels (`mask[t] == 1`) and zero on the background. The last
  frame (t = T-1) has no successor: it repeats the previous displacement `p_{T-1} - p_{T-2}`
  on its own ink pixels. The motion is a rigid integer translation, so for every t < T-1
  moving frame t's ink pixels by the flow gives exactly frame t+1's ink pixels.
* `digit`: ClassLabel(10), the scan's digit class;
* `direction`: ClassLabel(8), names `DIRECTIONS`;
* `label`: equal to `direction` (so the default `label` key is the motion task);
* `id`: int64, row index of the source scan in `sklearn.datasets.load_digits()`.

Splits (no leakage: train clips use only digits-train scans, test clips only digits-test
scans): `train` has 2,874 clips (2 per train scan), `test` 360 (1 per test scan).
Directions are balanced (a seeded permutation of `arange(n) % 8`); speeds and start
positions are drawn from `numpy.random.default_rng` with a fixed seed per split, so every
build is bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from vitx.data.builders import digits
from vitx.data.builders.base import LocalBuilder

NUM_FRAMES = 8
FRAME_SIZE = 32
UPSAMPLE = 2
SPRITE_SIZE = 8 * UPSAMPLE  # 16
MAX_POS = FRAME_SIZE - SPRITE_SIZE  # top-left corner coordinates lie in [0, MAX_POS]
SPEEDS = (2, 3)  # pixels per frame, per moving axis
DIRECTIONS = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")
# (dy, dx) unit sign pattern of each direction; y grows downwards, so N is dy = -1.
DIRECTION_SIGNS: dict[str, tuple[int, int]] = {
    "N": (-1, 0),
    "NE": (-1, 1),
    "E": (0, 1),
    "SE": (1, 1),
    "S": (1, 0),
    "SW": (1, -1),
    "W": (0, -1),
    "NW": (-1, -1),
}
CLIPS_PER_SCAN = {"train": 2, "test": 1}
SPLIT_SIZES = {"train": 2 * 1437, "test": 360}
SPLIT_SEEDS = {"train": 20_240_801, "test": 20_240_802}

VIDEO_SHAPE = (NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 1)
FLOW_SHAPE = (NUM_FRAMES, FRAME_SIZE, FRAME_SIZE, 2)


def direction_index(dy: int, dx: int) -> int:
    """Index into `DIRECTIONS` of a velocity's sign pattern (`np.sign` of dy, dx).

    Raises:
        ValueError: if the velocity is zero.
    """
    signs = (int(np.sign(dy)), int(np.sign(dx)))
    for i, name in enumerate(DIRECTIONS):
        if DIRECTION_SIGNS[name] == signs:
            return i
    raise ValueError(f"velocity (dy, dx)=({dy}, {dx}) has no direction; use a non-zero one.")


def upsample(scan: np.ndarray) -> np.ndarray:
    """(8, 8[, 1]) uint8 scan -> (16, 16) uint8 sprite by 2x2 nearest-neighbour replication."""
    scan = np.asarray(scan)
    if scan.ndim == 3:
        scan = scan[..., 0]
    return np.repeat(np.repeat(scan, UPSAMPLE, axis=0), UPSAMPLE, axis=1)


def trajectory(start: np.ndarray, velocity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bouncing motion of the sprite's top-left corner.

    Args:
        start: int (2,) start position (y, x) in [0, MAX_POS].
        velocity: int (2,) initial velocity (vy, vx) in px/frame, |v| <= MAX_POS.

    Returns:
        `(positions, displacements)`: int64 (T, 2) positions p_t and int64 (T, 2)
        displacements, `displacements[t] = p_{t+1} - p_t` for t < T-1 and
        `displacements[T-1] = displacements[T-2]` (see the module docstring).
    """
    pos = np.asarray(start, dtype=np.int64).copy()
    vel = np.asarray(velocity, dtype=np.int64).copy()
    positions = np.zeros((NUM_FRAMES, 2), dtype=np.int64)
    positions[0] = pos
    for t in range(1, NUM_FRAMES):
        pos = pos + vel
        for a in range(2):
            if pos[a] < 0:
                pos[a], vel[a] = -pos[a], -vel[a]
            elif pos[a] > MAX_POS:
                pos[a], vel[a] = 2 * MAX_POS - pos[a], -vel[a]
        positions[t] = pos
    disp = np.zeros_like(positions)
    disp[:-1] = positions[1:] - positions[:-1]
    disp[-1] = disp[-2]
    return positions, disp


def render(scan: np.ndarray, start: np.ndarray, velocity: np.ndarray) -> dict[str, np.ndarray]:
    """Renders one clip of `scan` moving from `start` with initial `velocity`.

    Args:
        scan: uint8 (8, 8) or (8, 8, 1) digit scan, values 0..255.
        start: int (2,) top-left position (y, x) of the 16x16 sprite in frame 0.
        velocity: int (2,) initial velocity (vy, vx) in px/frame.

    Returns:
        `{"video": uint8 (T, 32, 32, 1), "mask": uint8 (T, 32, 32, 1),
        "flow": float32 (T, 32, 32, 2)}` as described in the module docstring.
    """
    sprite = upsample(scan)
    positions, disp = trajectory(start, velocity)
    video = np.zeros(VIDEO_SHAPE, dtype=np.uint8)
    for t, (y, x) in enumerate(positions):
        video[t, y : y + SPRITE_SIZE, x : x + SPRITE_SIZE, 0] = sprite
    mask = (video > 0).astype(np.uint8)
    flow = mask.astype(np.float32) * disp.astype(np.float32)[:, None, None, :]
    return {"video": video, "mask": mask, "flow": flow}


def _sample_start(rng: np.random.Generator, velocity: np.ndarray) -> np.ndarray:
    """Uniform start (y, x) from which the first step `start + velocity` stays in range."""
    start = np.zeros(2, dtype=np.int64)
    for a in range(2):
        lo = max(0, -int(velocity[a]))
        hi = MAX_POS - max(0, int(velocity[a]))
        start[a] = rng.integers(lo, hi + 1)
    return start


def generate_clips(split: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields `(clip_index, example)` for `split`, exactly as the builder stores them.

    Deterministic: a pure function of `split` (fixed seed `SPLIT_SEEDS`).

    Raises:
        ValueError: if `split` is not `"train"` or `"test"`.
    """
    if split not in CLIPS_PER_SCAN:
        raise ValueError(f"split={split!r} is unknown; use one of {sorted(CLIPS_PER_SCAN)}.")
    images, labels, ids = digits.load_arrays()[split]
    per_scan = CLIPS_PER_SCAN[split]
    n = len(ids) * per_scan
    rng = np.random.default_rng(SPLIT_SEEDS[split])
    directions = rng.permutation(np.arange(n) % len(DIRECTIONS))
    speeds = rng.choice(np.asarray(SPEEDS, dtype=np.int64), size=n)
    for i in range(n):
        scan = i // per_scan
        direction = int(directions[i])
        velocity = int(speeds[i]) * np.asarray(DIRECTION_SIGNS[DIRECTIONS[direction]])
        start = _sample_start(rng, velocity)
        clip = render(images[scan], start, velocity)
        yield (
            i,
            {
                **clip,
                "digit": int(labels[scan]),
                "direction": direction,
                "label": direction,
                "id": int(ids[scan]),
            },
        )


class MovingDigits(LocalBuilder):
    """8-frame 32x32 clips of one real digit scan bouncing around, with mask and flow."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release (2 clips per digits-train scan, 1 per test)."}

    def _info(self) -> tfds.core.DatasetInfo:
        zlib = tfds.features.Encoding.ZLIB  # mostly-zero arrays: ~30x smaller on disk
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "8-frame 32x32 uint8 clips of one sklearn digit scan (upsampled to 16x16) "
                "moving at constant velocity and bouncing off the borders; labels: digit "
                "class and compass direction of the initial velocity; per-frame ink mask "
                "and exact optical flow (dy, dx) in pixels per frame."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "video": tfds.features.Tensor(shape=VIDEO_SHAPE, dtype=np.uint8, encoding=zlib),
                    "mask": tfds.features.Tensor(shape=VIDEO_SHAPE, dtype=np.uint8, encoding=zlib),
                    "flow": tfds.features.Tensor(shape=FLOW_SHAPE, dtype=np.float32, encoding=zlib),
                    "digit": tfds.features.ClassLabel(num_classes=digits.NUM_CLASSES),
                    "direction": tfds.features.ClassLabel(names=DIRECTIONS),
                    "label": tfds.features.ClassLabel(names=DIRECTIONS),
                    "id": np.int64,
                }
            ),
            supervised_keys=("video", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
        del dl_manager  # Built from scikit-learn's bundled scans: nothing to download.
        return {split: self._generate_examples(split) for split in ("train", "test")}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        yield from generate_clips(split)
