"""AssembleNet++ connection and peer-attention weights at each eval: metrics, a PNG and a JSON.

    config.evals.graph = dict(type="assemblenet_graph")
    config.evals.graph = dict(type="assemblenet_graph",
                              prune=dict(threshold=0.3, peer_bottom_k=1))   # also the pruned graph

At every eval (and the final one) it reads the learned weights from the params
(`vitx.models.assemblenet.connection_scores` / `peer_scores`) and

  * logs them as metrics: `<name>/connection/<src>-><dst>` = g(w) = sigmoid(w) in [0, 1] (fixed
    weights as configured) and, in peer mode, `<name>/peer/<peer>-><block>` = the peer's softmax
    weight in the attention of the block's connections, averaged over them (`peer_edges`; each
    connection's own softmax is in weights.json);
  * writes `WORKDIR/<name>/graph.png` (left: connections, edge width = g; right: peer -> block,
    edge width = the peer's mean softmax weight over the block's connections; with `prune`, the
    connections pruning removes drawn dashed) and `WORKDIR/<name>/weights.json`
    ({"connections": {...}, "peers": {...}, "removed_connections", "removed_peers"});
  * with `prune` (the keyword arguments of `prune_graph`: threshold, bottom_k, peer_threshold,
    peer_bottom_k), beside them `WORKDIR/<name>/pruned_model.json`: {"model_name", "model"
    (config.model with the pruned `blocks`), "model_load": {"from_unpruned": true}}, the config
    that fine-tunes the pruned graph from this run (`--config.model_init=WORKDIR`).

Files are rewritten at each eval (the latest weights; every eval's values are in
metrics.jsonl), by process 0 only.

Source: CN116157804A (seed 002), description of the connectivity: learned block-connection and
attention-connection weights, pruned by a threshold or the k lowest; Ryoo et al.,
"AssembleNet++", ECCV 2020, Sec. 3.2 (peer attention) and Fig. 5 (the learned graph).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from vitx.evaluators import EvalContext
from vitx.models import assemblenet
from vitx.utils import graph_plot, to_plain, write_json_atomic

PRUNE_KEYS = ("threshold", "bottom_k", "peer_threshold", "peer_bottom_k")
#: config.model keys that describe the graph; the pruned model config replaces them by `blocks`.
GRAPH_KEYS = ("blocks", "variant", "graph", "streams_off", "connection_weights")


def weights_report(params: Any, graph: assemblenet.GraphSpec, *, peers: bool,
                   prune: dict | None = None) -> dict[str, Any]:
    """The graph's weights and what pruning by `prune` would remove.

    `params`: the params or variables of `graph`; `peers`: whether they are peer-mode params
    (attention_mode="peer").

    Returns {"connections": {"src->dst": g}, "peers": {"src->dst": {peer: w}} ({} unless
    `peers`), "removed_connections": ["src->dst", ...], "removed_peers": ["src->dst/peer", ...],
    "pruned_blocks": the pruned graph's block dicts (None without `prune`)}.

    Raises:
      ValueError: params that do not belong to `graph`, or bad `prune` arguments
        (`prune_graph`).
    """
    params = jax.device_get(params)
    conns = assemblenet.connection_scores(params, graph)
    scores = assemblenet.peer_scores(params, graph) if peers else {}
    out: dict[str, Any] = {"connections": conns, "peers": scores, "removed_connections": [],
                           "removed_peers": [], "pruned_blocks": None}
    if prune:
        blocks, _ = assemblenet.prune_graph(params, graph, **prune)
        kept = assemblenet.GraphSpec.from_blocks(blocks, require_peers=peers)
        kept_conns = {c.key: c.peers for b in kept.blocks for c in b.connections}
        out["removed_connections"] = [k for k in conns if k not in kept_conns]
        out["removed_peers"] = [f"{k}/{p}" for k, ws in scores.items() if k in kept_conns
                                for p in ws if p not in kept_conns[k]]
        out["pruned_blocks"] = blocks
    return out


def peer_edges(graph: assemblenet.GraphSpec, peers: dict[str, dict[str, float]]
               ) -> dict[tuple[str, str], float]:
    """{(peer, block): the peer's softmax weight averaged over the block's connections (0 where
    a connection does not list it)} for the plot's second panel."""
    out: dict[tuple[str, str], float] = {}
    for b in graph.blocks:
        shares = [peers.get(c.key, {}) for c in b.connections]
        for p in dict.fromkeys(p for s in shares for p in s):
            out[(p, b.name)] = sum(s.get(p, 0.0) for s in shares) / len(shares)
    return out


class Evaluator:
    """Logs and draws an AssembleNet++'s connection and peer weights (module docstring).

    Args:
      name: the metric prefix and the folder in the workdir.
      cfg: `prune` (optional dict of `prune_graph` keyword arguments).
      ctx: the shared `EvalContext` (its `model` gives the graph; `workdir` the folder).

    Raises:
      ValueError: the run's model is not an AssembleNet, an unknown `prune` key, or a bad graph.
    """

    def __init__(self, name: str, cfg: ml_collections.ConfigDict, ctx: EvalContext):
        model = ctx.model
        if model is None or model.name != "assemblenet":
            raise ValueError(f"type='assemblenet_graph' needs model_name='assemblenet' (not "
                             f"{getattr(model, 'name', None)!r}); remove this eval")
        self.name = name
        self.model_cfg = to_plain(model.cfg) or {}
        parsed = assemblenet.AssembleNetConfig.from_config(self.model_cfg)
        self.graph, self.peers = parsed.graph, parsed.attention_mode == "peer"
        self.prune = to_plain(cfg.get("prune")) or None
        unknown = sorted(set(self.prune or {}) - set(PRUNE_KEYS))
        if unknown:
            raise ValueError(f"prune keys {unknown} are unknown; use {list(PRUNE_KEYS)}")
        self.folder = os.path.join(ctx.workdir, name) if ctx.workdir else None

    def run(self, variables: Any, *, final: bool = False) -> dict[str, float]:
        """{name/connection/src->dst: g, name/peer/peer->block: w}; writes the files."""
        del final
        report = weights_report(variables, self.graph, peers=self.peers, prune=self.prune)
        metrics = {f"{self.name}/connection/{k}": v for k, v in report["connections"].items()}
        metrics.update({f"{self.name}/peer/{p}->{b}": w for (p, b), w in peer_edges(
            self.graph, report["peers"]).items()})
        if self.folder is not None and jax.process_index() == 0:
            self.write(report)
        return metrics

    def write(self, report: dict[str, Any]) -> None:
        """graph.png, weights.json and (with `prune`) pruned_model.json in the folder."""
        os.makedirs(self.folder, exist_ok=True)
        pruned = report.pop("pruned_blocks")
        write_json_atomic(os.path.join(self.folder, "weights.json"), report)
        if pruned is not None:
            model = {k: v for k, v in self.model_cfg.items() if k not in GRAPH_KEYS}
            write_json_atomic(os.path.join(self.folder, "pruned_model.json"), {
                "model_name": "assemblenet", "model": {**model, "blocks": pruned},
                "model_load": {"from_unpruned": True}})
        levels = {n.name: n.level for n in self.graph.nodes}
        edges = {(c.src, c.dst): report["connections"][c.key] for b in self.graph.blocks
                 for c in b.connections}
        gone = set(report["removed_connections"])
        removed = frozenset((c.src, c.dst) for b in self.graph.blocks for c in b.connections
                            if c.key in gone)
        graph_plot.plot_block_graph(
            levels, edges, os.path.join(self.folder, "graph.png"),
            peer_edges=peer_edges(self.graph, report["peers"]) if report["peers"] else None,
            removed=removed, title=f"AssembleNet++ weights ({self.name})")
