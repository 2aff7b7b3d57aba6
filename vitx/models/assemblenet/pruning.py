"""AssembleNet++ connection and attention-peer scores, and pruning to a smaller loadable graph.

Source: CN116157804A, description of the connectivity: the block connections and the attention
connections may start fully connected, their weights are learned, and either may be pruned during
or after training by a threshold or by removing the k lowest.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vitx.models.assemblenet.graph import Block, Connection, GraphSpec, as_graph
from vitx.utils import positive_int, to_plain

__all__ = ["connection_scores", "peer_scores", "prune_graph"]

Params = dict[str, Any]
#: A prunable edge: (block, input) for a connection, (block, input, peer) for a peer.
Edge = tuple[str, ...]


def _split_variables(params: Mapping[str, Any]) -> tuple[Params, dict[str, Params]]:
    """(params tree, other collections) of a params tree or a variables dict {"params", ...}."""
    params = to_plain(params)
    if "params" in params and set(params) <= {"params", "batch_stats"}:
        return params["params"], {k: v for k, v in params.items() if k != "params"}
    return params, {}


def _fusion(params: Params, block: str) -> Params:
    try:
        return params[block]["fusion"]
    except KeyError:
        raise ValueError(f"params have no {block}/fusion; pass the params of this graph (after "
                         f"streams_off)") from None


def _connections(params: Mapping[str, Any], blocks: GraphSpec | Sequence[Mapping[str, Any]]
                 ) -> Iterator[tuple[Connection, Params]]:
    """(connection, params of its target's `fusion`) of every connection, in graph order."""
    graph = as_graph(blocks)
    params, _ = _split_variables(params)
    for b in graph.blocks:
        fusion = _fusion(params, b.name)
        for c in b.connections:
            yield c, fusion


def connection_scores(params: Mapping[str, Any], blocks: GraphSpec | Sequence[Mapping[str, Any]]
                      ) -> dict[str, float]:
    """{"src->dst": g} of every connection: sigmoid of the learned logit, or the fixed weight.

    Passing the result as `connection_weights` (or a block's `weights`) fixes the same values.

    Raises:
      ValueError: a learned connection whose logit `dst/fusion/w_src` is not in `params`.
    """
    out = {}
    for c, fusion in _connections(params, blocks):
        if c.weight is not None:
            out[c.key] = c.weight
        elif f"w_{c.src}" in fusion:
            out[c.key] = float(jax.nn.sigmoid(jnp.asarray(fusion[f"w_{c.src}"])))
        else:
            raise ValueError(f"params lack {c.dst}/fusion/w_{c.src} of the learned connection "
                             f"{c.key}; pass the params of this graph or fix the weight in the "
                             f"block's 'weights'")
    return out


def peer_scores(params: Mapping[str, Any], blocks: GraphSpec | Sequence[Mapping[str, Any]]
                ) -> dict[str, dict[str, float]]:
    """{"src->dst": {peer: softmax weight}} of every connection (peer-mode params).

    Raises:
      ValueError: a peer logit `dst/fusion/attn_src/h_peer` missing from `params`.
    """
    out = {}
    for c, fusion in _connections(params, blocks):
        attn = fusion.get(f"attn_{c.src}", {})
        missing = [k for k in c.peers if f"h_{k}" not in attn]
        if missing:
            raise ValueError(f"params lack the peer logits {c.dst}/fusion/attn_{c.src}/h_* of "
                             f"peers {missing}; pass peer-mode params of this graph")
        if not c.peers:
            continue
        h = np.array([float(np.asarray(attn[f"h_{k}"])) for k in c.peers], np.float64)
        e = np.exp(h - h.max())
        out[c.key] = dict(zip(c.peers, (e / e.sum()).tolist(), strict=True))
    return out


def _weakest(scores: Mapping[Edge, float], threshold: float | None, bottom_k: int | None,
             members: Callable[[Edge], Sequence[str]]) -> list[Edge]:
    """The edges to remove: those scoring below `threshold`, then the `bottom_k` lowest of the
    rest (ascending, ties in `scores` order).

    An edge is (*group, member): a connection (block, input) in the group of the block's inputs,
    a peer (block, input, peer) in the group of the connection's peers. A removal is skipped when
    it would leave the group no member other than the group's last name, so a block keeps an
    input and a connection keeps a peer other than its input (claim 1). `members(group)` lists a
    group's members before this pruning step.
    """
    removed: list[Edge] = []

    def can_remove(edge: Edge) -> bool:
        group, member = edge[:-1], edge[-1]
        gone = {r[-1] for r in removed if r[:-1] == group} | {member, group[-1]}
        return bool(set(members(group)) - gone)

    order = sorted(scores, key=scores.__getitem__)
    passes = [] if threshold is None else [(lambda s: s < threshold, len(order))]
    passes += [] if bottom_k is None else [(lambda s: True, bottom_k)]
    for below, limit in passes:
        n = 0
        for edge in order:
            if n >= limit:
                break
            if edge not in removed and below(scores[edge]) and can_remove(edge):
                removed.append(edge)
                n += 1
    return removed


def prune_graph(params: Mapping[str, Any], blocks: GraphSpec | Sequence[Mapping[str, Any]], *,
                threshold: float | None = None, bottom_k: int | None = None,
                peer_threshold: float | None = None, peer_bottom_k: int | None = None
                ) -> tuple[list[Block], Params]:
    """Remove weak connections / attention peers: a smaller valid graph and the params that fit it.

    CN116157804A (description of the connectivity): remove the connections, or the attention
    connections, whose weights are below a threshold, or the k lowest.

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
        try:
            if v is not None:
                positive_int(v, key, minimum=0)
        except ValueError:
            raise ValueError(f"prune_graph: {key}={v!r} is not an int >= 0; pass a count") from None
    graph = as_graph(blocks)
    p, others = _split_variables(params)
    scores = connection_scores(p, graph)
    peer_mode = any(k.startswith("h_") for b in graph.blocks for j in b.inputs
                    for k in _fusion(p, b.name).get(f"attn_{j}", {}))
    prune_peers = peer_threshold is not None or peer_bottom_k is not None
    if prune_peers and not peer_mode:
        raise ValueError("prune_graph: peer_threshold / peer_bottom_k need peer-mode params "
                         "(attention_mode='peer'); these have no peer logits")
    if peer_mode:
        dataclasses.replace(graph, require_peers=True)  # checks the peers
    old_scales = graph.scales()
    # {block: {input: [peers]}}: the connections and peers that survive.
    conns = {b.name: {c.src: list(c.peers) for c in b.connections} for b in graph.blocks}
    for i, j in _weakest({(c.dst, c.src): scores[c.key] for b in graph.blocks
                          for c in b.connections}, threshold, bottom_k, lambda g: conns[g[0]]):
        del conns[i][j]
    if peer_mode and prune_peers:
        ps_scores = peer_scores(p, graph)
        cand = {(i, j, k): ps_scores[f"{j}->{i}"][k] for i, js in conns.items() for j in js
                for k in conns[i][j]}
        for i, j, k in _weakest(cand, peer_threshold, peer_bottom_k, lambda g: conns[g[0]][g[1]]):
            conns[i][j].remove(k)
    # dead blocks: neither an input nor a peer of a live block, and not in the final level
    top = graph.blocks[-1].level
    alive = {b.name for b in graph.nodes}
    while True:
        used = {n for i in alive if i in conns for j, ps in conns[i].items() for n in (j, *ps)}
        dead = {b.name for b in graph.nodes if b.name in alive and b.level < top
                and b.name not in used}
        if not dead:
            break
        alive -= dead

    names = {b.name for b in graph.nodes}
    new_p = {k: v for k, v in p.items() if k not in names or k in alive}
    new_others = {c: {k: v for k, v in t.items() if k not in names or k in alive}
                  for c, t in others.items()}
    new_blocks = []
    for b in graph.blocks:
        if b.name not in alive:
            continue
        ps = conns[b.name]
        nb = dataclasses.replace(b, connections=tuple(
            Connection(c.src, c.dst, tuple(ps[c.src]), c.weight) for c in b.connections
            if c.src in ps))
        if max(old_scales[j][1] for j in ps) != old_scales[b.name][0]:
            nb = dataclasses.replace(nb, fuse_scale=old_scales[b.name][0])
        new_blocks.append(nb)
        fusion = dict(_fusion(p, b.name))
        for j in b.inputs:
            if j not in ps:
                for key in (f"w_{j}", f"attn_{j}", f"proj_{j}"):
                    fusion.pop(key, None)
            elif f"attn_{j}" in fusion:
                fusion[f"attn_{j}"] = {k: v for k, v in fusion[f"attn_{j}"].items()
                                       if not k.startswith("h_") or k[2:] in ps[j]}
        used_peers = {k for v in ps.values() for k in v} if peer_mode else set()
        fusion = {k: v for k, v in fusion.items()
                  if not k.startswith("peer_proj_") or k[len("peer_proj_"):] in used_peers}
        new_p[b.name] = dict(new_p[b.name], fusion=fusion)
    pruned = GraphSpec(tuple(s for s in graph.stems if s.name in alive), tuple(new_blocks),
                       require_peers=peer_mode)
    new_graph = pruned.to_dicts(shared_peers=True)
    if others:
        return new_graph, {"params": new_p, **new_others}
    return new_graph, new_p
