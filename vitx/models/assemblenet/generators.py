"""AssembleNet++ graphs in config form: generators (the fully connected graph, the default
moving_digits graph) and the config edits applied before parsing (`streams_off`, fixed
`connection_weights`).

Source: CN116157804A, description of the connectivity (block connections and attention
connections may start fully connected, then be learned and pruned); AssembleNet++ (Ryoo et al.,
ECCV 2020) Sec. 3.2 (two RGB stems, so that every connection has a peer other than its input).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from vitx.models.assemblenet.graph import Block, validate_graph
from vitx.utils import to_plain

__all__ = ["VARIANTS", "apply_connection_weights", "apply_streams_off", "default_graph",
           "fully_connected_graph"]

#: `Model(variant=...)`: keyword arguments of `default_graph` (stem and level 2-4 widths).
VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(stem_channels=8, channels=(8, 16, 32)),
    "small": dict(stem_channels=8, channels=(16, 32, 64)),
}


def fully_connected_graph(levels: Sequence[Sequence[Mapping[str, Any]]], *,
                          peers: bool = True) -> list[Block]:
    """The "fully connected" graph: every earlier block is an input and a peer of every block.

    Args:
      levels: levels[0] the stems (dicts with name, stream, channels, ...), levels[l] the blocks
        of level l + 1 (dicts with name, channels, stride, dilation, ... but no level, inputs or
        peers: they are filled in).
      peers: also make every earlier block a peer of every connection (else no peers; for
        attention_mode "self" / "none").

    Edge counts (CN116157804A: connections and attention connections, fully connected at the
    start): with n_l blocks in level l and N_l = n_1 + ... + n_{l-1} blocks before it, there are
    sum_{l>=2} n_l N_l connections and, with peers, sum_{l>=2} n_l N_l^2 (connection, peer)
    attention pairs; e.g. levels of sizes (6, 2, 2, 1) give 2*6 + 2*8 + 1*10 = 38 connections and
    2*36 + 2*64 + 100 = 300 attention pairs.

    Returns:
      The graph as config dicts (level, inputs and peers filled in), validated
      (`validate_graph(..., require_peers=peers)`).

    Raises:
      ValueError: a block dict already holding level / inputs / peers, or from `validate_graph`
        (e.g. a single stem, whose level-2 blocks have no peer other than their input).
    """
    graph: list[Block] = []
    earlier: list[str] = []
    for li, level in enumerate(to_plain(list(levels))):
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


def apply_streams_off(blocks: Sequence[Mapping[str, Any]],
                      streams_off: Sequence[str] = ()) -> list[Block]:
    """The graph without the stems of `streams_off` and every connection / peer from them.

    Works on the raw graph (before `validate_graph`); fixed weights of removed connections go too.

    Raises:
      ValueError: `streams_off` names a stream no stem reads, switches every stream off, or leaves
        a block without inputs (naming the block and the fix).
    """
    blocks = to_plain(blocks)
    off = [streams_off] if isinstance(streams_off, str) else list(to_plain(streams_off) or [])
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
        return to_plain(blocks)
    cw = to_plain(connection_weights)
    if not isinstance(cw, dict):
        raise ValueError(f"model.connection_weights={connection_weights!r} is neither 'learned' "
                         f"nor a dict {{'src->dst': p}}; pass one of them")
    blocks = [dict(b) for b in to_plain(blocks)]
    by_name = {b.get("name"): b for b in blocks}
    for key, p in cw.items():
        src, sep, dst = str(key).partition("->")
        b = by_name.get(dst)
        if not sep or b is None or src not in (b.get("inputs") or []):
            raise ValueError(f"model.connection_weights[{key!r}] is not a connection of the "
                             f"graph; key fixed weights as 'src->dst' with src an input of dst")
        b["weights"] = {**(b.get("weights") or {}), src: p}
    return blocks
