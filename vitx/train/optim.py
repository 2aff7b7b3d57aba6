"""optax from the config: optimizer, lr schedule, weight-decay mask, clipping, lr multipliers.

Config keys (all top-level; parsed once into `OptimConfig`, which the functions here take):
  optax_name       "adam" | "adamw" | "sgd" | "adafactor"
  optax            extra kwargs of the optimizer (e.g. b1, b2, momentum, nesterov)
  lr               peak learning rate (after warmup)
  wd               weight decay, applied to kernels only (leaves named `.../kernel`); decoupled
                   (AdamW, Loshchilov & Hutter 2019) and scaled by the lr schedule, as in optax
  schedule         dict(decay_type="cosine"|"linear"|"rsqrt"|"constant", warmup_steps=int,
                   end_lr_ratio=0.0 (cosine/linear floor), timescale=warmup_steps (rsqrt))
  grad_clip_norm   global-norm clipping threshold (None: no clipping)
  lr_mults         [(regex, mult), ...]: the first regex that `re.search`es a param's '/'-path
                   scales its updates by `mult`; 0 or None freezes it (no optimizer state, the
                   param stays bit-identical). Params matching no rule use 1.0.
  layer_decay      None or a float in (0, 1]: layer-wise lr decay for fine-tuning ViT-family
                   models (BEiT, Bao et al. 2022, Sec. 2.6 and Appendix; timm's `layer_decay`):
                   `layer_decay_mults` rules appended after the user's `lr_mults` (which win).
                   Needs unstacked blocks (`model.scan=False`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from vitx.train.sharding import path_name
from vitx.utils import ConfigError

OPTIMIZERS = ("adam", "adamw", "sgd", "adafactor")
DECAY_TYPES = ("cosine", "linear", "rsqrt", "constant")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """The optimizer's part of a run config (the keys of the module docstring), parsed once.

    Attributes:
      lr: peak learning rate.
      total_steps: the run's length in optimizer steps (the schedule's end).
      optax_name: one of `OPTIMIZERS`.
      optax: extra keyword arguments of the optimizer.
      wd: weight decay on kernels (0: none).
      decay_type, warmup_steps, end_lr_ratio, timescale: `schedule.*` (timescale None: the
        warmup length, at least 1).
      grad_clip_norm: global-norm clipping threshold (None: no clipping).
      lr_mults: ((regex, mult), ...) rules (mult 0 or None freezes).
      layer_decay: layer-wise lr decay factor in (0, 1], or None (see `layer_decay_mults`).

    Raises:
      ConfigError: unknown `schedule.decay_type`, warmup_steps > total_steps, an `lr_mults`
        pattern that does not compile, an unknown `optax_name`, or `layer_decay` outside (0, 1].
    """

    lr: float
    total_steps: int
    optax_name: str = "adamw"
    optax: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    wd: float = 0.0
    decay_type: str = "cosine"
    warmup_steps: int = 0
    end_lr_ratio: float = 0.0
    timescale: float | None = None
    grad_clip_norm: float | None = None
    lr_mults: tuple[tuple[str, Any], ...] = ()
    layer_decay: float | None = None

    def __post_init__(self) -> None:
        if self.layer_decay is not None and not 0.0 < self.layer_decay <= 1.0:
            raise ConfigError(f"layer_decay={self.layer_decay} must be in (0, 1] (e.g. 0.75), "
                              f"or None for no layer-wise lr decay")
        if self.decay_type not in DECAY_TYPES:
            raise ConfigError(f"schedule.decay_type={self.decay_type!r} is unknown; use one of "
                              f"{DECAY_TYPES}")
        if self.warmup_steps > self.total_steps:
            raise ConfigError(f"schedule.warmup_steps={self.warmup_steps} exceeds "
                              f"total_steps={self.total_steps}; lower warmup_steps")
        for regex, _ in self.lr_mults:
            try:
                re.compile(regex)
            except (re.error, TypeError) as e:
                raise ConfigError(f"lr_mults: pattern {regex!r} is not a valid regex ({e}); "
                                  f"fix it") from None
        if self.optax_name not in OPTIMIZERS:
            raise ConfigError(f"optax_name={self.optax_name!r} is unknown; use one of "
                              f"{OPTIMIZERS}")

    @classmethod
    def from_config(cls, config: Any) -> OptimConfig:
        """Parse the optimizer keys of a run config (`total_steps` resolved).

        Raises:
          ConfigError: see the class.
        """
        sched = config.get("schedule") or {}
        timescale = sched.get("timescale")
        return cls(lr=float(config.lr), total_steps=int(config.total_steps),
                   optax_name=config.get("optax_name", "adamw"),
                   optax=dict(config.get("optax") or {}),
                   wd=float(config.get("wd", 0.0) or 0.0),
                   decay_type=sched.get("decay_type", "cosine"),
                   warmup_steps=int(sched.get("warmup_steps", 0)),
                   end_lr_ratio=float(sched.get("end_lr_ratio", 0.0)),
                   timescale=None if timescale is None else float(timescale),
                   grad_clip_norm=(float(config.grad_clip_norm) if config.get("grad_clip_norm")
                                   else None),
                   lr_mults=tuple(tuple(r) for r in (config.get("lr_mults") or [])),
                   layer_decay=(None if config.get("layer_decay") is None
                                else float(config.layer_decay)))

    @classmethod
    def of(cls, config: Any) -> OptimConfig:
        """`config` itself if it is an `OptimConfig`, else `from_config(config)`."""
        return config if isinstance(config, OptimConfig) else cls.from_config(config)


def make_schedule(config: OptimConfig | Any) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over `schedule.warmup_steps`, then the decay to `total_steps`.

    `config`: an `OptimConfig`, or a run config (parsed with `OptimConfig.from_config`).

    Raises:
      ConfigError: unknown `schedule.decay_type` or warmup_steps > total_steps.
    """
    cfg = OptimConfig.of(config)
    decay_type, warmup, total, lr = cfg.decay_type, cfg.warmup_steps, cfg.total_steps, cfg.lr
    end = lr * cfg.end_lr_ratio
    rest = max(total - warmup, 1)
    if decay_type == "cosine":
        decay = optax.cosine_decay_schedule(lr, rest, alpha=end / lr if lr else 0.0)
    elif decay_type == "linear":
        decay = optax.linear_schedule(lr, end, rest)
    elif decay_type == "constant":
        decay = optax.constant_schedule(lr)
    else:  # rsqrt (Vaswani et al. 2017), continuous at the end of warmup
        timescale = cfg.timescale if cfg.timescale is not None else float(max(warmup, 1))
        def decay(step: Any) -> Any:
            return lr * jnp.sqrt(timescale / (jnp.maximum(step, 0) + timescale))
    if warmup == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def lr_mult_tree(params: Any, lr_mults: Sequence[tuple[str, Any]] | None) -> Any:
    """Per-leaf multiplier (float; 0.0 means frozen) from `lr_mults` rules (regexes checked by
    `OptimConfig`): the first rule whose regex `re.search`es a param's '/'-path applies."""
    rules = list(lr_mults or [])

    def one(path: tuple, _: Any) -> float:
        name = path_name(path)
        for regex, mult in rules:
            if re.search(regex, name):
                return 0.0 if mult is None else float(mult)
        return 1.0
    return jax.tree_util.tree_map_with_path(one, params)


