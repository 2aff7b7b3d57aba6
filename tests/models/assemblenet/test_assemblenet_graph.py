"""AssembleNet++ graph: schema validation, generators, streams_off, check_input."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from asn_helpers import H, T, W, edit, tiny_graph

from vitx.models import assemblenet as asn
from vitx.models import get_model_module


# --- graph ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("graph,match", [
    (edit(b=dict(inputs=["v1", "a"], peers=["v2"])), "input 'a' is at level 2, not an earlier"),
    (edit(a=dict(inputs=["v1", "c"])), "input 'c' is at level 3, not an earlier"),
    (edit(a=dict(peers=["v1", "b"])), "peer 'b' is at level 2, not an earlier"),
    (edit(b=dict(inputs=["v1"], peers=["v1"])), "hold no block other than 'v1'"),
    (edit(b=dict(peers=[])), "hold no block other than"),
    (edit(b=dict(peers={"v1": ["v1"], "m": ["v1"]})), "peers ['v1'] of input 'v1'"),
    (edit(a=dict(inputs=["v1", "zz"])), "input 'zz' is not a block of the graph"),
    (edit(a=dict(peers=["v1", "zz"])), "peer 'zz' is not a block of the graph"),
    (edit(b=dict(name="a")), "'a' occurs twice"),
    (edit(v1=dict(inputs=["m"])), "stem 'v1' (level 1) has inputs"),
    (edit(v1=dict(stream=None)), "set 'stream' to a batch key"),
    (edit(a=dict(stream="video")), "only level-1 stems read a stream"),
    (edit(a=dict(chanels=3)), "unknown keys ['chanels']"),
    (edit(a=dict(conv="4d")), "conv='4d' is unknown"),
    (edit(a=dict(inputs=[])), "has no inputs"),
    (edit(a=dict(weights={"b": 0.5})), "not one of its inputs"),
    (edit(c=dict(name="head")), "reserved for the head"),
    (edit(b=dict(stride=3)), "not a multiple of the scales"),
    ([dict(name="v", level=1, stream="video", channels=4)], "only stems"),
])
def test_validation_errors(graph, match):
    with pytest.raises(ValueError, match=re.escape(match)) as e:
        asn.validate_graph(graph)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError):  # Model and check_input validate too
        asn.Model(3, blocks=graph)
    with pytest.raises(ValueError):
        asn.check_input({"blocks": graph}, None)


def test_validation_accepts_level_skipping_and_deeper_peers():
    g = asn.validate_graph(tiny_graph())
    c = next(b for b in g if b["name"] == "c")
    assert c["inputs"][0] == "v1"  # level 1 -> level 3 skips level 2
    # the peer of a connection may be deeper than its input block (CN116157804A, claim 10)
    asn.validate_graph(edit(c=dict(inputs=["v1"], peers=["a"])))
    # self / none modes need no peers
    asn.validate_graph(edit(b=dict(peers=[])), require_peers=False)
    asn.Model(3, blocks=edit(b=dict(peers=[])), attention_mode="self")


@pytest.mark.parametrize("sizes", [(2, 1), (2, 3, 2, 1), (1, 4, 4)])
def test_fully_connected_edge_counts(sizes):
    levels = [[dict(name=f"s{i}", stream="video", channels=4) for i in range(sizes[0])]]
    levels += [[dict(name=f"b{li}_{i}", channels=4) for i in range(n)]
               for li, n in enumerate(sizes[1:])]
    earlier = np.cumsum(sizes)[:-1]
    conn = sum(n * e for n, e in zip(sizes[1:], earlier, strict=True))
    att = sum(n * e * e for n, e in zip(sizes[1:], earlier, strict=True))
    if sizes[0] == 1:  # one stem: its level-2 blocks have no peer but their input
        with pytest.raises(ValueError, match="no block other than"):
            asn.fully_connected_graph(levels)
        g = asn.fully_connected_graph(levels, peers=False)
        assert asn.edge_counts(g) == {"connections": conn, "attention": 0}
        return
    g = asn.fully_connected_graph(levels)
    assert asn.edge_counts(g) == {"connections": conn, "attention": att}
    for b in g[sizes[0]:]:  # every earlier block is an input and a peer
        before = [x["name"] for x in g if x["level"] < b["level"]]
        assert b["inputs"] == before and b["peers"] == before


def test_default_graph_counts_and_shapes():
    g = asn.default_graph()
    assert asn.edge_counts(g) == {"connections": 38, "attention": 300}
    m = get_model_module("assemblenet").Model(8, blocks=g)
    x = {"video": jnp.zeros((2, 8, 32, 32, 1), jnp.uint8), "flow": jnp.zeros((2, 8, 32, 32, 2)),
         "mask": jnp.zeros((2, 8, 32, 32, 1), jnp.uint8)}
    variables = jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), x))
    assert set(variables) == {"params", "batch_stats"}
    (logits, aux) = jax.eval_shape(lambda v: m.apply(v, x), variables)
    assert logits.shape == (2, 8)
    assert aux["blocks"]["L4_0"].shape == (2, 8, 4, 4, 64)
    assert aux["blocks"]["L2_0"].shape == (2, 8, 16, 16, 16)
    assert aux["attention"]["L4_0"]["L3_1"].shape == (2, 8, 1, 1, 32)
    n = sum(math.prod(v.shape) for v in jax.tree.leaves(variables["params"]))
    assert n < 200_000
    asn.check_input({}, {k: (v.shape[1:], v.dtype) for k, v in x.items()})


def test_streams_off():
    g = asn.default_graph()
    rgb = asn.apply_streams_off(g, ["flow", "mask"])
    assert {b["name"] for b in rgb if b["level"] == 1} == {"video_d1", "video_d2"}
    assert asn.edge_counts(rgb) == {"connections": 2 * 2 + 2 * 4 + 6, "attention": 2 * 4 + 2 * 16
                                    + 36}
    m = asn.Model(8, streams_off=["flow", "mask"])  # default graph
    x = {"video": jnp.zeros((1, 8, 32, 32, 1))}
    logits, _ = jax.eval_shape(lambda: m.init_with_output(jax.random.PRNGKey(0), x)[0])
    assert logits.shape == (1, 8)
    with pytest.raises(ValueError, match="which no stem reads"):
        asn.Model(8, streams_off=["depth"])
    with pytest.raises(ValueError, match="every stream off"):
        asn.Model(8, streams_off=["video", "flow", "mask"])
    with pytest.raises(ValueError, match="no inputs left"):
        asn.Model(8, blocks=edit(b=dict(inputs=["m"], peers=["v1", "v2"])), streams_off=["mask"])


def test_check_input():
    cfg = {"blocks": tiny_graph()}
    asn.check_input(cfg, {"video": (T, H, W, 1), "mask": ((T, H, W, 1), np.uint8)})
    asn.check_input(cfg, (T, H, W, 1))
    with pytest.raises(ValueError, match="reads stream 'mask'"):
        asn.check_input(cfg, {"video": (T, H, W, 1)})
    with pytest.raises(ValueError, match="not divisible by the graph's spatial scales"):
        asn.check_input(cfg, (T, 7, 7, 1))
    with pytest.raises(ValueError, match=r"needs \(T, H, W, 1\)"):
        asn.check_input(cfg, {"video": (T, H, W, 1), "mask": (T, H, W, 2)})
    with pytest.raises(ValueError, match=r"needs clips \(T, H, W, C\)"):
        asn.check_input(cfg, (H, W, 1))
    with pytest.raises(ValueError, match="attention_mode='bad' is unknown"):
        asn.check_input({**cfg, "attention_mode": "bad"}, None)


def test_graph_spec_parses_once_and_checks_itself():
    g = asn.GraphSpec.from_blocks(tiny_graph())
    assert [s.name for s in g.stems] == ["v1", "v2", "m"] and g.streams == ["video", "mask"]
    b = next(b for b in g.blocks if b.name == "b")
    assert b.inputs == ("v1", "m") and b.bottleneck == 1 and b.conv == "3d"
    assert [c.key for c in b.connections] == ["v1->b", "m->b"]
    assert g.to_dicts() == asn.validate_graph(tiny_graph())
    assert asn.GraphSpec.from_blocks(g.to_dicts()) == g
    with pytest.raises(ValueError, match="has no inputs"):
        asn.BlockSpec("x", 2, 4, ())
    with pytest.raises(ValueError, match=re.escape("weights['v1']=2.0 is not in [0, 1]")):
        asn.Connection("v1", "x", ("v2",), 2.0)
    with pytest.raises(ValueError, match="hold no block other than 'v1'"):
        asn.GraphSpec(g.stems, (asn.BlockSpec("x", 2, 4, (asn.Connection("v1", "x", ("v1",)),)),))
    cfg = asn.AssembleNetConfig.from_config({"blocks": tiny_graph(), "attention_mode": "self"})
    assert cfg.attention_mode == "self" and cfg.graph == g
