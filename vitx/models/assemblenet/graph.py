"""The AssembleNet++ graph schema: stems, blocks and their connections as typed frozen dataclasses.

A graph is written in the config as a list of block dicts (package docstring: schema) and parsed
once by `GraphSpec.from_blocks` into a `GraphSpec` of `StemSpec`s and `BlockSpec`s, whose inputs
are `Connection`s (source block, attention peers, optional fixed weight). Every type checks
itself in `__post_init__`; the parser only checks the raw form (keys, list shapes, which names
exist at which level), so a bad graph fails with one line naming the block, the key and the fix.
`validate_graph` returns the parsed graph as normalised plain dicts (the public dict form, which
`prune_graph` emits and `Model(blocks=...)` reads back).

Sources: AssembleNet++ (Ryoo et al., ECCV 2020) Sec. 3.1-3.2 and CN116157804A, claims 1 and 10
(inputs and peers from earlier levels only, a peer other than the input block).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np

from vitx.utils import positive_int, to_plain

__all__ = ["ATTENTION_MODES", "CONV_TYPES", "AttentionMode", "BlockSpec", "Connection",
           "ConvType", "GraphSpec", "StemSpec", "as_graph", "edge_counts", "graph_scales",
           "validate_graph"]

#: The space-time convolution of a stem or block (package docstring: "SpaceTimeConv").
ConvType = Literal["(2+1)d", "3d", "2d"]
#: How a connection's input is gated: peer attention, SE-style self attention, or none.
AttentionMode = Literal["peer", "self", "none"]
CONV_TYPES: tuple[str, ...] = get_args(ConvType)
ATTENTION_MODES: tuple[str, ...] = get_args(AttentionMode)
Block = dict[str, Any]

_STEM_KEYS = ("name", "level", "stream", "one_hot", "channels", "stride", "dilation", "conv",
              "kernel", "inputs", "peers")
_BLOCK_KEYS = ("name", "level", "inputs", "peers", "channels", "stride", "dilation", "conv",
               "kernel", "num_units", "bottleneck", "weights", "fuse_scale")
_RESERVED = "head"


def _is_int(v: Any) -> bool:
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


def _or_default(b: Mapping[str, Any], key: str, default: Any) -> Any:
    """`b[key]`, or `default` where the key is missing or None."""
    v = b.get(key)
    return default if v is None else v


def _block_int(name: str, key: str, value: Any) -> int:
    """`value` as an int >= 1 (`positive_int`), with the error naming block `name` and `key`."""
    try:
        return positive_int(value, key)
    except ValueError:
        raise ValueError(f"block {name!r}: {key}={value!r} is not a positive int; set an int "
                         f">= 1") from None


def _check_conv(kind: str, name: str, conv: Any) -> None:
    if conv not in CONV_TYPES:
        raise ValueError(f"{kind} {name!r}: conv={conv!r} is unknown; use one of {CONV_TYPES}")


def _check_weight(dst: str, src: str, p: Any) -> float:
    """A fixed post-sigmoid connection weight g in [0, 1], as a float."""
    if isinstance(p, bool) or not isinstance(p, int | float | np.number) or not (
            0.0 <= float(p) <= 1.0):
        raise ValueError(f"block {dst!r}: weights[{src!r}]={p!r} is not in [0, 1]; give the "
                         f"post-sigmoid connection weight g")
    return float(p)


def _check_name(where: str, name: Any, seen: Mapping[str, int]) -> None:
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(f"{where} has name={name!r}; give every block a non-empty string name "
                         f"without '/'")
    if name == _RESERVED or name.startswith(_RESERVED + "_proj_"):
        raise ValueError(f"block name {name!r} is reserved for the head; rename the block")
    if name in seen:
        raise ValueError(f"block name {name!r} occurs twice in model.blocks; give every block a "
                         f"unique name")


def _check_sources(name: str, level: int, inputs: Sequence[str],
                   peers: Sequence[Sequence[str]], levels: Mapping[str, int],
                   require_peers: bool) -> None:
    """Inputs and peers name blocks of earlier levels (claim 10); with `require_peers`, every
    connection has a peer other than its input (claim 1)."""
    for role, names in [("input", inputs)] + [("peer", p) for p in peers]:
        for j in names:
            if j not in levels:
                raise ValueError(f"block {name!r}: {role} {j!r} is not a block of the graph; use "
                                 f"one of {sorted(levels)}")
            if levels[j] >= level:
                raise ValueError(f"block {name!r} (level {level}): {role} {j!r} is at level "
                                 f"{levels[j]}, not an earlier level; connect only blocks of "
                                 f"levels < {level} or raise {name!r}'s level")
    if require_peers:
        for j, ps in zip(inputs, peers, strict=True):
            if not set(ps) - {j}:
                raise ValueError(
                    f"block {name!r}: the peers {list(ps)} of input {j!r} hold no block other "
                    f"than {j!r}; add a peer block != {j!r} of a level < {level} (peer "
                    f"attention, seed claim 1) or use attention_mode='self'")


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


@dataclasses.dataclass(frozen=True)
class Connection:
    """The connection `src -> dst`: its attention peers and its fixed weight (None: learned)."""

    src: str
    dst: str
    peers: tuple[str, ...] = ()
    weight: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "peers", tuple(self.peers))
        if self.weight is not None:
            object.__setattr__(self, "weight", _check_weight(self.dst, self.src, self.weight))

    @property
    def key(self) -> str:
        """"src->dst", the key of `connection_scores` and `model.connection_weights`."""
        return f"{self.src}->{self.dst}"


@dataclasses.dataclass(frozen=True)
class StemSpec:
    """A level-1 block reading batch key `stream` ([one-hot] -> SpaceTimeConv -> BN -> ReLU)."""

    name: str
    stream: str
    channels: int
    one_hot: int | None = None
    stride: int = 1
    dilation: int = 1
    conv: ConvType = "(2+1)d"
    kernel: int = 3

    level = 1

    def __post_init__(self) -> None:
        if not isinstance(self.stream, str) or not self.stream:
            raise ValueError(f"stem {self.name!r} (level 1) has stream={self.stream!r}; set "
                             f"'stream' to a batch key (e.g. 'video', 'flow', 'mask')")
        if self.one_hot is not None:
            if not _is_int(self.one_hot) or self.one_hot < 2:
                raise ValueError(f"stem {self.name!r}: one_hot={self.one_hot!r} is not an int "
                                 f">= 2; set the number of classes of the segmentation map or "
                                 f"None")
            object.__setattr__(self, "one_hot", int(self.one_hot))
        _check_conv("stem", self.name, self.conv)
        for key in ("channels", "stride", "dilation", "kernel"):
            object.__setattr__(self, key, _block_int(self.name, key, getattr(self, key)))

    @classmethod
    def from_dict(cls, b: Mapping[str, Any]) -> StemSpec:
        """A stem from its config dict (name and level checked by `GraphSpec.from_blocks`)."""
        name = b["name"]
        unknown = sorted(set(b) - set(_STEM_KEYS))
        if unknown:
            raise ValueError(f"stem {name!r} has unknown keys {unknown}; a stem takes "
                             f"{list(_STEM_KEYS[:-2])}")
        if b.get("inputs") or b.get("peers"):
            raise ValueError(f"stem {name!r} (level 1) has inputs or peers; stems read a stream "
                             f"only, give them level >= 2 to connect them")
        return cls(name, b.get("stream"), b.get("channels"), b.get("one_hot"),
                   _or_default(b, "stride", 1), _or_default(b, "dilation", 1),
                   b.get("conv", "(2+1)d"), _or_default(b, "kernel", 3))

    def to_dict(self) -> Block:
        return dict(name=self.name, level=1, stream=self.stream, one_hot=self.one_hot,
                    channels=self.channels, stride=self.stride, dilation=self.dilation,
                    conv=self.conv, kernel=self.kernel)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """A block of level >= 2: fusion of its `connections`, then `num_units` bottlenecks.

    `bottleneck` None: channels // 4 (min 1). `fuse_scale` None: fuse at the smallest input size.
    """

    name: str
    level: int
    channels: int
    connections: tuple[Connection, ...]
    stride: int = 1
    dilation: int = 1
    conv: ConvType = "(2+1)d"
    kernel: int = 3
    num_units: int = 1
    bottleneck: int | None = None
    fuse_scale: int | None = None

    def __post_init__(self) -> None:
        if not _is_int(self.level) or self.level < 2:
            raise ValueError(f"block {self.name!r}: level={self.level!r} is not an int >= 2; set "
                             f"its level (1 is for stems)")
        object.__setattr__(self, "level", int(self.level))
        object.__setattr__(self, "connections", tuple(self.connections))
        if not self.connections:
            raise _no_inputs(self.name, self.level)
        _check_conv("block", self.name, self.conv)
        for key in ("channels", "stride", "dilation", "kernel", "num_units"):
            object.__setattr__(self, key, _block_int(self.name, key, getattr(self, key)))
        bottleneck = max(self.channels // 4, 1) if self.bottleneck is None else self.bottleneck
        object.__setattr__(self, "bottleneck", _block_int(self.name, "bottleneck", bottleneck))
        if self.fuse_scale is not None:
            object.__setattr__(self, "fuse_scale",
                               _block_int(self.name, "fuse_scale", self.fuse_scale))

    @property
    def inputs(self) -> tuple[str, ...]:
        return tuple(c.src for c in self.connections)

    @property
    def peers(self) -> dict[str, tuple[str, ...]]:
        return {c.src: c.peers for c in self.connections}

    @property
    def weights(self) -> dict[str, float]:
        """{input: p} of the connections with a fixed weight."""
        return {c.src: c.weight for c in self.connections if c.weight is not None}

    @classmethod
    def from_dict(cls, b: Mapping[str, Any], levels: Mapping[str, int],
                  require_peers: bool) -> BlockSpec:
        """A block from its config dict; `levels` ({name: level} of the whole graph) resolves its
        inputs and peers."""
        name, level = b["name"], int(b["level"])
        unknown = sorted(set(b) - set(_BLOCK_KEYS))
        if unknown:
            hint = "; only level-1 stems read a stream" if "stream" in unknown else ""
            raise ValueError(f"block {name!r} (level {level}) has unknown keys {unknown}{hint}; "
                             f"a block takes {list(_BLOCK_KEYS)}")
        inputs = _names(b.get("inputs"), f"block {name!r} inputs")
        if not inputs:
            raise _no_inputs(name, level)
        raw_peers = b.get("peers")
        if isinstance(raw_peers, dict):
            extra = sorted(set(raw_peers) - set(inputs))
            if extra:
                raise ValueError(f"block {name!r}: peers are given for {extra}, which are not its "
                                 f"inputs {inputs}; key the peers by input names")
            peers = [_names(raw_peers.get(j), f"block {name!r} peers[{j!r}]") for j in inputs]
        else:
            peers = [_names(raw_peers, f"block {name!r} peers")] * len(inputs)
        _check_sources(name, level, inputs, peers, levels, require_peers)
        weights = b.get("weights") or {}
        if not isinstance(weights, dict):
            raise ValueError(f"block {name!r}: weights={weights!r} is not a dict; pass {{input: "
                             f"p}} with p in [0, 1]")
        for j, p in weights.items():
            if j not in inputs:
                raise ValueError(f"block {name!r}: weights names {j!r}, not one of its inputs "
                                 f"{inputs}; key fixed weights by input names")
            _check_weight(name, j, p)
        return cls(name, level, b.get("channels"),
                   tuple(Connection(j, name, tuple(ps), weights.get(j))
                         for j, ps in zip(inputs, peers, strict=True)),
                   _or_default(b, "stride", 1), _or_default(b, "dilation", 1),
                   b.get("conv", "(2+1)d"), _or_default(b, "kernel", 3),
                   _or_default(b, "num_units", 1), b.get("bottleneck"), b.get("fuse_scale"))

    def to_dict(self, *, shared_peers: bool = False) -> Block:
        """The normalised dict; `shared_peers`: peers as one list where every connection has the
        same peers (else {input: [names]})."""
        peers: Any = {c.src: list(c.peers) for c in self.connections}
        first = list(self.connections[0].peers)
        if shared_peers and all(v == first for v in peers.values()):
            peers = first
        return dict(name=self.name, level=self.level, inputs=list(self.inputs), peers=peers,
                    channels=self.channels, stride=self.stride, dilation=self.dilation,
                    conv=self.conv, kernel=self.kernel, num_units=self.num_units,
                    bottleneck=self.bottleneck, weights=self.weights, fuse_scale=self.fuse_scale)


def _no_inputs(name: str, level: int) -> ValueError:
    return ValueError(f"block {name!r} (level {level}) has no inputs; list at least one block of "
                      f"an earlier level in 'inputs'")


@dataclasses.dataclass(frozen=True)
class GraphSpec:
    """A checked AssembleNet++ graph: `stems` (level 1) and `blocks` (sorted by level, stable).

    `require_peers` (construction only): every connection needs a peer other than its input
    (peer attention, claim 1); `Model` passes `attention_mode == "peer"`.
    """

    stems: tuple[StemSpec, ...]
    blocks: tuple[BlockSpec, ...]
    require_peers: dataclasses.InitVar[bool] = True

    def __post_init__(self, require_peers: bool) -> None:
        object.__setattr__(self, "stems", tuple(self.stems))
        object.__setattr__(self, "blocks", tuple(sorted(self.blocks, key=lambda b: b.level)))
        levels: dict[str, int] = {}
        for i, b in enumerate(self.nodes):
            _check_name(f"model.blocks[{i}]", b.name, levels)
            levels[b.name] = b.level
        if not self.blocks:
            raise ValueError("model.blocks has only stems (level 1); add blocks at level 2 or "
                             "above")
        for b in self.blocks:
            _check_sources(b.name, b.level, b.inputs, [c.peers for c in b.connections], levels,
                           require_peers)
        self.scales()  # checks the fusion scales

    @property
    def nodes(self) -> tuple[StemSpec | BlockSpec, ...]:
        """Stems, then blocks by level (the order blocks are computed in)."""
        return self.stems + self.blocks

    @property
    def streams(self) -> list[str]:
        """The batch keys the stems read, in stem order, each once."""
        return list(dict.fromkeys(s.stream for s in self.stems))

    @property
    def finals(self) -> tuple[BlockSpec, ...]:
        """The blocks of the highest level (they feed the head)."""
        top = self.blocks[-1].level
        return tuple(b for b in self.blocks if b.level == top)

    @classmethod
    def from_blocks(cls, blocks: Sequence[Mapping[str, Any]], *,
                    require_peers: bool = True) -> GraphSpec:
        """Parse the graph of `model.blocks` (ConfigDicts and tuples are accepted).

        Raises:
          ValueError (one line, naming the block and the fix): not a non-empty list of dicts, a
            missing or unknown key, a bad name (duplicate, empty, with '/', reserved), a bad level
            / size / conv type, a stem with inputs or a block with a stream, a block without
            inputs, an unknown input or peer name, an input or peer from the same or a later
            level, a peer set with no block other than the input block (require_peers), fixed
            weights of a non-input or outside [0, 1], a fuse_scale that is not a multiple of an
            input's spatial scale, a graph without blocks beyond the stems.
        """
        blocks = to_plain(blocks)
        if not isinstance(blocks, list) or not blocks:
            raise ValueError(f"model.blocks={blocks!r} is not a non-empty list of block dicts; "
                             f"pass a graph (e.g. assemblenet.default_graph())")
        levels: dict[str, int] = {}
        for i, b in enumerate(blocks):
            if not isinstance(b, dict):
                raise ValueError(f"model.blocks[{i}]={b!r} is not a dict; pass {{'name': ..., "
                                 f"'level': ..., ...}}")
            name, level = b.get("name"), b.get("level")
            _check_name(f"model.blocks[{i}]", name, levels)
            if not _is_int(level) or level < 1:
                raise ValueError(f"block {name!r}: level={level!r} is not an int >= 1; set its "
                                 f"level (1 for stems)")
            levels[name] = int(level)
        if max(levels.values()) < 2:
            raise ValueError("model.blocks has only stems (level 1); add blocks at level 2 or "
                             "above")
        parsed: list[StemSpec | BlockSpec] = [
            StemSpec.from_dict(b) if levels[b["name"]] == 1
            else BlockSpec.from_dict(b, levels, require_peers) for b in blocks]
        return cls(tuple(b for b in parsed if isinstance(b, StemSpec)),
                   tuple(b for b in parsed if isinstance(b, BlockSpec)), require_peers)

    def scales(self) -> dict[str, tuple[int, int]]:
        """{name: (fusion scale, output scale)}: spatial downsampling factors (`graph_scales`).

        Raises:
          ValueError: a block's fusion scale is not a multiple of an input's output scale.
        """
        scales = {s.name: (1, s.stride) for s in self.stems}
        for b in self.blocks:
            ins = {j: scales[j][1] for j in b.inputs}
            fuse = b.fuse_scale or max(ins.values())
            bad = {j: s for j, s in ins.items() if fuse % s}
            if bad:
                raise ValueError(f"block {b.name!r} fuses at spatial scale {fuse}, which is not a "
                                 f"multiple of the scales {bad} of its inputs; set 'fuse_scale' "
                                 f"to a common multiple ({math.lcm(fuse, *bad.values())}) or "
                                 f"change the strides")
            scales[b.name] = (fuse, fuse * b.stride)
        return scales

    def to_dicts(self, *, shared_peers: bool = False) -> list[Block]:
        """The normalised dict form (`validate_graph`'s result), stems first."""
        return ([s.to_dict() for s in self.stems]
                + [b.to_dict(shared_peers=shared_peers) for b in self.blocks])


def as_graph(blocks: GraphSpec | Sequence[Mapping[str, Any]], *,
             require_peers: bool = False) -> GraphSpec:
    """`blocks` parsed (`GraphSpec.from_blocks`), or as is when already a `GraphSpec`."""
    if isinstance(blocks, GraphSpec):
        return blocks
    return GraphSpec.from_blocks(blocks, require_peers=require_peers)


def validate_graph(blocks: Sequence[Mapping[str, Any]], *,
                   require_peers: bool = True) -> list[Block]:
    """Check an AssembleNet++ graph and return it normalised (defaults filled, sorted by level).

    Args:
      blocks: the graph (package docstring: schema); ConfigDicts and tuples are accepted.
      require_peers: check that every connection j -> i has a peer other than j (peer attention,
        claim 1); Model passes `attention_mode == "peer"`.

    Returns:
      A new list of plain dicts, stable-sorted by level. Stems: name, level, stream, one_hot
      (None or K), channels, stride, dilation, conv, kernel. Blocks: name, level, inputs (list),
      peers ({input: [names]}), channels, stride, dilation, conv, kernel, num_units, bottleneck,
      weights ({input: p}), fuse_scale (None or int).

    Raises:
      ValueError: see `GraphSpec.from_blocks`.
    """
    return GraphSpec.from_blocks(blocks, require_peers=require_peers).to_dicts()


def graph_scales(graph: GraphSpec | Sequence[Mapping[str, Any]]) -> dict[str, tuple[int, int]]:
    """{name: (fusion scale, output scale)} of a graph (spatial downsampling factors).

    A stem's output scale is its stride (its fusion scale is 1); a block fuses at `fuse_scale`
    (default: the largest output scale of its inputs, i.e. the smallest H x W) and outputs at
    fuse_scale * stride. Clips of H0 x W0 need H0 and W0 divisible by every output scale.

    Raises:
      ValueError: a block's fusion scale is not a multiple of an input's output scale (the
        average pooling factor would not be an integer), naming the block and the fix.
    """
    return as_graph(graph).scales()


def edge_counts(blocks: GraphSpec | Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """{"connections": number of input connections, "attention": number of (connection, peer)
    pairs} of a graph (validated first, peers not required)."""
    conns = [c for b in as_graph(blocks).blocks for c in b.connections]
    return {"connections": len(conns), "attention": sum(len(c.peers) for c in conns)}