_P = r"^(?:params/)?"  # param paths may carry the collection name
_BLOCK = re.compile(_P + r"(Transformer|modality_layers_[^/]+)/encoderblock(?:_(\d+))?/")
_AFTER_ENCODER = _P + r"(?:Transformer/encoder_norm/|MAPHead|pre_logits/|head(?:_[^/]*)?/)"


def layer_decay_mults(param_paths: Iterable[str], decay: float) -> list[tuple[str, float]]:
    """`lr_mults` rules of layer-wise lr decay for a ViT-family param tree (ViT, FlexiViT,
    hybrid, PolyViT), in the order `lr_mult_tree` applies them.

    With L encoder blocks in all (PolyViT: its k modality layers count first, then the shared
    `Transformer` blocks), the block at depth j = 0..L-1 (`Transformer/encoderblock_{i}`: j = k
    + i; `modality_layers_<m>/encoderblock_{j}`) gets `decay ** (L - j)`; what comes after the
    encoder (`Transformer/encoder_norm`, `MAPHead*`, `pre_logits`, `head`, `head_<task>`) gets
    1.0; everything else, i.e. what comes before it (`embedding`, `cls`, `pos_embedding`,
    PolyViT's `tokenizer_<m>`, a hybrid's ResNet stem), gets `decay ** (L + 1)`. This is timm's
    `param_groups_layer_decay` (layer id 0 for the stem, i + 1 for block i, L + 1 for the rest,
    multiplier decay ** (L + 1 - id)). Source: Bao et al., "BEiT: BERT Pre-Training of Image
    Transformers", ICLR 2022, Sec. 2.6 and Appendix (layer-wise learning rate decay).

    Args:
      param_paths: every param's '/'-path (e.g. "Transformer/encoderblock_0/MlpBlock_0/...").
      decay: the factor, in (0, 1].

    Returns: [(regex, multiplier), ...], the last one (".*") catching the embeddings.

    Raises:
      ConfigError: a scanned encoder (`Transformer/encoderblock/...` holds all blocks stacked,
        so one regex cannot give them different multipliers), or no encoder blocks at all.
    """
    shared: set[int] = set()
    modality: dict[str, set[int]] = {}
    for path in param_paths:
        m = _BLOCK.match(path)
        if m is None:
            continue
        if m.group(2) is None:
            raise ConfigError("layer_decay needs one param per block: set model.scan=False "
                              "(a scanned encoder stacks all blocks in one param)")
        group = shared if m.group(1) == "Transformer" else modality.setdefault(m.group(1), set())
        group.add(int(m.group(2)))
    if not shared:
        raise ConfigError("layer_decay needs a ViT-family model (params Transformer/"
                          "encoderblock_{i}/...); this model has none, set layer_decay=None")
    k = max((len(v) for v in modality.values()), default=0)
    depth = k + len(shared)
    rules: list[tuple[str, float]] = [(_AFTER_ENCODER, 1.0)]
    rules += [(_P + rf"modality_layers_[^/]+/encoderblock_{j}/", float(decay ** (depth - j)))
              for j in range(k)]
    rules += [(_P + rf"Transformer/encoderblock_{i}/", float(decay ** (depth - k - i)))
              for i in sorted(shared)]
    rules.append((".*", float(decay ** (depth + 1))))
    return rules


