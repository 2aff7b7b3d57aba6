"""AssembleNet++: a multi-stream video network whose blocks are fused through peer attention.

Sources:
  * Ryoo, Piergiovanni, Kangaspunta, Angelova, "AssembleNet++: Assembling Modality
    Representations via Attention Connections", ECCV 2020 (arXiv 2008.08072): Sec. 3.1
    (multi-stream block graph, weighted connections, object-segmentation input), Sec. 3.2
    (peer attention: channel-wise attention on a connection computed from *other* blocks, and
    the one-shot softmax search over attention peers, Fig. 2), Sec. 4 (per-frame attention).
  * Seed 002, CN116157804A "Neural network model using peer-to-peer attention" (extraction:
    ../shared/reference/peer_attention.md): the target input is sum_j g(w_ji) * (A_j (.) X_j)
    (Eqs. (1), (2), reconstructed), A_j = sigmoid(FC(GAP(X_com))) (Eq. (3)) with X_com the
    softmax-weighted sum of the peers' outputs; at least one peer other than j (claim 1); inputs
    and peers only from earlier levels (claim 10); fully connected start and pruning by threshold
    or bottom-k (L134, L140); RGB / flow / segmentation stems (claims 13-16); per-block temporal
    dilation (claims 17-19).
  * Ryoo et al., "AssembleNet: Searching for Multi-Stream Neural Connectivity in Video
    Architectures", ICLR 2020, Sec. 3 (levels, dilated (2+1)D residual bottlenecks, sigmoid
    connection weights, T kept constant). TF Model Garden's `official/projects/assemblenet/`
    (Keras) is the only public implementation; names and defaults below follow it unless noted.

Graph schema (`blocks`, a list of dicts; `validate_graph` checks it, `fully_connected_graph` /
`default_graph` make one)::

    stem (level 1, one or more per stream):
      {"name", "level": 1, "stream": batch key, "channels", "one_hot": K (optional: the stream is
       an integer map (..., 1), one-hot encoded to K channels inside the model), "stride" (1),
       "dilation" (1), "conv" ("(2+1)d"), "kernel" (3)}
    block (level >= 2):
      {"name", "level", "inputs": [names], "peers": [names] or {input: [names]} (per connection),
       "channels", "stride" (1, spatial), "dilation" (1, temporal), "conv" ("(2+1)d" | "3d" |
       "2d"), "num_units" (1), "kernel" (3), "bottleneck" (channels // 4, min 1),
       "weights": {input: p} (optional fixed post-sigmoid connection weights g in [0, 1]),
       "fuse_scale": int (optional; see "Fusion")}

Names are unique, non-empty, without '/', and neither "head" nor "head_proj_*". Level-1 blocks
are stems; every other block takes inputs and attention peers from earlier levels only (level
skipping allowed). The blocks of the highest level feed the head. `streams_off` (a Model
keyword) removes the stems of those streams and every connection / peer from them.

Computation (B batch, T frames, H x W pixels, C channels; T is never strided):

  * stem: [one-hot] -> SpaceTimeConv(stride) -> BatchNorm -> ReLU.
  * block i: fused input -> `num_units` residual bottlenecks (1x1x1 conv, BN, ReLU;
    SpaceTimeConv (stride on the first unit, temporal dilation d), BN, ReLU; 1x1x1 conv, BN with
    zero-initialised scale; shortcut (1x1x1 strided conv + BN when the stride is > 1); add; ReLU).
  * SpaceTimeConv "(2+1)d" (default; Tran et al., CVPR 2018): spatial (1, k, k) conv, BN, ReLU,
    temporal (k, 1, 1) conv with dilation d; "3d": one (k, k, k) conv, temporal dilation d; "2d":
    the spatial conv only. "SAME" padding, so T is kept; a temporal conv's receptive field is
    (k - 1) d + 1 frames.
  * Fusion (into block i with C_i channels):
    X_in_i = sum_j proj_j(pool_j(g(w_ji) * A_j * X_j)) with
      g(w) = sigmoid(w), w a learned scalar per connection initialised 0 (g = 0.5), or g = p
        fixed from the graph ("weights") / `connection_weights`;
      A_j (B, T, 1, 1, C_j), the channel-wise per-frame attention (below), broadcast over H, W;
      pool_j: spatial average pooling by an integer factor down to the fusion size, which is the
        smallest H x W of the inputs (= H0 / fuse_scale for clips of H0 x W0; `fuse_scale`
        pins it, e.g. after pruning the smallest input away);
      proj_j: 1x1x1 conv without bias to C_i when C_j != C_i (the reference projects groups of
        inputs to their largest width and max-pools; vitx projects each input to the *target's*
        width and average-pools, which keeps every parameter shape independent of the other
        connections, so pruning never changes a surviving parameter).
    Sums over connections / peers run in graph order, one add at a time, so a connection or peer
    whose weight is exactly 0 contributes exactly nothing (x + 0 == x).
  * Peer attention (attention_mode="peer"): for connection j -> i with peers K_j (at least one
    k != j): v_k = GAP_hw(X_k) (B, T, C_k), projected by a bias-free Dense to C_i when
    C_k != C_i (one projection per peer and target block, shared by its connections);
    X_com = sum_k softmax(h_j)_k v_k with learned logits h_j (one scalar per peer, init 0);
    A_j = sigmoid(Dense_{C_j}(X_com)) (kernel N(0, 0.01), bias 0). The reference mixes the
    peers at the largest peer width; vitx mixes at C_i (same reason as above).
    attention_mode="self": A_j = sigmoid(Dense_{C_j}(GAP_hw(X_j))) (SE-style, no bottleneck);
    "none": A_j = 1.
  * Head: per final-level block GAP over H, W and mean over T -> (B, C_f); a bias-free Dense to
    D = max C_f where C_f != D; mean over the final blocks -> pre_logits (B, D);
    Dense(num_classes), zero-initialised.

Parameter tree (names are block names; `p` a peer, `j` an input)::

    {stem}/st/{spatial,temporal,conv}/kernel, {stem}/st/bn_mid/*, {stem}/bn/{scale, bias}
    {block}/fusion/w_{j} ()                         learned connection logit (not when fixed)
    {block}/fusion/proj_{j}/kernel (1, 1, 1, C_j, C_i)           C_j != C_i
    {block}/fusion/peer_proj_{p}/kernel (C_p, C_i)               peer mode, C_p != C_i
    {block}/fusion/attn_{j}/h_{p} ()                             peer mode
    {block}/fusion/attn_{j}/dense/{kernel (C_i | C_j, C_j), bias (C_j,)}   peer | self mode
    {block}/unit_{u}/{conv1, st, conv3, proj}/..., {bn1, bn2, bn3, bn_proj}/...
    head_proj_{f}/kernel (C_f, D), head/{kernel (D, num_classes), bias}

BatchNorm state (`nn.BatchNorm(use_running_average=not train, momentum=0.9)`, epsilon 1e-5)
lives in the `batch_stats` collection under the same paths (mean, var): initialise with
`model.init(rng, inputs)` -> {"params", "batch_stats"}, train with
`model.apply(variables, inputs, train=True, mutable=["batch_stats"])` -> ((logits, aux),
{"batch_stats": new}), evaluate with `model.apply(variables, inputs)`. Under jit on a sharded
global batch, the statistics are those of the global batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.core import FrozenDict

from vitx.utils import checkpoints, tree

__all__ = [
    "ATTENTION_MODES", "CONV_TYPES", "Bottleneck", "Fusion", "Model", "PeerAttention",
    "SpaceTimeConv", "Stem", "apply_connection_weights", "apply_streams_off", "check_input",
    "connection_scores", "default_graph", "edge_counts", "fully_connected_graph", "graph_scales",
    "load",
    "peer_scores", "pool_frames", "prune_graph", "validate_graph",
]

Array = jax.Array
Params = dict[str, Any]
Block = dict[str, Any]
logger = logging.getLogger(__name__)

CONV_TYPES = ("(2+1)d", "3d", "2d")
ATTENTION_MODES = ("peer", "self", "none")
_STEM_KEYS = ("name", "level", "stream", "one_hot", "channels", "stride", "dilation", "conv",
              "kernel", "inputs", "peers")
_BLOCK_KEYS = ("name", "level", "inputs", "peers", "channels", "stride", "dilation", "conv",
               "kernel", "num_units", "bottleneck", "weights", "fuse_scale")
_RESERVED = "head"
#: `Model(variant=...)`: keyword arguments of `default_graph` (stem and level 2-4 widths).
VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(stem_channels=8, channels=(8, 16, 32)),
    "small": dict(stem_channels=8, channels=(16, 32, 64)),
}


# ------------------------------------------------------------------------------------------------
# Graph: validation, generators, streams_off, fixed weights.


def _plain(x: Any) -> Any:
    """ConfigDict / FrozenDict / Mapping / list / tuple -> plain dicts and lists (leaves kept)."""
    if hasattr(x, "to_dict") and callable(x.to_dict):
        x = x.to_dict()
    if isinstance(x, Mapping) or (hasattr(x, "items") and hasattr(x, "keys")):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    return x


def _freeze(x: Any) -> Any:
    """dicts -> FrozenDict, lists -> tuples (recursively): hashable module attributes."""
    if isinstance(x, Mapping):
        return FrozenDict({k: _freeze(v) for k, v in x.items()})
    if isinstance(x, list | tuple):
        return tuple(_freeze(v) for v in x)
    return x


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _edge(src: str, dst: str) -> str:
    return f"{src}->{dst}"


def _names(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError(f"{what}={value!r} is not a list of block names; pass e.g. ['a', 'b']")
    for v in value:
        if not isinstance(v, str):
            raise ValueError(f"{what} holds {v!r}, not a block name; pass a list of names")
    if len(set(value)) != len(value):
        dup = sorted({v for v in value if list(value).count(v) > 1})
        raise ValueError(f"{what} names {dup} more than once; list each block once")
    return list(value)


def _positive_int(b: Mapping[str, Any], key: str, default: int | None) -> int:
    v = b.get(key, default)
    if v is None:
        v = default
    if not _is_int(v) or v < 1:
        raise ValueError(f"block {b.get('name')!r}: {key}={v!r} is not a positive int; set an "
                         f"int >= 1")
    return int(v)


def validate_graph(blocks: Sequence[Mapping[str, Any]], *,
                   require_peers: bool = True) -> list[Block]:
    """Check an AssembleNet++ graph and return it normalised (defaults filled, sorted by level).

    Args:
      blocks: the graph (module docstring: schema); ConfigDicts and tuples are accepted.
      require_peers: check that every connection j -> i has a peer other than j (peer attention,
        seed claim 1); Model passes `attention_mode == "peer"`.

    Returns:
      A new list of plain dicts, stable-sorted by level. Stems: name, level, stream, one_hot
      (None or K), channels, stride, dilation, conv, kernel. Blocks: name, level, inputs (list),
      peers ({input: [names]}), channels, stride, dilation, conv, kernel, num_units, bottleneck,
      weights ({input: p}), fuse_scale (None or int).

    Raises:
      ValueError (one line, naming the block and the fix): not a non-empty list of dicts, a
        missing or unknown key, a bad name (duplicate, empty, with '/', reserved), a bad level /
        size / conv type, a stem with inputs or a block with a stream, a block without inputs,
        an unknown input or peer name, an input or peer from the same or a later level, a peer
        set with no block other than the input block (require_peers), fixed weights of a
        non-input or outside [0, 1], a fuse_scale that is not a multiple of an input's spatial
        scale, a graph without blocks beyond the stems.
    """
    blocks = _plain(blocks)
    if not isinstance(blocks, list) or not blocks:
        raise ValueError(f"model.blocks={blocks!r} is not a non-empty list of block dicts; pass a "
                         f"graph (e.g. assemblenet.default_graph())")
    levels: dict[str, int] = {}
    for i, b in enumerate(blocks):
        if not isinstance(b, dict):
            raise ValueError(f"model.blocks[{i}]={b!r} is not a dict; pass {{'name': ..., "
                             f"'level': ..., ...}}")
        name = b.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"model.blocks[{i}] has name={name!r}; give every block a non-empty "
                             f"string name without '/'")
        if name == _RESERVED or name.startswith(_RESERVED + "_proj_"):
            raise ValueError(f"block name {name!r} is reserved for the head; rename the block")
        if name in levels:
            raise ValueError(f"block name {name!r} occurs twice in model.blocks; give every block "
                             f"a unique name")
        level = b.get("level")
        if not _is_int(level) or level < 1:
            raise ValueError(f"block {name!r}: level={level!r} is not an int >= 1; set its level "
                             f"(1 for stems)")
        levels[name] = int(level)
    if max(levels.values()) < 2:
        raise ValueError("model.blocks has only stems (level 1); add blocks at level 2 or above")

    out: list[Block] = []
    for b in blocks:
        name, level = b["name"], levels[b["name"]]
        if level == 1:
            unknown = sorted(set(b) - set(_STEM_KEYS))
            if unknown:
                raise ValueError(f"stem {name!r} has unknown keys {unknown}; a stem takes "
                                 f"{list(_STEM_KEYS[:-2])}")
            if b.get("inputs") or b.get("peers"):
                raise ValueError(f"stem {name!r} (level 1) has inputs or peers; stems read a "
                                 f"stream only, give them level >= 2 to connect them")
            stream = b.get("stream")
            if not isinstance(stream, str) or not stream:
                raise ValueError(f"stem {name!r} (level 1) has stream={stream!r}; set 'stream' to "
                                 f"a batch key (e.g. 'video', 'flow', 'mask')")
            one_hot = b.get("one_hot")
            if one_hot is not None and (not _is_int(one_hot) or one_hot < 2):
                raise ValueError(f"stem {name!r}: one_hot={one_hot!r} is not an int >= 2; set the "
                                 f"number of classes of the segmentation map or None")
            conv = b.get("conv", "(2+1)d")
            if conv not in CONV_TYPES:
                raise ValueError(f"stem {name!r}: conv={conv!r} is unknown; use one of "
                                 f"{CONV_TYPES}")
            out.append(dict(name=name, level=1, stream=stream,
                            one_hot=None if one_hot is None else int(one_hot),
                            channels=_positive_int(b, "channels", None),
                            stride=_positive_int(b, "stride", 1),
                            dilation=_positive_int(b, "dilation", 1), conv=conv,
                            kernel=_positive_int(b, "kernel", 3)))
            continue
        unknown = sorted(set(b) - set(_BLOCK_KEYS))
        if unknown:
            hint = "; only level-1 stems read a stream" if "stream" in unknown else ""
            raise ValueError(f"block {name!r} (level {level}) has unknown keys {unknown}{hint}; "
                             f"a block takes {list(_BLOCK_KEYS)}")
        inputs = _names(b.get("inputs"), f"block {name!r} inputs")
        if not inputs:
            raise ValueError(f"block {name!r} (level {level}) has no inputs; list at least one "
                             f"block of an earlier level in 'inputs'")
        raw_peers = b.get("peers")
        if isinstance(raw_peers, dict):
            extra = sorted(set(raw_peers) - set(inputs))
            if extra:
                raise ValueError(f"block {name!r}: peers are given for {extra}, which are not its "
                                 f"inputs {inputs}; key the peers by input names")
            peers = {j: _names(raw_peers.get(j), f"block {name!r} peers[{j!r}]") for j in inputs}
        else:
            shared = _names(raw_peers, f"block {name!r} peers")
            peers = {j: list(shared) for j in inputs}
        for role, names in [("input", inputs)] + [("peer", p) for p in peers.values()]:
            for j in names:
                if j not in levels:
                    raise ValueError(f"block {name!r}: {role} {j!r} is not a block of the graph; "
                                     f"use one of {sorted(levels)}")
                if levels[j] >= level:
                    raise ValueError(f"block {name!r} (level {level}): {role} {j!r} is at level "
                                     f"{levels[j]}, not an earlier level; connect only blocks of "
                                     f"levels < {level} or raise {name!r}'s level")
        if require_peers:
            for j in inputs:
                if not set(peers[j]) - {j}:
                    raise ValueError(
                        f"block {name!r}: the peers {peers[j]} of input {j!r} hold no block other "
                        f"than {j!r}; add a peer block != {j!r} of a level < {level} (peer "
                        f"attention, seed claim 1) or use attention_mode='self'")
        weights = b.get("weights") or {}
        if not isinstance(weights, dict):
            raise ValueError(f"block {name!r}: weights={weights!r} is not a dict; pass {{input: "
                             f"p}} with p in [0, 1]")
        for j, p in weights.items():
            if j not in inputs:
                raise ValueError(f"block {name!r}: weights names {j!r}, not one of its inputs "
                                 f"{inputs}; key fixed weights by input names")
            if isinstance(p, bool) or not isinstance(p, int | float | np.number) or not (
                    0.0 <= float(p) <= 1.0):
                raise ValueError(f"block {name!r}: weights[{j!r}]={p!r} is not in [0, 1]; give "
                                 f"the post-sigmoid connection weight g")
        conv = b.get("conv", "(2+1)d")
        if conv not in CONV_TYPES:
            raise ValueError(f"block {name!r}: conv={conv!r} is unknown; use one of {CONV_TYPES}")
        channels = _positive_int(b, "channels", None)
        fuse_scale = b.get("fuse_scale")
        out.append(dict(name=name, level=level, inputs=inputs, peers=peers, channels=channels,
                        stride=_positive_int(b, "stride", 1),
                        dilation=_positive_int(b, "dilation", 1), conv=conv,
                        kernel=_positive_int(b, "kernel", 3),
                        num_units=_positive_int(b, "num_units", 1),
                        bottleneck=_positive_int(b, "bottleneck", max(channels // 4, 1)),
                        weights={j: float(p) for j, p in weights.items()},
                        fuse_scale=None if fuse_scale is None else _positive_int(
                            b, "fuse_scale", None)))
    out.sort(key=lambda b: b["level"])
    graph_scales(out)  # checks the fusion scales
    return out


def graph_scales(graph: Sequence[Block]) -> dict[str, tuple[int, int]]:
    """{name: (fusion scale, output scale)} of a normalised graph (spatial downsampling factors).

    A stem's output scale is its stride (its fusion scale is 1); a block fuses at `fuse_scale`
    (default: the largest output scale of its inputs, i.e. the smallest H x W) and outputs at
    fuse_scale * stride. Clips of H0 x W0 need H0 and W0 divisible by every output scale.

    Raises:
      ValueError: a block's fusion scale is not a multiple of an input's output scale (the
        average pooling factor would not be an integer), naming the block and the fix.
    """
    scales: dict[str, tuple[int, int]] = {}
    for b in graph:
        if b["level"] == 1:
            scales[b["name"]] = (1, b["stride"])
            continue
        ins = {j: scales[j][1] for j in b["inputs"]}
        fuse = b.get("fuse_scale") or max(ins.values())
        bad = {j: s for j, s in ins.items() if fuse % s}
        if bad:
            raise ValueError(f"block {b['name']!r} fuses at spatial scale {fuse}, which is not a "
                             f"multiple of the scales {bad} of its inputs; set 'fuse_scale' to a "
                             f"common multiple ({math.lcm(fuse, *bad.values())}) or change the "
                             f"strides")
        scales[b["name"]] = (fuse, fuse * b["stride"])
    return scales


def apply_streams_off(blocks: Sequence[Mapping[str, Any]],
                      streams_off: Sequence[str] = ()) -> list[Block]:
    """The graph without the stems of `streams_off` and every connection / peer from them.

    Works on the raw graph (before `validate_graph`); fixed weights of removed connections go too.

    Raises:
      ValueError: `streams_off` names a stream no stem reads, switches every stream off, or leaves
        a block without inputs (naming the block and the fix).
    """
    blocks = _plain(blocks)
    off = [streams_off] if isinstance(streams_off, str) else list(_plain(streams_off) or [])
    if not off or not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        return blocks  # nothing to do, or a malformed graph that validate_graph reports
    streams = {b.get("stream") for b in blocks if isinstance(b, dict) and b.get("level") == 1}
    unknown = sorted(set(off) - streams)
    if unknown:
        raise ValueError(f"model.streams_off names {unknown}, which no stem reads; use stream "
                         f"names of {sorted(s for s in streams if isinstance(s, str))}")
    if streams <= set(off):
        raise ValueError(f"model.streams_off={off} switches every stream off; keep at least one")
    gone = {b["name"] for b in blocks if b.get("level") == 1 and b.get("stream") in off}
    out = []
    for b in blocks:
        if b.get("name") in gone:
            continue
        b = dict(b)
        if b.get("level") != 1:
            b["inputs"] = [j for j in b.get("inputs") or [] if j not in gone]
            if not b["inputs"]:
                raise ValueError(f"block {b.get('name')!r} has no inputs left after "
                                 f"model.streams_off={off}; connect it to a block of a stream "
                                 f"that stays on or keep a stream on")
            peers = b.get("peers")
            if isinstance(peers, dict):
                b["peers"] = {j: [p for p in ps if p not in gone] for j, ps in peers.items()
                              if j not in gone}
            elif peers:
                b["peers"] = [p for p in peers if p not in gone]
            if b.get("weights"):
                b["weights"] = {j: p for j, p in b["weights"].items() if j not in gone}
        out.append(b)
    return out


def apply_connection_weights(blocks: Sequence[Mapping[str, Any]],
                             connection_weights: str | Mapping[str, float] | None) -> list[Block]:
    """Fold `connection_weights` ("learned" / None, or {"src->dst": p}) into the blocks' weights.

    Raises:
      ValueError: not "learned" or a dict, or an edge key that is malformed or not a connection
        of the graph (naming the key and the fix).
    """
    if connection_weights is None or connection_weights == "learned":
        return _plain(blocks)
    cw = _plain(connection_weights)
    if not isinstance(cw, dict):
        raise ValueError(f"model.connection_weights={connection_weights!r} is neither 'learned' "
                         f"nor a dict {{'src->dst': p}}; pass one of them")
    blocks = [dict(b) for b in _plain(blocks)]
    by_name = {b.get("name"): b for b in blocks}
    for key, p in cw.items():
        src, sep, dst = str(key).partition("->")
        b = by_name.get(dst)
        if not sep or b is None or src not in (b.get("inputs") or []):
            raise ValueError(f"model.connection_weights[{key!r}] is not a connection of the "
                             f"graph; key fixed weights as 'src->dst' with src an input of dst")
        b["weights"] = {**(b.get("weights") or {}), src: p}
    return blocks


def edge_counts(blocks: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """{"connections": number of input connections, "attention": number of (connection, peer)
    pairs} of a graph (validated first, peers not required)."""
    graph = validate_graph(blocks, require_peers=False)
    conn = sum(len(b["inputs"]) for b in graph if b["level"] > 1)
    att = sum(len(ps) for b in graph if b["level"] > 1 for ps in b["peers"].values())
    return {"connections": conn, "attention": att}


def fully_connected_graph(levels: Sequence[Sequence[Mapping[str, Any]]], *,
                          peers: bool = True) -> list[Block]:
    """The "fully connected" graph: every earlier block is an input and a peer of every block.

    Args:
      levels: levels[0] the stems (dicts with name, stream, channels, ...), levels[l] the blocks
        of level l + 1 (dicts with name, channels, stride, dilation, ... but no level, inputs or
        peers: they are filled in).
      peers: also make every earlier block a peer of every connection (else no peers; for
        attention_mode "self" / "none").

    Edge counts (seed L134, L140): with n_l blocks in level l and N_l = n_1 + ... + n_{l-1}
    blocks before it, there are sum_{l>=2} n_l N_l connections and, with peers,
    sum_{l>=2} n_l N_l^2 (connection, peer) attention pairs; e.g. levels of sizes (6, 2, 2, 1)
    give 2*6 + 2*8 + 1*10 = 38 connections and 2*36 + 2*64 + 100 = 300 attention pairs.

    Returns:
      The graph, validated (`validate_graph(..., require_peers=peers)`).

    Raises:
      ValueError: a block dict already holding level / inputs / peers, or from `validate_graph`
        (e.g. a single stem, whose level-2 blocks have no peer other than their input).
    """
    graph: list[Block] = []
    earlier: list[str] = []
    for li, level in enumerate(_plain(list(levels))):
        names = []
        for b in level:
            given = sorted({"level", "inputs", "peers"} & set(b))
            if given:
                raise ValueError(f"fully_connected_graph: block {b.get('name')!r} sets {given}; "
                                 f"leave them out, the generator fills them in")
            b = dict(b, level=li + 1)
            if li > 0:
                b.update(inputs=list(earlier), peers=list(earlier) if peers else [])
            graph.append(b)
            names.append(b.get("name"))
        earlier += names
    validate_graph(graph, require_peers=peers)
    return graph


def default_graph(streams: Sequence[str] = ("video", "flow", "mask"),
                  channels: Sequence[int] = (16, 32, 64), *, stem_channels: int = 8,
                  stem_dilations: Sequence[int] = (1, 2), stem_stride: int = 2,
                  blocks_per_level: Sequence[int] = (2, 2, 1),
                  dilations: Sequence[Sequence[int]] = ((1, 2), (1, 2), (1,)),
                  strides: Sequence[int] = (1, 2, 2), conv: str = "(2+1)d", num_units: int = 1,
                  one_hot: Mapping[str, int] | None = None, peers: bool = True) -> list[Block]:
    """A small fully connected graph for the moving_digits clips (T=8, 32x32).

    Stems: one per (stream, dilation in `stem_dilations`), named "{stream}_d{d}", `stem_channels`
    wide with stride `stem_stride` (two stems per stream, so that a single stream still gives every
    connection a peer other than its input, as AssembleNet++'s two RGB stems). Levels 2, 3, 4:
    `blocks_per_level` blocks named "L{level}_{i}" with `channels[l]` channels, spatial stride
    `strides[l]`, temporal dilation `dilations[l][i % len]`. Segmentation streams are one-hot
    encoded (`one_hot`, default {"mask": 2}: background / ink). All earlier blocks are inputs and
    peers (`fully_connected_graph`). Default sizes: 6 stems, blocks 16x16x16 / 8x8x32 / 4x4x64
    (H x W x C) over 8 frames, 38 connections and 300 attention pairs, about 66k parameters.

    Raises:
      ValueError: mismatched lengths of channels / blocks_per_level / dilations / strides, or
        from `fully_connected_graph`.
    """
    streams = [streams] if isinstance(streams, str) else list(streams)
    one_hot = {"mask": 2} if one_hot is None else dict(one_hot)
    n = len(channels)
    if not (len(blocks_per_level) == len(dilations) == len(strides) == n) or not streams:
        raise ValueError(f"default_graph: channels {tuple(channels)}, blocks_per_level "
                         f"{tuple(blocks_per_level)}, dilations {tuple(dilations)} and strides "
                         f"{tuple(strides)} need one entry per level, and streams one or more; "
                         f"make their lengths equal")
    stems = [dict(name=f"{s}_d{d}", stream=s, channels=stem_channels, stride=stem_stride,
                  dilation=d, conv=conv, **({"one_hot": one_hot[s]} if s in one_hot else {}))
             for s in streams for d in stem_dilations]
    levels: list[list[dict[str, Any]]] = [stems]
    for li in range(n):
        levels.append([dict(name=f"L{li + 2}_{i}", channels=channels[li], stride=strides[li],
                            dilation=dilations[li][i % len(dilations[li])], conv=conv,
                            num_units=num_units) for i in range(blocks_per_level[li])])
    return fully_connected_graph(levels, peers=peers)


def _graph_from_cfg(cfg: Mapping[str, Any]) -> tuple[list[Block], str]:
    """(normalised graph, attention_mode) of a model config (the keywords of `Model`)."""
    cfg = _plain(cfg) or {}
    mode = cfg.get("attention_mode", "peer")
    if mode not in ATTENTION_MODES:
        raise ValueError(f"model.attention_mode={mode!r} is unknown; use one of {ATTENTION_MODES}")
    blocks, variant, graph_kw = cfg.get("blocks"), cfg.get("variant"), cfg.get("graph")
    if blocks is not None and (variant is not None or graph_kw is not None):
        raise ValueError("model.blocks is given together with model.variant / model.graph; give "
                         "the graph one way only")
    if blocks is None:
        if variant is not None and variant not in VARIANTS:
            raise ValueError(f"model.variant={variant!r} is unknown; use one of "
                             f"{sorted(VARIANTS)} or pass model.blocks")
        kw = {**VARIANTS.get(variant or "small", {}), **(graph_kw or {})}
        try:
            blocks = default_graph(**kw)
        except TypeError as e:
            raise ValueError(f"model.graph={graph_kw!r} does not fit default_graph ({e}); pass "
                             f"its keyword arguments only") from None
    blocks = apply_streams_off(blocks, cfg.get("streams_off") or ())
    blocks = apply_connection_weights(blocks, cfg.get("connection_weights", "learned"))
    return validate_graph(blocks, require_peers=mode == "peer"), mode


# ------------------------------------------------------------------------------------------------
# Layers.


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


class _Block(nn.Module):
    """Fusion, then `num_units` bottlenecks (the first with the stride)."""

    block: Mapping[str, Any]
    attention_mode: str = "peer"
    target_hw: tuple[int, int] | None = None
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5

    @nn.compact
    def __call__(self, xs: Mapping[str, Array], *, train: bool = False
                 ) -> tuple[Array, dict[str, dict[str, Array]]]:
        b = self.block
        x, info = Fusion(b["channels"], tuple(b["inputs"]),
                         tuple(tuple(b["peers"][j]) for j in b["inputs"]), self.attention_mode,
                         _freeze(b["weights"]), self.target_hw, name="fusion")(xs)
        for u in range(b["num_units"]):
            x = Bottleneck(b["channels"], b["bottleneck"], b["stride"] if u == 0 else 1,
                           b["dilation"], b["conv"], b["kernel"], self.bn_momentum,
                           self.bn_epsilon, name=f"unit_{u}")(x, train=train)
        return x, info


class _AssembleNet(nn.Module):
    """AssembleNet++ (module docstring). `graph` is `validate_graph`'s output.

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
    graph: Sequence[Mapping[str, Any]]
    attention_mode: str = "peer"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    head_zeroinit: bool = True

    @nn.compact
    def __call__(self, inputs: Mapping[str, Array] | Array, *, train: bool = False,
                 **kw: Any) -> tuple[Array, dict[str, Any]]:
        graph = list(self.graph)
        streams = list(dict.fromkeys(b["stream"] for b in graph if b["level"] == 1))
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
        scales = graph_scales(graph)
        bad = sorted({s for _, s in scales.values() if h0 % s or w0 % s})
        if bad:
            raise ValueError(f"assemblenet clips of {h0}x{w0} are not divisible by the spatial "
                             f"scales {bad} of the graph; use sizes divisible by "
                             f"{math.lcm(*bad)} or change the strides")
        outs: dict[str, Array] = {}
        aux: dict[str, Any] = {"blocks": outs, "attention": {}, "peer_weights": {},
                               "connection_weights": {}}
        for b in graph:
            name = b["name"]
            if b["level"] == 1:
                outs[name] = Stem(b["channels"], b["kernel"], b["stride"], b["dilation"],
                                  b["conv"], b["one_hot"], self.bn_momentum, self.bn_epsilon,
                                  name=name)(inputs[b["stream"]], train=train)
                continue
            fuse = scales[name][0]
            needed = list(b["inputs"]) + [k for ps in b["peers"].values() for k in ps]
            outs[name], info = _Block(b, self.attention_mode, (h0 // fuse, w0 // fuse),
                                      self.bn_momentum, self.bn_epsilon, name=name)(
                {k: outs[k] for k in needed}, train=train)
            for key, value in info.items():
                aux[key][name] = value
        top = max(b["level"] for b in graph)
        finals = [b for b in graph if b["level"] == top]
        width = max(b["channels"] for b in finals)
        feats = None
        for b in finals:
            f = jnp.mean(outs[b["name"]], axis=(1, 2, 3))
            if b["channels"] != width:
                f = nn.Dense(width, use_bias=False, name=f"head_proj_{b['name']}")(f)
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

    Keywords (config.model):
      blocks: the graph (module docstring); default `default_graph(**VARIANTS[variant or
        "small"], **graph)`.
      variant: "tiny" | "small" (default graph widths; not with `blocks`).
      graph: keyword arguments of `default_graph` (not with `blocks`).
      streams_off: streams whose stems (and connections / peers from them) are removed.
      attention_mode: "peer" (default) | "self" | "none".
      connection_weights: "learned" (default) or {"src->dst": p}, fixed post-sigmoid weights.
      bn_momentum (0.9), bn_epsilon (1e-5), head_zeroinit (True).

    The module's `__call__(inputs {stream: (B, T, H, W, C)}, *, train=False) -> (logits, aux)`;
    see `_AssembleNet` for aux and the module docstring for the `batch_stats` collection.

    Raises:
      ValueError: a bad graph or keyword (one line naming the key / block and the fix).
    """
    allowed = {"blocks", "graph", "streams_off", "attention_mode", "connection_weights",
               "bn_momentum", "bn_epsilon", "head_zeroinit"}
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise ValueError(f"model keys {unknown} are unknown to assemblenet; use {sorted(allowed)}")
    graph, mode = _graph_from_cfg(dict(kw, variant=variant))
    return _AssembleNet(num_classes=num_classes, graph=_freeze(graph), attention_mode=mode,
                        bn_momentum=kw.get("bn_momentum", 0.9),
                        bn_epsilon=kw.get("bn_epsilon", 1e-5),
                        head_zeroinit=kw.get("head_zeroinit", True))


def check_input(model_cfg: Mapping[str, Any], shape: Any) -> None:
    """Validate the graph of `model_cfg` (config.model) and, if given, the clip shapes.

    `shape`: the per-example shape (T, H, W, C) of the task input, or {stream: shape} (or
    {stream: (shape, dtype)}, as `element_spec` gives), or None (graph only).

    Raises:
      ValueError: a bad graph (`validate_graph`, `apply_streams_off`), a stream missing from a
        shape dict, a shape that is not (T, H, W, C), streams of different T, H, W, a one-hot
        stream with C != 1, or H, W not divisible by the graph's spatial scales.
    """
    graph, _ = _graph_from_cfg(model_cfg or {})
    if shape is None:
        return
    scales = sorted({s for _, s in graph_scales(graph).values()})
    stems = [b for b in graph if b["level"] == 1]
    if isinstance(shape, Mapping):
        shapes = {}
        for b in stems:
            s = b["stream"]
            if s not in shape:
                raise ValueError(f"stem {b['name']!r} reads stream {s!r}, which the batches lack "
                                 f"(keys: {sorted(shape)}); add it to input.pp or to "
                                 f"model.streams_off")
            v = shape[s]
            if isinstance(v, tuple | list) and v and isinstance(v[0], tuple | list):
                v = v[0]
            v = tuple(int(d) for d in v)
            if len(v) != 4 or (b["one_hot"] and v[-1] != 1):
                want = "(T, H, W, 1)" if b["one_hot"] else "(T, H, W, C)"
                raise ValueError(f"stream {s!r} (stem {b['name']!r}) has per-example shape {v}; "
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


# ------------------------------------------------------------------------------------------------
# Connection / attention weights: inspection and pruning.


def _split_variables(params: Mapping[str, Any]) -> tuple[Params, dict[str, Params]]:
    """(params tree, other collections) of a params tree or a variables dict {"params", ...}."""
    params = _to_dicts(params)
    if "params" in params and set(params) <= {"params", "batch_stats"}:
        return params["params"], {k: v for k, v in params.items() if k != "params"}
    return params, {}


def _to_dicts(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _to_dicts(v) for k, v in x.items()}
    return x


def _fusion(params: Params, block: str) -> Params:
    try:
        return params[block]["fusion"]
    except KeyError:
        raise ValueError(f"params have no {block}/fusion; pass the params of this graph (after "
                         f"streams_off)") from None


def connection_scores(params: Mapping[str, Any], blocks: Sequence[Mapping[str, Any]]
                      ) -> dict[str, float]:
    """{"src->dst": g} of every connection: sigmoid of the learned logit, or the fixed weight.

    Passing the result as `connection_weights` (or a block's `weights`) fixes the same values.

    Raises:
      ValueError: a learned connection whose logit `dst/fusion/w_src` is not in `params`.
    """
    graph = validate_graph(blocks, require_peers=False)
    params, _ = _split_variables(params)
    out = {}
    for b in graph:
        if b["level"] == 1:
            continue
        fusion = _fusion(params, b["name"])
        for j in b["inputs"]:
            if j in b["weights"]:
                out[_edge(j, b["name"])] = float(b["weights"][j])
            elif f"w_{j}" in fusion:
                out[_edge(j, b["name"])] = float(jax.nn.sigmoid(jnp.asarray(fusion[f"w_{j}"])))
            else:
                raise ValueError(f"params lack {b['name']}/fusion/w_{j} of the learned connection "
                                 f"{_edge(j, b['name'])}; pass the params of this graph or fix "
                                 f"the weight in the block's 'weights'")
    return out


def peer_scores(params: Mapping[str, Any], blocks: Sequence[Mapping[str, Any]]
                ) -> dict[str, dict[str, float]]:
    """{"src->dst": {peer: softmax weight}} of every connection (peer-mode params).

    Raises:
      ValueError: a peer logit `dst/fusion/attn_src/h_peer` missing from `params`.
    """
    graph = validate_graph(blocks, require_peers=False)
    params, _ = _split_variables(params)
    out = {}
    for b in graph:
        if b["level"] == 1:
            continue
        fusion = _fusion(params, b["name"])
        for j in b["inputs"]:
            ps = b["peers"][j]
            attn = fusion.get(f"attn_{j}", {})
            missing = [k for k in ps if f"h_{k}" not in attn]
            if missing:
                raise ValueError(f"params lack the peer logits {b['name']}/fusion/attn_{j}/h_* of "
                                 f"peers {missing}; pass peer-mode params of this graph")
            if not ps:
                continue
            h = np.array([float(np.asarray(attn[f"h_{k}"])) for k in ps], np.float64)
            e = np.exp(h - h.max())
            out[_edge(j, b["name"])] = dict(zip(ps, (e / e.sum()).tolist(), strict=True))
    return out


def _select(scores: list[tuple[float, Any]], threshold: float | None, bottom_k: int | None,
            can_remove: Any) -> list[Any]:
    """Keys to remove: those below `threshold`, then the `bottom_k` lowest of the rest (stable
    ascending order), skipping each removal `can_remove(key, removed)` refuses."""
    removed: list[Any] = []
    order = sorted(range(len(scores)), key=lambda i: scores[i][0])
    if threshold is not None:
        for i in order:
            if scores[i][0] < threshold and can_remove(scores[i][1], removed):
                removed.append(scores[i][1])
    if bottom_k is not None:
        n = 0
        for i in order:
            if n >= bottom_k:
                break
            key = scores[i][1]
            if key not in removed and can_remove(key, removed):
                removed.append(key)
                n += 1
    return removed


def prune_graph(params: Mapping[str, Any], blocks: Sequence[Mapping[str, Any]], *,
                threshold: float | None = None, bottom_k: int | None = None,
                peer_threshold: float | None = None, peer_bottom_k: int | None = None
                ) -> tuple[list[Block], Params]:
    """Remove weak connections / attention peers: a smaller valid graph and the params that fit it.

    Seed L134 (connections), L140 (attention connections): remove the weights below a threshold or
    the k lowest.

    Args:
      params: trained params of `blocks`, or a variables dict {"params", "batch_stats"} (then both
        collections are pruned and returned in that form).
      blocks: the graph the params belong to (after `streams_off`; fixed weights in the blocks'
        "weights").
      threshold / bottom_k: remove connections with g(w) < threshold, then the bottom_k lowest of
        the rest (over the whole graph, ties in graph order). A block never loses its last
        input (below the threshold it keeps its highest-weighted one).
      peer_threshold / peer_bottom_k: the same for attention peers, by softmax weight per
        connection, on the connections that remain; a connection always keeps a peer other than
        its input (peer-mode params needed).

    Then every block that is no longer an input or a peer of any block and is not in the final
    level is removed (repeatedly, stems included). A block that lost its lowest-resolution input
    gets "fuse_scale" pinned to its old fusion scale, so every surviving block keeps its shapes.

    Returns:
      (new_blocks, new_params): the pruned graph (normalised dicts; peers as a list where all of a
      block's connections share them, else per input) and the params (same leaf types) without the
      removed connections' logits, attention and projections, the removed peers' logits and unused
      peer projections, and the removed blocks. `Model(blocks=new_blocks).apply(new_params, ...)`
      works; a connection or peer removed with a weight of exactly 0 (e.g. a logit of -inf)
      changed nothing, so the outputs are then identical.

    Raises:
      ValueError: nothing to prune by (all four None), a negative bottom_k, peer pruning without
        peer-mode params, params that do not belong to the graph.
    """
    if threshold is None and bottom_k is None and peer_threshold is None and peer_bottom_k is None:
        raise ValueError("prune_graph: pass threshold, bottom_k, peer_threshold or peer_bottom_k")
    for key, v in (("bottom_k", bottom_k), ("peer_bottom_k", peer_bottom_k)):
        if v is not None and (not _is_int(v) or v < 0):
            raise ValueError(f"prune_graph: {key}={v!r} is not an int >= 0; pass a count")
    graph = validate_graph(blocks, require_peers=False)
    p, others = _split_variables(params)
    scores = connection_scores(p, graph)
    peer_mode = any(k.startswith("h_") for b in graph if b["level"] > 1
                    for j in b["inputs"] for k in _fusion(p, b["name"]).get(f"attn_{j}", {}))
    if (peer_threshold is not None or peer_bottom_k is not None) and not peer_mode:
        raise ValueError("prune_graph: peer_threshold / peer_bottom_k need peer-mode params "
                         "(attention_mode='peer'); these have no peer logits")
    if peer_mode:
        validate_graph(graph, require_peers=True)
    old_scales = graph_scales(graph)
    inputs = {b["name"]: list(b["inputs"]) for b in graph if b["level"] > 1}
    peers = {b["name"]: {j: list(ps) for j, ps in b["peers"].items()}
             for b in graph if b["level"] > 1}

    # 1. connections
    conn = [(scores[_edge(j, i)], (i, j)) for i, js in inputs.items() for j in js]
    keep_one = lambda key, removed: sum(1 for r in removed if r[0] == key[0]) < len(
        inputs[key[0]]) - 1
    for i, j in _select(conn, threshold, bottom_k, keep_one):
        inputs[i].remove(j)
        del peers[i][j]
    # 2. attention peers
    if peer_mode and (peer_threshold is not None or peer_bottom_k is not None):
        ps_scores = peer_scores(p, graph)
        cand = [(ps_scores[_edge(j, i)][k], (i, j, k)) for i, js in inputs.items() for j in js
                for k in peers[i][j]]

        def keep_peer(key: tuple[str, str, str], removed: list) -> bool:
            i, j, k = key
            gone = {r[2] for r in removed if r[:2] == (i, j)} | {k}
            return bool(set(peers[i][j]) - gone - {j})

        for i, j, k in _select(cand, peer_threshold, peer_bottom_k, keep_peer):
            peers[i][j].remove(k)
    # 3. dead blocks
    top = max(b["level"] for b in graph)
    alive = {b["name"] for b in graph}
    while True:
        used = {j for i in alive if i in inputs for j in inputs[i]} | {
            k for i in alive if i in peers for ps in peers[i].values() for k in ps}
        dead = {b["name"] for b in graph if b["name"] in alive and b["level"] < top
                and b["name"] not in used}
        if not dead:
            break
        alive -= dead

    new_blocks: list[Block] = []
    new_p = {k: v for k, v in p.items() if k not in {b["name"] for b in graph} or k in alive}
    new_others = {c: {k: v for k, v in t.items() if k not in {b["name"] for b in graph}
                      or k in alive} for c, t in others.items()}
    for b in graph:
        name = b["name"]
        if name not in alive:
            continue
        if b["level"] == 1:
            new_blocks.append(dict(b))
            continue
        js = inputs[name]
        nb = dict(b, inputs=list(js), weights={j: w for j, w in b["weights"].items() if j in js})
        ps = {j: list(peers[name][j]) for j in js}
        shared = next(iter(ps.values()))
        nb["peers"] = list(shared) if all(v == shared for v in ps.values()) else ps
        if max(old_scales[j][1] for j in js) != old_scales[name][0]:
            nb["fuse_scale"] = old_scales[name][0]
        new_blocks.append(nb)
        fusion = dict(_fusion(p, name))
        for j in b["inputs"]:
            if j not in js:
                for key in (f"w_{j}", f"attn_{j}", f"proj_{j}"):
                    fusion.pop(key, None)
            elif f"attn_{j}" in fusion:
                fusion[f"attn_{j}"] = {k: v for k, v in fusion[f"attn_{j}"].items()
                                       if not k.startswith("h_") or k[2:] in ps[j]}
        used_peers = {k for v in ps.values() for k in v} if peer_mode else set()
        fusion = {k: v for k, v in fusion.items()
                  if not k.startswith("peer_proj_") or k[len("peer_proj_"):] in used_peers}
        new_p[name] = dict(new_p[name], fusion=fusion)
    validate_graph(new_blocks, require_peers=peer_mode)
    if others:
        return new_blocks, {"params": new_p, **new_others}
    return new_blocks, new_p


# ------------------------------------------------------------------------------------------------
# Checkpoint loading.


def load(init_params: Any, init_file: str, model_cfg: Any = None, dont_load: Sequence[str] = (),
         *, from_unpruned: bool = False, **kw: Any) -> Params:
    """The params of checkpoint `init_file`, merged strictly into this model's init.

    `init_file` is any checkpoint spec (`vitx.utils.checkpoints.load_params`); the checkpoint
    must be of the same graph, or of the pruned graph the config now holds (`prune_graph`'s
    params). `from_unpruned=True` (config.model_load) also accepts the checkpoint of the graph
    *before* pruning: its params of blocks the model lacks and its connection / peer params
    (under `{block}/fusion/`) the model lacks are dropped (logged); pruning changes no surviving
    shape, so everything else loads as is. Everything else is `vitx.utils.tree.merge_params`
    (strict; `dont_load` regexes keep init values). BatchNorm statistics are not in `params`: they
    start from init (mean 0, var 1) unless the trainer restores `batch_stats` itself.

    Raises:
      FileNotFoundError / ValueError: see `vitx.utils.checkpoints.load_params`; one ValueError
        listing every param that cannot be loaded; unknown keyword arguments.
    """
    del model_cfg  # the structure of init_params is the graph
    if kw:
        raise ValueError(f"model_load keys {sorted(kw)} are unknown to assemblenet; use "
                         f"from_unpruned")
    loaded, _ = checkpoints.load_params(init_file)
    init = jax.device_get(init_params)
    if from_unpruned:
        init_flat, loaded_flat = tree.flat_leaves(init), tree.flat_leaves(loaded)
        blocks = {n.split("/")[0] for n in init_flat}
        drop = [n for n in loaded_flat if n not in init_flat and (
            n.split("/")[0] not in blocks or n.split("/")[1:2] == ["fusion"])]
        if drop:
            logger.info("assemblenet.load: dropping %d pruned params of the checkpoint: %s",
                        len(drop), drop)
            loaded = tree.unflatten({n: v for n, v in loaded_flat.items() if n not in drop})
    return tree.merge_params(init, loaded, dont_load=dont_load)
