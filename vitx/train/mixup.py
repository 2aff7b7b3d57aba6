"""Mixup and CutMix in the train step: on device, on the global batch, a pure function of the
step's rng (so of `(seed, step)`), from `config.mixup` (timm's `Mixup` semantics).

    config.mixup = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5,
                        mode="batch")          # or "elem"; absent / both alphas 0: off

Per batch (`mode="batch"`) or per example (`mode="elem"`), with probability `prob` the
examples are mixed with their partner in the flipped global batch (example i with B-1-i): with
probability `switch_prob` by CutMix (when both alphas are > 0; only CutMix when only
`cutmix_alpha` > 0), else by Mixup. Mixup: x = lam x + (1 - lam) x_flip with lam ~ Beta(
mixup_alpha, mixup_alpha). CutMix: a box of the partner's pixels is pasted in; its side ratio
is sqrt(1 - lam) with lam ~ Beta(cutmix_alpha, cutmix_alpha), its centre uniform, clipped at
the border, and lam is then corrected to the kept area (1 - box area / H W; timm's
`correct_lam=True`). The labels (the task's (B, K) targets, i.e. after any label smoothing of
the `onehot(K, label_smoothing=...)` pp op) are mixed with the same lam: y = lam y +
(1 - lam) y_flip, so each mixed label still sums to 1.

The mix is applied once to the whole global batch before the loss, so with gradient
accumulation every micro-batch sees the same mixed examples as without it (micro-batches are
taken after mixing), and under `jit` on a mesh the partner of an example may live on another
device (the flip is a collective permute). Multi-task steps mix each task's batch with its own
task's inputs and labels and its own rng (`fold_in(rng, j)`).

Sources: Mixup (Zhang et al., ICLR 2018, Sec. 2); CutMix (Yun et al., ICCV 2019, Sec. 3.1,
box sampling and the area-corrected lambda); timm `timm/data/mixup.py` (`Mixup`: `prob`,
`switch_prob`, `mode`, flip pairing); DeiT (Touvron et al., ICML 2021, Table 9: mixup 0.8,
cutmix 1.0, switch 0.5).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from vitx.tasks import classification
from vitx.utils import ConfigError

Array = jax.Array

#: fold_in constant of the mix rng (the step's dropout rng stays as it was).
_SALT = 0x6D1C
MODES = ("batch", "elem")
KEYS = ("mixup_alpha", "cutmix_alpha", "prob", "switch_prob", "mode")


@dataclasses.dataclass(frozen=True)
class MixupConfig:
    """`config.mixup` (timm `Mixup` semantics, see the module docstring).

    Attributes:
      mixup_alpha: Beta(alpha, alpha) of Mixup's lam (0: no Mixup).
      cutmix_alpha: Beta(alpha, alpha) of CutMix's lam (0: no CutMix).
      prob: probability that a batch ("batch") or an example ("elem") is mixed at all.
      switch_prob: probability of CutMix rather than Mixup when both alphas are > 0.
      mode: "batch" (one lam and box per step) or "elem" (one per example).

    Raises:
      ConfigError: a negative alpha, a probability outside [0, 1] or an unknown mode.
    """

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: str = "batch"

    def __post_init__(self) -> None:
        for key in ("mixup_alpha", "cutmix_alpha"):
            v = getattr(self, key)
            if not isinstance(v, int | float) or isinstance(v, bool) or not v >= 0:
                raise ConfigError(f"mixup.{key}={v!r} must be a number >= 0 (0: off); fix it "
                                  f"with --config.mixup.{key}=...")
        for key in ("prob", "switch_prob"):
            v = getattr(self, key)
            if not isinstance(v, int | float) or isinstance(v, bool) or not 0 <= v <= 1:
                raise ConfigError(f"mixup.{key}={v!r} must be a probability in [0, 1]; fix it "
                                  f"with --config.mixup.{key}=...")
        if self.mode not in MODES:
            raise ConfigError(f"mixup.mode={self.mode!r} is unknown; use one of {MODES}")

    @property
    def enabled(self) -> bool:
        """Whether any example can be mixed."""
        return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0

    @classmethod
    def from_config(cls, config: Any) -> MixupConfig | None:
        """The `mixup` section of a config, or None when absent or off.

        Raises:
          ConfigError: unknown keys (lists the known ones) or bad values (see the class).
        """
        section = config.get("mixup")
        if not section:
            return None
        section = dict(section)
        unknown = sorted(set(section) - set(KEYS))
        if unknown:
            raise ConfigError(f"mixup has unknown keys {unknown}; its keys are {list(KEYS)}")
        cfg = cls(**section)
        return cfg if cfg.enabled else None


def _betas(key: Array, alphas: tuple[float, ...], n: int) -> Array:
    """(len(alphas), n) float32: row i ~ Beta(alphas[i], alphas[i]), i.i.d.

    X / (X + Y) with X, Y ~ Gamma(a) drawn in log space (as `jax.random.beta`, stable for small
    a), all rows from one `loggamma` call: one gamma sampler in the compiled step, not four.
    """
    a = jnp.repeat(jnp.asarray(alphas, jnp.float32), 2)[:, None]
    lg = jax.random.loggamma(key, a, (2 * len(alphas), n)).reshape(len(alphas), 2, n)
    lg = lg - jnp.max(lg, axis=1, keepdims=True)
    g = jnp.exp(lg)
    return g[:, 0] / (g[:, 0] + g[:, 1])


def sample(cfg: MixupConfig, key: Array, n: int) -> tuple[Array, Array]:
    """(lam (n,) float32, use_cutmix (n,) bool): the draws of n mixes (1 per batch or B).

    lam is 1 (no mixing) with probability 1 - prob; CutMix's lam here is the sampled one,
    before the area correction of `cutmix_boxes`.
    """
    k_apply, k_switch, k_beta = jax.random.split(key, 3)
    apply = jax.random.uniform(k_apply, (n,)) < cfg.prob
    if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch, (n,)) < cfg.switch_prob
        lam_mix, lam_cut = _betas(k_beta, (cfg.mixup_alpha, cfg.cutmix_alpha), n)
        lam = jnp.where(use_cutmix, lam_cut, lam_mix)
    else:
        use_cutmix = jnp.full((n,), cfg.cutmix_alpha > 0)
        lam = _betas(k_beta, (max(cfg.mixup_alpha, cfg.cutmix_alpha),), n)[0]
    lam = jnp.where(apply, lam, 1.0)
    return lam.astype(jnp.float32), use_cutmix & apply


def cutmix_boxes(key: Array, lam: Array, height: int, width: int
                 ) -> tuple[Array, Array]:
    """CutMix boxes for lam (n,): (box masks (n, H, W) bool, corrected lam (n,) float32).

    timm's `rand_bbox`: cut = int(side * sqrt(1 - lam)) per side, centre uniform in
    [0, H) x [0, W), box [c - cut // 2, c + cut // 2) clipped to the image; the corrected lam
    is 1 - box area / (H W) (the fraction of the example's own pixels kept).
    """
    n = lam.shape[0]
    ratio = jnp.sqrt(1.0 - lam)
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    k_y, k_x = jax.random.split(key)
    cy = jax.random.randint(k_y, (n,), 0, height)
    cx = jax.random.randint(k_x, (n,), 0, width)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + cut_h // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + cut_w // 2, 0, width)
    hs, ws = jnp.arange(height), jnp.arange(width)
    in_h = (y0[:, None] <= hs) & (hs < y1[:, None])
    in_w = (x0[:, None] <= ws) & (ws < x1[:, None])
    boxes = in_h[:, :, None] & in_w[:, None, :]
    area = ((y1 - y0) * (x1 - x0)).astype(jnp.float32)
    return boxes, 1.0 - area / (height * width)


def mix(cfg: MixupConfig, key: Array, inputs: Mapping[str, Array], targets: Array
        ) -> tuple[dict[str, Array], Array, Array]:
    """Mix a batch: (mixed inputs, mixed targets (B, K), lam (n,) as applied).

    `inputs`: {key: (B, ...) float}; CutMix needs one input of shape (B, ..., H, W, C) (boxes on
    the axes -3, -2: images (B, H, W, C), clips (B, T, H, W, C)). `targets`: (B, K) label
    distributions. n = 1 in "batch" mode, B in "elem" mode; lam is 1 for unmixed examples.
    """
    b = targets.shape[0]
    n = 1 if cfg.mode == "batch" else b
    k_draw, k_box = jax.random.split(key)
    lam, use_cutmix = sample(cfg, k_draw, n)
    out = {}
    for name, x in inputs.items():
        lam_x = lam.reshape((n,) + (1,) * (x.ndim - 1)).astype(x.dtype)
        xf = jnp.flip(x, 0)
        out[name] = x * lam_x + xf * (1 - lam_x)
    if cfg.cutmix_alpha > 0:
        (name, x), = inputs.items()
        boxes, lam_box = cutmix_boxes(k_box, lam, x.shape[-3], x.shape[-2])
        boxes = boxes.reshape((n,) + (1,) * (x.ndim - 4) + boxes.shape[1:] + (1,))
        cut = jnp.where(boxes, jnp.flip(x, 0), x)
        pick = use_cutmix.reshape((n,) + (1,) * (x.ndim - 1))
        out[name] = jnp.where(pick, cut, out[name])
        lam = jnp.where(use_cutmix, lam_box, lam)
    lam_y = lam[:, None]
    targets = targets.astype(jnp.float32)
    mixed = targets * lam_y + jnp.flip(targets, 0) * (1 - lam_y)
    return out, mixed, lam


def check_routes(cfg: MixupConfig | None, routes: Mapping[Any, Any]) -> None:
    """Each route's task can be mixed: a classification or multilabel task ((B, K) targets),
    float inputs, and for CutMix one input of rank >= 3 per example (..., H, W, C).

    Raises:
      ConfigError: naming the task, the input key and the fix.
    """
    if cfg is None:
        return
    for r in routes.values():
        where = "task" if r.name is None else f"task {r.name}"
        if not isinstance(r.task, classification.Task):  # and multilabel, its subclass
            raise ConfigError(f"mixup: {where} ({type(r.task).__module__}) has no (B, K) label "
                              f"distribution to mix; mixup needs a classification or "
                              f"multilabel task; turn it off (config.mixup=None)")
        keys = r.task.inputs if isinstance(r.task.inputs, tuple) else (r.task.inputs,)
        for k in keys:
            shape, dtype = r.spec[k]
            if not jnp.issubdtype(dtype, jnp.floating):
                raise ConfigError(f"mixup: {where} input {k!r} is {jnp.dtype(dtype).name}; "
                                  f"mixing needs floats: add value_range(-1, 1) to its pp")
        if cfg.cutmix_alpha > 0 and (len(keys) != 1 or len(r.spec[keys[0]][0]) < 3):
            raise ConfigError(f"mixup.cutmix_alpha={cfg.cutmix_alpha} needs one input of shape "
                              f"(..., H, W, C); {where} reads {list(keys)} of shapes "
                              f"{[r.spec[k][0] for k in keys]}; set cutmix_alpha=0")


def batch_fn(cfg: MixupConfig, tasks: list[Any]) -> Callable[[Any, Array], Any]:
    """(batch, rng) -> mixed batch, for the train step (`steps.build_train_step(batch_fn=)`).

    `tasks`: the task of each route the step trains; a step of one task gets its batch dict,
    a step of several a tuple of batch dicts (task j mixed with `fold_in(key, j)`). `rng` is
    the step's rng; the mix uses `fold_in(rng, _SALT)`, a pure function of (seed, step). The
    task's label key then holds the mixed (B, K) float32 targets.
    """
    def mix_one(task: Any, batch: dict, key: Array) -> dict:
        keys = task.inputs if isinstance(task.inputs, tuple) else (task.inputs,)
        inputs, targets, _ = mix(cfg, key, {k: batch[k] for k in keys}, task.targets(batch))
        return {**batch, **inputs, task.labels: targets}

    def fn(batch: Any, rng: Array) -> Any:
        key = jax.random.fold_in(rng, _SALT)
        if isinstance(batch, tuple):
            return tuple(mix_one(t, b, jax.random.fold_in(key, j))
                         for j, (t, b) in enumerate(zip(tasks, batch, strict=True)))
        return mix_one(tasks[0], batch, key)
    return fn