def lr_rules(params: Any, config: OptimConfig | Any) -> list[tuple[str, Any]]:
    """The `lr_mults` rules in effect: the user's `lr_mults`, then `layer_decay_mults` of
    `params` (a pytree of arrays or shapes) when `layer_decay` is set.

    Raises:
      ConfigError: see `layer_decay_mults`.
    """
    cfg = OptimConfig.of(config)
    rules = list(cfg.lr_mults)
    if cfg.layer_decay is not None:
        leaves = jax.tree_util.tree_flatten_with_path(params)[0]
        rules += layer_decay_mults([path_name(p) for p, _ in leaves], cfg.layer_decay)
    return rules


def frozen_mask(params: Any, config: OptimConfig | Any) -> Any:
    """True for params frozen by `lr_mults` (multiplier 0 or None).

    `config`: an `OptimConfig`, or a run config (parsed with `OptimConfig.from_config`).

    Raises:
      ConfigError: see `layer_decay_mults`."""
    return jax.tree.map(lambda m: m == 0.0, lr_mult_tree(params, lr_rules(params, config)))


def _base_optimizer(cfg: OptimConfig, schedule: optax.Schedule,
                    wd_mask: Any) -> optax.GradientTransformation:
    name, kw = cfg.optax_name, dict(cfg.optax)
    try:
        return _make_base(name, kw, cfg.wd, schedule, wd_mask)
    except TypeError as e:  # e.g. an argument the optimizer does not take
        raise ConfigError(f"optax={kw} does not fit optax_name={name!r} ({e}); pass only that "
                          f"optimizer's arguments") from None


def _make_base(name: str, kw: dict, wd: float, schedule: optax.Schedule,
               wd_mask: Any) -> optax.GradientTransformation:
    if name == "adam":
        return optax.adam(schedule, **kw)
    if name == "adamw":
        return optax.adamw(schedule, weight_decay=wd, mask=wd_mask, **kw)
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(wd, wd_mask) if wd else optax.identity(),
                           optax.sgd(schedule, **kw))
    if name == "adafactor":
        return optax.adafactor(schedule, weight_decay_rate=wd or None,
                               weight_decay_mask=wd_mask, **kw)
    raise ConfigError(f"optax_name={name!r} is unknown; use one of {OPTIMIZERS}")


def make_optimizer(config: OptimConfig | Any, params: Any) -> optax.GradientTransformation:
    """The full update rule: clip -> optimizer(schedule, wd on kernels) -> lr multipliers.

    `config`: an `OptimConfig`, or a run config (parsed with `OptimConfig.from_config`).
    Frozen params (see `lr_mults`) get `optax.set_to_zero()` and hold no optimizer state.

    Raises:
      ConfigError: unknown optimizer or schedule, optimizer arguments it does not take, or a
        `layer_decay` the model does not allow (`layer_decay_mults`).
    """
    cfg = OptimConfig.of(config)
    schedule = make_schedule(cfg)
    wd_mask = jax.tree_util.tree_map_with_path(
        lambda p, _: path_name(p).endswith("kernel"), params)
    mults = lr_mult_tree(params, lr_rules(params, cfg))
    parts = []
    if cfg.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    parts.append(_base_optimizer(cfg, schedule, wd_mask))
    if any(m not in (0.0, 1.0) for m in jax.tree.leaves(mults)):
        parts.append(_scale_by_tree(mults))
    tx = optax.chain(*parts)
    if not any(m == 0.0 for m in jax.tree.leaves(mults)):
        return tx
    labels = jax.tree.map(lambda m: "frozen" if m == 0.0 else "train", mults)
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def _scale_by_tree(mults: Any) -> optax.GradientTransformation:
    def init(params: Any) -> optax.EmptyState:
        del params
        return optax.EmptyState()

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        del params
        # multi_transform hands masked trees (optax.MaskedNode) for other groups' leaves.
        scaled = jax.tree.map(lambda u, m: u if isinstance(u, optax.MaskedNode) else u * m,
                              updates, mults, is_leaf=lambda x: isinstance(x, optax.MaskedNode))
        return scaled, state
    return optax.GradientTransformation(init, update)
