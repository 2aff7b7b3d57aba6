"""The AssembleNet++ flax model, its config schema (`AssembleNetConfig`) and `check_input`.

Sources: AssembleNet++ (Ryoo et al., ECCV 2020) Sec. 3 and CN116157804A (package docstring).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.core import FrozenDict

from vitx.models.assemblenet.generators import (
    VARIANTS,
    apply_connection_weights,
    apply_streams_off,
    default_graph,
)
from vitx.models.assemblenet.graph import (
    ATTENTION_MODES,
    AttentionMode,
    BlockSpec,
    GraphSpec,
)
from vitx.models.assemblenet.layers import Bottleneck, Fusion, Stem
from vitx.utils import to_plain

__all__ = ["AssembleNetConfig", "Model", "check_input"]

Array = jax.Array
#: The keywords `Model` takes besides `num_classes` and `variant` (config.model).
MODEL_KEYS = ("blocks", "graph", "streams_off", "attention_mode", "connection_weights",
              "bn_momentum", "bn_epsilon", "head_zeroinit")


def _check_mode(mode: Any) -> None:
    if mode not in ATTENTION_MODES:
        raise ValueError(f"model.attention_mode={mode!r} is unknown; use one of {ATTENTION_MODES}")


@dataclasses.dataclass(frozen=True)
class AssembleNetConfig:
    """config.model of an AssembleNet++, parsed once (`from_config`): the graph and the settings
    of the layers (BatchNorm momentum 0.9 and epsilon 1e-5, zero-initialised head)."""

    graph: GraphSpec
    attention_mode: AttentionMode = "peer"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    head_zeroinit: bool = True

    def __post_init__(self) -> None:
        _check_mode(self.attention_mode)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | None) -> AssembleNetConfig:
        """Parse config.model (the keywords of `Model`, `variant` included; other keys ignored).

        The graph is `blocks`, or `default_graph(**VARIANTS[variant or "small"], **graph)`; then
        `streams_off` and `connection_weights` are applied and it is checked
        (`GraphSpec.from_blocks`, peers required in peer mode).

        Raises:
          ValueError: an unknown attention_mode or variant, blocks given with variant / graph,
            graph keywords unknown to `default_graph`, or a bad graph (one line naming the key /
            block and the fix).
        """
        cfg = to_plain(cfg) or {}
        mode = cfg.get("attention_mode", "peer")
        _check_mode(mode)
        blocks, variant, graph_kw = cfg.get("blocks"), cfg.get("variant"), cfg.get("graph")
        if blocks is not None and (variant is not None or graph_kw is not None):
            raise ValueError("model.blocks is given together with model.variant / model.graph; "
                             "give the graph one way only")
        if blocks is None:
            if variant is not None and variant not in VARIANTS:
                raise ValueError(f"model.variant={variant!r} is unknown; use one of "
                                 f"{sorted(VARIANTS)} or pass model.blocks")
            kw = {**VARIANTS.get(variant or "small", {}), **(graph_kw or {})}
            try:
                blocks = default_graph(**kw)
            except TypeError as e:
                raise ValueError(f"model.graph={graph_kw!r} does not fit default_graph ({e}); "
                                 f"pass its keyword arguments only") from None
        blocks = apply_streams_off(blocks, cfg.get("streams_off") or ())
        blocks = apply_connection_weights(blocks, cfg.get("connection_weights", "learned"))
        graph = GraphSpec.from_blocks(blocks, require_peers=mode == "peer")
        return cls(graph, mode, cfg.get("bn_momentum", 0.9), cfg.get("bn_epsilon", 1e-5),
                   cfg.get("head_zeroinit", True))


class _Block(nn.Module):
    """Fusion, then `num_units` bottlenecks (the first with the stride)."""

    block: BlockSpec
    attention_mode: str = "peer"
    target_hw: tuple[int, int] | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, xs: Mapping[str, Array], *, train: bool = False
                 ) -> tuple[Array, dict[str, dict[str, Array]]]:
        b = self.block
        x, info = Fusion(b.channels, b.inputs, tuple(c.peers for c in b.connections),
                         self.attention_mode, FrozenDict(b.weights), self.target_hw,
                         name="fusion")(xs)
        for u in range(b.num_units):
            x = Bottleneck(b.channels, b.bottleneck, b.stride if u == 0 else 1, b.dilation,
                           b.conv, b.kernel, self.bn_momentum, self.bn_epsilon,
                           name=f"unit_{u}")(x, train=train)
        return x, info


class _AssembleNet(nn.Module):
    """AssembleNet++ (package docstring) of a checked `graph`.

    __call__(inputs {stream: (B, T, H, W, C)} (extra keys ignored; a bare array when the graph
    has one stream), *, train) -> (logits (B, num_classes) or pre_logits (B, D) without
    num_classes, aux) with aux = {"blocks": {name: (B, T, H_b, W_b, C_b)}, "attention":
    {block: {input: (B, T, 1, 1, C_j)}}, "peer_weights": {block: {input: (P,)}},
    "connection_weights": {block: {input: ()}}, "pre_logits": (B, D), "logits"}.

    Raises:
      ValueError: a missing stream, streams of other ranks or of different B, T, H, W, or clip
        sizes not divisible by the blocks' spatial scales.
    """

    num_classes: int | None
    graph: GraphSpec
    attention_mode: str = "peer"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    head_zeroinit: bool = True

    @nn.compact
    def __call__(self, inputs: Mapping[str, Array] | Array, *, train: bool = False,
                 **kw: Any) -> tuple[Array, dict[str, Any]]:
        graph = self.graph
        streams = graph.streams
        if not isinstance(inputs, Mapping):
            if len(streams) != 1:
                raise ValueError(f"assemblenet needs a dict of the streams {streams}, got one "
                                 f"array; pass {{stream: (B, T, H, W, C)}} (task inputs)")
            inputs = {streams[0]: inputs}
        for s in streams:
            if s not in inputs:
                raise ValueError(f"assemblenet inputs lack stream {s!r} (keys: "
                                 f"{sorted(inputs)}); pass it or add it to model.streams_off")
            if jnp.ndim(inputs[s]) not in (4, 5):
                raise ValueError(f"assemblenet stream {s!r} has shape {jnp.shape(inputs[s])}; "
                                 f"pass (B, T, H, W, C)")
        sizes = {s: tuple(jnp.shape(inputs[s])[:4]) for s in streams}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"assemblenet streams have (B, T, H, W) {sizes}; resize them to one "
                             f"frame-aligned size")
        _, _, h0, w0 = next(iter(sizes.values()))
        scales = graph.scales()
        bad = sorted({s for _, s in scales.values() if h0 % s or w0 % s})
        if bad:
            raise ValueError(f"assemblenet clips of {h0}x{w0} are not divisible by the spatial "
                             f"scales {bad} of the graph; use sizes divisible by "
                             f"{math.lcm(*bad)} or change the strides")
        outs: dict[str, Array] = {}
        aux: dict[str, Any] = {"blocks": outs, "attention": {}, "peer_weights": {},
                               "connection_weights": {}}
        for s in graph.stems:
            outs[s.name] = Stem(s.channels, s.kernel, s.stride, s.dilation, s.conv, s.one_hot,
                                self.bn_momentum, self.bn_epsilon, name=s.name)(
                inputs[s.stream], train=train)
        for b in graph.blocks:
            fuse = scales[b.name][0]
            needed = list(b.inputs) + [k for c in b.connections for k in c.peers]
            outs[b.name], info = _Block(b, self.attention_mode, (h0 // fuse, w0 // fuse),
                                        self.bn_momentum, self.bn_epsilon, name=b.name)(
                {k: outs[k] for k in needed}, train=train)
            for key, value in info.items():
                aux[key][b.name] = value
        finals = graph.finals
        width = max(b.channels for b in finals)
        feats = None
        for b in finals:
            f = jnp.mean(outs[b.name], axis=(1, 2, 3))
            if b.channels != width:
                f = nn.Dense(width, use_bias=False, name=f"head_proj_{b.name}")(f)
            feats = f if feats is None else feats + f
        x = feats / len(finals)
        aux["pre_logits"] = x
        if self.num_classes:
            init = nn.initializers.zeros if self.head_zeroinit else nn.initializers.lecun_normal()
            x = nn.Dense(self.num_classes, kernel_init=init, name="head")(x)
            aux["logits"] = x
        return x, aux


def Model(num_classes: int | None = None, *, variant: str | None = None,  # noqa: N802
          **kw: Any) -> nn.Module:
    """AssembleNet++ with its graph from the config, e.g. `Model(8, blocks=default_graph())`.

    Keywords (config.model; `AssembleNetConfig.from_config`):
      blocks: the graph (package docstring); default `default_graph(**VARIANTS[variant or
        "small"], **graph)`.
      variant: "tiny" | "small" (default graph widths; not with `blocks`).
      graph: keyword arguments of `default_graph` (not with `blocks`).
      streams_off: streams whose stems (and connections / peers from them) are removed.
      attention_mode: "peer" (default) | "self" | "none".
      connection_weights: "learned" (default) or {"src->dst": p}, fixed post-sigmoid weights.
      bn_momentum (0.9), bn_epsilon (1e-5), head_zeroinit (True).

    The module's `__call__(inputs {stream: (B, T, H, W, C)}, *, train=False) -> (logits, aux)`;
    see `_AssembleNet` for aux and the package docstring for the `batch_stats` collection.

    Raises:
      ValueError: a bad graph or keyword (one line naming the key / block and the fix).
    """
    unknown = sorted(set(kw) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(f"model keys {unknown} are unknown to assemblenet; use "
                         f"{sorted(MODEL_KEYS)}")
    cfg = AssembleNetConfig.from_config(dict(kw, variant=variant))
    return _AssembleNet(num_classes=num_classes, graph=cfg.graph,
                        attention_mode=cfg.attention_mode, bn_momentum=cfg.bn_momentum,
                        bn_epsilon=cfg.bn_epsilon, head_zeroinit=cfg.head_zeroinit)


def check_input(model_cfg: Mapping[str, Any], shape: Any) -> None:
    """Validate the graph of `model_cfg` (config.model) and, if given, the clip shapes.

    `shape`: the per-example shape (T, H, W, C) of the task input, or {stream: shape} (or
    {stream: (shape, dtype)}, as `element_spec` gives), or None (graph only).

    Raises:
      ValueError: a bad graph (`AssembleNetConfig.from_config`), a stream missing from a shape
        dict, a shape that is not (T, H, W, C), streams of different T, H, W, a one-hot stream
        with C != 1, or H, W not divisible by the graph's spatial scales.
    """
    graph = AssembleNetConfig.from_config(model_cfg).graph
    if shape is None:
        return
    scales = sorted({s for _, s in graph.scales().values()})
    if isinstance(shape, Mapping):
        shapes = {}
        for b in graph.stems:
            s = b.stream
            if s not in shape:
                raise ValueError(f"stem {b.name!r} reads stream {s!r}, which the batches lack "
                                 f"(keys: {sorted(shape)}); add it to input.pp or to "
                                 f"model.streams_off")
            v = shape[s]
            if isinstance(v, tuple | list) and v and isinstance(v[0], tuple | list):
                v = v[0]
            v = tuple(int(d) for d in v)
            if len(v) != 4 or (b.one_hot and v[-1] != 1):
                want = "(T, H, W, 1)" if b.one_hot else "(T, H, W, C)"
                raise ValueError(f"stream {s!r} (stem {b.name!r}) has per-example shape {v}; "
                                 f"it needs {want}")
            shapes[s] = v[:3]
        if len(set(shapes.values())) != 1:
            raise ValueError(f"streams have (T, H, W) {shapes}; make them frame-aligned")
        t, h, w = next(iter(shapes.values()))
    else:
        v = tuple(int(d) for d in shape)
        if len(v) != 4:
            raise ValueError(f"assemblenet input has per-example shape {v}; it needs clips "
                             f"(T, H, W, C)")
        t, h, w = v[:3]
    bad = [s for s in scales if h % s or w % s]
    if bad:
        raise ValueError(f"clips of {h}x{w} are not divisible by the graph's spatial scales "
                         f"{bad}; resize to a multiple of {math.lcm(*bad)} or change the strides "
                         f"in model.blocks")
