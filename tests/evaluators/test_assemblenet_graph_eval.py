"""AssembleNet++ weights at each eval: metrics, graph.png (edge width = weight), weights.json and
the pruned graph, on a tiny graph (params built by hand: only the fusion logits are read)."""

import json

import numpy as np
import pytest

from vitx.evaluators import EvalContext, assemblenet_graph
from vitx.models import assemblenet
from vitx.train.run_config import ModelConfig
from vitx.utils import graph_plot

GRAPH = [
    dict(name="v", level=1, stream="video", channels=4),
    dict(name="m", level=1, stream="mask", channels=4, one_hot=2),
    dict(name="a", level=2, inputs=["v", "m"], peers=["v", "m"], channels=4),
    dict(name="b", level=2, inputs=["v", "m"], peers=["v", "m"], channels=4),
    dict(name="c", level=3, inputs=["v", "a", "b"], peers=["a", "b"], channels=4),
]
LOGITS = {"a": {"v": 2.0, "m": -1.0}, "b": {"v": 0.5, "m": -3.0}, "c": {"v": -2.5, "a": 1.0,
                                                                         "b": 0.0}}


def params():
    rng = np.random.default_rng(0)
    out = {}
    for blk in GRAPH[2:]:
        fusion = {}
        for j in blk["inputs"]:
            fusion[f"w_{j}"] = np.float32(LOGITS[blk["name"]][j])
            fusion[f"attn_{j}"] = {f"h_{k}": np.float32(rng.normal()) for k in blk["peers"]}
        out[blk["name"]] = {"fusion": fusion}
    return {"params": out, "batch_stats": {}}


def context(tmp_path, name="assemblenet"):
    model = ModelConfig(name=name, num_classes=8, cfg={"blocks": GRAPH,
                                                       "attention_mode": "peer"})
    return EvalContext(predict_fn=None, task=None, mesh=None, variable_shardings=None,
                       data_dir=None, default_batch_size=2, workdir=str(tmp_path), model=model)


def test_metrics_files_and_pruned_graph(tmp_path):
    ev = assemblenet_graph.Evaluator("graph", {"prune": {"threshold": 0.1}}, context(tmp_path))
    variables = params()
    metrics = ev.run(variables)
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    for dst, ws in LOGITS.items():
        for src, w in ws.items():
            assert metrics[f"graph/connection/{src}->{dst}"] == pytest.approx(sig(w), rel=1e-6)
    fusion = variables["params"]["c"]["fusion"]
    softmax = {j: np.exp([fusion[f"attn_{j}"]["h_a"], fusion[f"attn_{j}"]["h_b"]])
               for j in ("v", "a", "b")}
    softmax = {j: e / e.sum() for j, e in softmax.items()}
    # Peer a's weight into block c: its softmax share averaged over c's three connections.
    want = np.mean([softmax[j][0] for j in ("v", "a", "b")])
    assert metrics["graph/peer/a->c"] == pytest.approx(want, rel=1e-6)
    assert metrics["graph/peer/a->c"] + metrics["graph/peer/b->c"] == pytest.approx(1.0)
    assert {k for k in metrics if "/peer/" in k} == {
        f"graph/peer/{p}->{b}" for b, p in (("c", "a"), ("a", "m"), ("b", "m"), ("c", "b"),
                                            ("a", "v"), ("b", "v"))}
    folder = tmp_path / "graph"
    with open(folder / "weights.json") as f:
        report = json.load(f)
    assert report["connections"]["v->a"] == pytest.approx(sig(2.0), rel=1e-6)
    assert report["peers"]["a->c"]["b"] == pytest.approx(softmax["a"][1], rel=1e-6)
    # g < 0.1: m->b (0.047) and v->c (0.076) are pruned; nothing else.
    assert sorted(report["removed_connections"]) == ["m->b", "v->c"]
    assert (folder / "graph.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(folder / "pruned_model.json") as f:
        pruned = json.load(f)
    assert pruned["model_load"] == {"from_unpruned": True}
    graph = assemblenet.AssembleNetConfig.from_config(pruned["model"]).graph
    keys = {c.key for b in graph.blocks for c in b.connections}
    assert keys == {"v->a", "m->a", "v->b", "a->c", "b->c"}
    # The next eval rewrites the files with the new weights.
    variables["params"]["b"]["fusion"]["w_m"] = np.float32(3.0)
    ev.run(variables)
    with open(folder / "weights.json") as f:
        assert sorted(json.load(f)["removed_connections"]) == ["v->c"]


def test_edge_width_is_the_weight_and_bad_input(tmp_path):
    assert graph_plot.edge_style(0.5)["lw"] == pytest.approx(0.5 * graph_plot.MAX_WIDTH)
    assert graph_plot.edge_style(1.0)["lw"] == pytest.approx(graph_plot.MAX_WIDTH)
    assert graph_plot.edge_style(0.25, removed=True)["linestyle"] == "--"
    levels = {"v": 1, "a": 2}
    with pytest.raises(ValueError, match="weight 1.5 is outside"):
        graph_plot.plot_block_graph(levels, {("v", "a"): 1.5}, str(tmp_path / "g.png"))
    with pytest.raises(ValueError, match="'x' is not a block"):
        graph_plot.plot_block_graph(levels, {("x", "a"): 0.5}, str(tmp_path / "g.png"))
    with pytest.raises(ValueError, match="needs model_name='assemblenet'"):
        assemblenet_graph.Evaluator("graph", {}, context(tmp_path, name="vit"))
    with pytest.raises(ValueError, match=r"prune keys \['k'\] are unknown"):
        assemblenet_graph.Evaluator("graph", {"prune": {"k": 1}}, context(tmp_path))
