"""AssembleNet++ layers: space-time conv, stem, residual bottleneck, peer attention, fusion.

Sources: AssembleNet (Ryoo et al., ICLR 2020) Sec. 3 ((2+1)D residual bottlenecks, temporal
dilation); AssembleNet++ (Ryoo et al., ECCV 2020) Sec. 3.2 (peer attention); CN116157804A,
Eqs. (1)-(3) (weighted, attention-gated sum of the input blocks) and claims 17-19 (per-block
temporal dilation). The package docstring gives the computation and the parameter tree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vitx.models.assemblenet.graph import CONV_TYPES

__all__ = ["Bottleneck", "Fusion", "PeerAttention", "SpaceTimeConv", "Stem", "pool_frames"]

Array = jax.Array


def pool_frames(x: Array) -> Array:
    """Spatial global average pooling per frame: (B, T, H, W, C) -> (B, T, C)."""
    return jnp.mean(x, axis=(2, 3))


def _avg_pool_to(x: Array, hw: tuple[int, int], what: str) -> Array:
    """(B, T, H, W, C) -> (B, T, h, w, C) by average pooling with integer factors H/h, W/w."""
    b, t, h, w, c = x.shape
    if (h, w) == tuple(hw):
        return x
    if h % hw[0] or w % hw[1]:
        raise ValueError(f"{what}: cannot average-pool {h}x{w} to {hw[0]}x{hw[1]} (not an "
                         f"integer factor); use clip sizes divisible by every block's scale")
    fh, fw = h // hw[0], w // hw[1]
    return jnp.mean(x.reshape(b, t, hw[0], fh, hw[1], fw, c), axis=(3, 5))


def _conv_init() -> Any:
    return nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class SpaceTimeConv(nn.Module):
    """Space-time conv (B, T, H, W, Cin) -> (B, T, H/stride, W/stride, features), "SAME" padding.

    "(2+1)d": spatial (1, k, k) conv (stride), BatchNorm, ReLU, temporal (k, 1, 1) conv with
    dilation d; "3d": one (k, k, k) conv, temporal dilation d; "2d": the spatial conv only.
    T is kept; a temporal conv sees (k - 1) d + 1 frames (AssembleNet Sec. 3; seed claims 17-19).

    Raises:
      ValueError: unknown conv type, or an input that is not (B, T, H, W, C).
    """

    features: int
    kernel: int = 3
    stride: int = 1
    dilation: int = 1
    conv: str = "(2+1)d"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        if x.ndim != 5:
            raise ValueError(f"SpaceTimeConv input has shape {x.shape}; pass (B, T, H, W, C)")
        if self.conv not in CONV_TYPES:
            raise ValueError(f"conv={self.conv!r} is unknown; use one of {CONV_TYPES}")
        k, s, d = self.kernel, self.stride, self.dilation
        conv = lambda kernel, strides, dil, name: nn.Conv(
            self.features, kernel, strides=strides, kernel_dilation=dil, padding="SAME",
            use_bias=False, kernel_init=_conv_init(), name=name)
        if self.conv == "3d":
            return conv((k, k, k), (1, s, s), (d, 1, 1), "conv")(x)
        x = conv((1, k, k), (1, s, s), (1, 1, 1), "spatial")(x)
        if self.conv == "2d":
            return x
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                         epsilon=self.bn_epsilon, name="bn_mid")(x)
        return conv((k, 1, 1), (1, 1, 1), (d, 1, 1), "temporal")(nn.relu(x))


class Stem(nn.Module):
    """Input block of one stream: [one-hot] -> SpaceTimeConv -> BatchNorm -> ReLU.

    x: (B, T, H, W, C) (any dtype; with `one_hot` = K an integer map (B, T, H, W, 1) or
    (B, T, H, W)) -> (B, T, H/stride, W/stride, features) float32.

    Raises:
      ValueError: a one-hot stream with more than one channel.
    """

    features: int
    kernel: int = 3
    stride: int = 1
    dilation: int = 1
    conv: str = "(2+1)d"
    one_hot: int | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        if self.one_hot:
            if x.ndim == 5:
                if x.shape[-1] != 1:
                    raise ValueError(f"stem {self.name!r}: one_hot={self.one_hot} needs a map "
                                     f"(B, T, H, W, 1), got {x.shape}; set one_hot=None for "
                                     f"multi-channel streams")
                x = x[..., 0]
            x = jax.nn.one_hot(jnp.round(x).astype(jnp.int32), self.one_hot, dtype=jnp.float32)
        x = jnp.asarray(x, jnp.float32)
        x = SpaceTimeConv(self.features, self.kernel, self.stride, self.dilation, self.conv,
                          self.bn_momentum, self.bn_epsilon, name="st")(x, train=train)
        x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                         epsilon=self.bn_epsilon, name="bn")(x)
        return nn.relu(x)


class Bottleneck(nn.Module):
    """Residual bottleneck (B, T, H, W, C) -> (B, T, H/stride, W/stride, features).

    1x1x1 conv (bottleneck), BN, ReLU; SpaceTimeConv (stride, temporal dilation), BN, ReLU;
    1x1x1 conv (features), BN with zero-initialised scale (Goyal et al. 2017); shortcut: identity,
    or 1x1x1 strided conv + BN when the stride or width changes; add; ReLU (AssembleNet Sec. 3).
    """

    features: int
    bottleneck: int
    stride: int = 1
    dilation: int = 1
    conv: str = "(2+1)d"
    kernel: int = 3
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> Array:
        bn = lambda name, **kw: nn.BatchNorm(use_running_average=not train,
                                             momentum=self.bn_momentum, epsilon=self.bn_epsilon,
                                             name=name, **kw)
        conv1 = lambda f, name, s=1: nn.Conv(f, (1, 1, 1), strides=(1, s, s), use_bias=False,
                                             kernel_init=_conv_init(), name=name)
        y = nn.relu(bn("bn1")(conv1(self.bottleneck, "conv1")(x)))
        y = SpaceTimeConv(self.bottleneck, self.kernel, self.stride, self.dilation, self.conv,
                          self.bn_momentum, self.bn_epsilon, name="st")(y, train=train)
        y = nn.relu(bn("bn2")(y))
        y = bn("bn3", scale_init=nn.initializers.zeros)(conv1(self.features, "conv3")(y))
        if self.stride != 1 or x.shape[-1] != self.features:
            x = bn("bn_proj")(conv1(self.features, "proj", self.stride)(x))
        return nn.relu(x + y)


class PeerAttention(nn.Module):
    """Channel-wise, per-frame attention A_j on connection j (AssembleNet++ Sec. 3.2; seed Eq. 3).

    mode "peer": A_j = sigmoid(Dense_{C_j}(sum_k softmax(h)_k v_k)), v_k (B, T, C_mix) the pooled
    (and projected) peer outputs, h one learned scalar `h_{name}` per peer (init 0); the softmax
    and the sum run one peer at a time in order (a weight of exactly 0 adds exactly nothing).
    mode "self": A_j = sigmoid(Dense_{C_j}(GAP_hw(x))).

    __call__(x (B, T, H, W, C_j), peers: sequence of (B, T, C_mix)) -> (A (B, T, 1, 1, C_j) in
    (0, 1), broadcast over H and W only; softmax weights (P,) or None in self mode).

    Raises:
      ValueError: `features` != C_j, a mode other than peer / self, a peer count that differs from
        `peer_names`, peers of different widths or not (B, T, C).
    """

    features: int
    peer_names: Sequence[str] = ()
    mode: str = "peer"

    @nn.compact
    def __call__(self, x: Array, peers: Sequence[Array] = ()) -> tuple[Array, Array | None]:
        b, t, c = x.shape[0], x.shape[1], x.shape[-1]
        if self.features != c:
            raise ValueError(f"PeerAttention features={self.features} differs from the input's "
                             f"{c} channels; the attention must have one factor per channel C_j")
        dense = nn.Dense(self.features, kernel_init=nn.initializers.normal(0.01), name="dense")
        if self.mode == "self":
            return jax.nn.sigmoid(dense(pool_frames(x))).reshape(b, t, 1, 1, c), None
        if self.mode != "peer":
            raise ValueError(f"PeerAttention mode={self.mode!r} is unknown; use 'peer' or 'self'")
        if len(peers) != len(self.peer_names) or not peers:
            raise ValueError(f"PeerAttention got {len(peers)} peer outputs for peer_names "
                             f"{list(self.peer_names)}; pass one (B, T, C) array per peer")
        widths = {p.shape for p in peers}
        if len(widths) != 1 or len(peers[0].shape) != 3 or peers[0].shape[:2] != (b, t):
            raise ValueError(f"PeerAttention peers have shapes {sorted(widths)}; pool and project "
                             f"them to one (B, T, C) shape with B, T = {b}, {t}")
        logits = [self.param(f"h_{k}", nn.initializers.zeros, (), jnp.float32)
                  for k in self.peer_names]
        top = logits[0]
        for h in logits[1:]:
            top = jnp.maximum(top, h)
        e = [jnp.exp(h - top) for h in logits]
        total = e[0]
        for v in e[1:]:
            total = total + v
        weights = [v / total for v in e]
        mix = weights[0] * peers[0]
        for w, v in zip(weights[1:], peers[1:], strict=True):
            mix = mix + w * v
        a = jax.nn.sigmoid(dense(mix)).reshape(b, t, 1, 1, c)
        return a, jnp.stack(weights)


class Fusion(nn.Module):
    """Input of a block: sum_j proj_j(pool_j(g(w_j) * A_j * X_j)) (seed Eqs. (1), (2)).

    Attributes:
      features: C_i, the target block's width.
      inputs: names j of the input blocks (order = summation order).
      peers: per input, the names of its attention peers (peer mode).
      attention_mode: "peer" | "self" | "none".
      fixed: {input: p} post-sigmoid connection weights held fixed (no param); other inputs get a
        learned logit `w_{j}` initialised 0 (g = 0.5).
      target_hw: fusion size (h, w); None: the smallest H x W of the inputs.

    __call__(xs: {name: (B, T, H_k, W_k, C_k)} holding every input and peer) -> (fused
    (B, T, h, w, features), info {"attention": {j: (B, T, 1, 1, C_j)}, "peer_weights": {j: (P,)},
    "connection_weights": {j: ()}}).

    Raises:
      ValueError: a missing input / peer, inputs of different B or T, or sizes that are not an
        integer multiple of the fusion size.
    """

    features: int
    inputs: Sequence[str]
    peers: Sequence[Sequence[str]] = ()
    attention_mode: str = "peer"
    fixed: Mapping[str, float] | None = None
    target_hw: tuple[int, int] | None = None

    @nn.compact
    def __call__(self, xs: Mapping[str, Array]) -> tuple[Array, dict[str, dict[str, Array]]]:
        peers = list(self.peers) if self.attention_mode == "peer" else [()] * len(self.inputs)
        if len(peers) != len(self.inputs):
            raise ValueError(f"Fusion {self.name!r}: {len(peers)} peer lists for inputs "
                             f"{list(self.inputs)}; give one per input")
        needed = list(self.inputs) + [k for ps in peers for k in ps]
        missing = sorted({k for k in needed if k not in xs})
        if missing:
            raise ValueError(f"Fusion {self.name!r} lacks the outputs of {missing}; pass every "
                             f"input and peer")
        bt = {tuple(xs[k].shape[:2]) for k in needed}
        if len(bt) != 1:
            raise ValueError(f"Fusion {self.name!r}: inputs and peers have (B, T) {sorted(bt)}; "
                             f"all streams need the same batch size and number of frames")
        hw = self.target_hw or (min(xs[j].shape[2] for j in self.inputs),
                                min(xs[j].shape[3] for j in self.inputs))
        pooled: dict[str, Array] = {}
        for k in dict.fromkeys(k for ps in peers for k in ps):
            v = pool_frames(xs[k])
            if v.shape[-1] != self.features:
                v = nn.Dense(self.features, use_bias=False, name=f"peer_proj_{k}")(v)
            pooled[k] = v
        fixed = dict(self.fixed or {})
        info: dict[str, dict[str, Array]] = {"attention": {}, "peer_weights": {},
                                              "connection_weights": {}}
        out = None
        for j, ps in zip(self.inputs, peers, strict=True):
            x = xs[j]
            if j in fixed:
                g = jnp.asarray(fixed[j], jnp.float32)
            else:
                g = jax.nn.sigmoid(self.param(f"w_{j}", nn.initializers.zeros, (), jnp.float32))
            info["connection_weights"][j] = g
            if self.attention_mode != "none":
                a, w = PeerAttention(x.shape[-1], tuple(ps), self.attention_mode,
                                     name=f"attn_{j}")(x, [pooled[k] for k in ps])
                info["attention"][j] = a
                if w is not None:
                    info["peer_weights"][j] = w
                x = a * x
            y = _avg_pool_to(g * x, hw, f"block {self.name!r} input {j!r}")
            if y.shape[-1] != self.features:
                y = nn.Conv(self.features, (1, 1, 1), use_bias=False, kernel_init=_conv_init(),
                            name=f"proj_{j}")(y)
            out = y if out is None else out + y
        return out, info


