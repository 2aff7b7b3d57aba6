"""Masked patch prediction: predict each corrupted patch's 3-bit mean colour (self-supervised).

    config.model.masked_patch_rate = 0.5          # the model corrupts 50 % of its patches
    config.task = dict(type="masked_patch", inputs="image", patch_size=8, bits=3)
    config.num_classes = 8                        # 2**bits per channel: 8 grey, 512 for RGB

Source: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, Sec. 4.6 and
Appendix B.1.2 (seed 000): corrupt 50 % of the patch embeddings (80 % a learned [mask]
embedding, 10 % another patch's embedding, 10 % unchanged; `vitx.models.masked_patch`) and
predict the 3-bit mean colour of every corrupted patch (512 classes) with a softmax over its
output token. The target is the mean of each channel over the patch's pixels (of the model's
input image), each quantised to `bits` bits: for C channels, class = sum_c level_c * L**(C-1-c)
with L = 2**bits levels (R most significant). Grey images (C = 1) have L = 8 classes.

The model returns per-patch logits (B, N, K) and `aux["patch_mask"]` (B, N); this task reads
that aux (`reads_aux`), so the train step, the loss probe and the classification evaluator
pass it as `aux=`. Metrics: `loss` is the mean cross-entropy over an example's corrupted
patches, `correct` the share of them whose colour is predicted (an eval's "accuracy").
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

Array = jax.Array


def mean_colour_classes(images: Array, patch_size: tuple[int, int], bits: int = 3,
                        value_range: tuple[float, float] = (-1.0, 1.0)) -> Array:
    """The quantised mean colour of every patch: (B, H, W, C) -> (B, N) int32 classes.

    N = (H / ph) * (W / pw) in row-major order (the ViT's token order). Each channel's mean
    over the patch is mapped from `value_range` to [0, 1] and quantised to L = 2**bits levels
    (floor(mean * L), clipped to [0, L - 1]); the class is the levels' mixed-radix number,
    channel 0 most significant (0 <= class < L**C).

    Raises:
      ValueError: the patch size does not divide H x W (names `task.patch_size`).
    """
    b, h, w, c = images.shape
    ph, pw = patch_size
    if h % ph or w % pw:
        raise ValueError(f"task.patch_size={(ph, pw)} does not divide the image size {h}x{w}; "
                         f"set it to the model's patch size")
    x = images.astype(jnp.float32).reshape(b, h // ph, ph, w // pw, pw, c)
    mean = x.mean(axis=(2, 4)).reshape(b, -1, c)  # (B, N, C)
    lo, hi = value_range
    levels = 2 ** bits
    q = jnp.clip(jnp.floor((mean - lo) / (hi - lo) * levels), 0, levels - 1).astype(jnp.int32)
    weights = levels ** jnp.arange(c - 1, -1, -1, dtype=jnp.int32)  # (C,)
    return jnp.sum(q * weights, axis=-1)


@dataclasses.dataclass(frozen=True)
class Task:
    """Masked patch prediction on `batch[inputs]` (B, H, W, C) images; no labels needed.

    Attributes:
      num_classes: K = (2**bits)**C: 8 for grey images, 512 for RGB (3 bits).
      patch_size: the model's patch size (an int or (ph, pw)): the targets' patch grid.
      inputs: the batch key of the images.
      bits: bits per channel of the target colour (3 in the paper).
      value_range: the pixel range of the model's input (pp's value_range(-1, 1)).
    """

    num_classes: int
    patch_size: int | tuple[int, int] = 16
    inputs: str = "image"
    bits: int = 3
    value_range: tuple[float, float] = (-1.0, 1.0)
    reads_aux: ClassVar[bool] = True  # loss / correct take the model's aux (patch_mask)

    def __post_init__(self) -> None:
        ps = self.patch_size
        ps = (ps, ps) if isinstance(ps, int) else tuple(int(p) for p in ps)
        if len(ps) != 2 or min(ps) < 1:
            raise ValueError(f"task.patch_size={self.patch_size!r} must be a positive int or "
                             f"pair, the model's patch size")
        object.__setattr__(self, "patch_size", ps)
        object.__setattr__(self, "value_range", tuple(float(v) for v in self.value_range))
        if not 1 <= self.bits <= 8:
            raise ValueError(f"task.bits={self.bits!r} must be in 1..8 (3 in the ViT paper)")

    def model_inputs(self, batch: dict[str, Array]) -> Array:
        return batch[self.inputs]

    def targets(self, batch: dict[str, Array]) -> Array:
        """(B, N) int32 mean-colour classes of the patches (`mean_colour_classes`).

        Raises:
          ValueError: num_classes is not (2**bits)**C (names `num_classes` and the value).
        """
        images = batch[self.inputs]
        want = (2 ** self.bits) ** images.shape[-1]
        if self.num_classes != want:
            raise ValueError(f"num_classes={self.num_classes} does not fit masked patch "
                             f"prediction of {images.shape[-1]}-channel images with "
                             f"task.bits={self.bits}; set num_classes={want}")
        return mean_colour_classes(images, self.patch_size, self.bits, self.value_range)

    def _check(self, logits: Array, targets: Array, aux: dict[str, Any] | None) -> Array:
        if aux is None or "patch_mask" not in aux:
            raise ValueError("task.type='masked_patch' needs a model that corrupts its patches; "
                             "set model.masked_patch_rate=0.5 (model_name='vit')")
        if logits.shape[:2] != targets.shape:
            raise ValueError(f"the model's per-patch logits {tuple(logits.shape)} do not fit the "
                             f"{targets.shape[1]} patches of task.patch_size="
                             f"{self.patch_size}; set it to the model's patch size")
        return aux["patch_mask"].astype(jnp.float32)

    def loss(self, logits: Array, batch: dict[str, Array], aux: dict[str, Any] | None = None
             ) -> Array:
        """(B, N, K) logits -> (B,) mean softmax cross-entropy over each example's corrupted
        patches (0 for an example with none)."""
        targets = self.targets(batch)
        mask = self._check(logits, targets, aux)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        xent = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # (B, N)
        return jnp.sum(xent * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)

    def correct(self, logits: Array, batch: dict[str, Array],
                aux: dict[str, Any] | None = None) -> Array:
        """(B,) float32: the share of each example's corrupted patches whose colour class is
        the argmax."""
        targets = self.targets(batch)
        mask = self._check(logits, targets, aux)
        hit = (jnp.argmax(logits, -1) == targets).astype(jnp.float32)
        return jnp.sum(hit * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)

    def predict(self, logits: Array) -> Array:
        """(B, N, K) colour-class probabilities per patch."""
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
