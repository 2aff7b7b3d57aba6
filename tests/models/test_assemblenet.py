"""AssembleNet++ (peer attention): attention, fusion, graph validation, pruning, dilation, training.

Tiny shapes only (T <= 9, 8x8 clips, <= 8 channels).
"""

import copy
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vitx.models import assemblenet as asn
from vitx.models import get_model_module
from vitx.utils import npz, tree

B, T, H, W = 2, 4, 8, 8


def tiny_graph():
    """3 stems (2 video, 1 one-hot mask), 2 level-2 blocks (a at half resolution), 1 final."""
    return [
        dict(name="v1", level=1, stream="video", channels=4),
        dict(name="v2", level=1, stream="video", channels=4, dilation=2),
        dict(name="m", level=1, stream="mask", channels=4, one_hot=2),
        dict(name="a", level=2, inputs=["v1", "v2", "m"], peers=["v1", "v2", "m"], channels=8,
             stride=2),
        dict(name="b", level=2, inputs=["v1", "m"], peers=["v2", "m"], channels=4, dilation=2,
             conv="3d"),
        dict(name="c", level=3, inputs=["v1", "v2", "m", "a", "b"],
             peers=["v1", "v2", "m", "a", "b"], channels=8),
    ]


def tiny_inputs(seed=0):
    rng = np.random.default_rng(seed)  # numpy: no compile per random op
    return {"video": rng.uniform(size=(B, T, H, W, 1)).astype(np.float32),
            "mask": (rng.uniform(size=(B, T, H, W, 1)) < 0.3).astype(np.uint8),
            "label": jnp.zeros((B,), jnp.int32)}  # extra batch keys are ignored


def init(model, *inputs, seed=0):
    """Variables of `model` like its init (w, h, biases, BN shifts and means 0; BN scales and vars
    1; kernels He-normal), drawn with numpy: the real `model.init` compiles one op per param shape,
    which is slow on a small CPU (`test_model_outputs_aux_and_batch_stats` runs the real one)."""
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name in ("scale", "var"):
            return np.ones(s.shape, s.dtype)
        if name != "kernel" or path[-2].key == "head":
            return np.zeros(s.shape, s.dtype)
        return (rng.standard_normal(s.shape) * np.sqrt(2 / math.prod(s.shape[:-1]))).astype(
            s.dtype)

    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(seed), *inputs)
    return jax.tree_util.tree_map_with_path(fill, shapes)


def perturb(variables, seed=1, scale=0.3):
    """Every param plus noise (BN scales and the zero-init head included), stats kept."""
    rng = np.random.default_rng(seed)
    noisy = jax.tree.map(lambda v: np.asarray(v) + scale * rng.standard_normal(np.shape(v)).astype(
        np.float32), variables["params"])
    return {**variables, "params": noisy}


def set_leaf(variables, path, value):
    out = copy.deepcopy(jax.tree.map(np.asarray, variables))
    node = out["params"]
    *parents, last = path.split("/")
    for p in parents:
        node = node[p]
    node[last] = np.full(np.shape(node[last]), value, np.float32)
    return out


# --- peer attention ------------------------------------------------------------------------------

def attention_setup(num_peers=3, c=6):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((B, T, 5, 5, c)), jnp.float32)
    peers = [jnp.asarray(rng.standard_normal((B, T, 3 + i, 4, 7)), jnp.float32)
             for i in range(num_peers)]
    att = asn.PeerAttention(c, tuple(f"p{i}" for i in range(num_peers)))
    fn = lambda params, x, peers: att.apply(params, x, [asn.pool_frames(p) for p in peers])
    params = init(att, x, [asn.pool_frames(p) for p in peers])
    return att, fn, params, x, peers


def test_attention_in_unit_interval_and_broadcast_over_hw_only():
    _, fn, params, x, peers = attention_setup()
    params = perturb(params, scale=1.0)
    a, w = fn(params, x, peers)
    assert a.shape == (B, T, 1, 1, x.shape[-1])  # per frame and channel, broadcast over H, W
    assert bool(jnp.all((a > 0) & (a < 1)))
    assert float(jnp.std(a, axis=(0, 1)).mean()) > 0  # varies across batch / frames
    np.testing.assert_allclose(float(jnp.sum(w)), 1.0, rtol=1e-6)
    assert (a * x).shape == x.shape


def test_zero_attention_params_give_exactly_half():
    _, fn, params, x, peers = attention_setup()
    zeros = jax.tree.map(jnp.zeros_like, params)  # Dense kernel, bias and peer logits
    a, w = fn(zeros, x, peers)
    assert bool(jnp.all(a == 0.5))
    assert bool(jnp.all(w == 1 / 3))


def test_single_peer_gets_softmax_weight_exactly_one():
    _, fn, params, x, peers = attention_setup(num_peers=1)
    params = set_leaf(params, "h_p0", 3.7)
    _, w = fn(params, x, peers)
    assert w.shape == (1,) and float(w[0]) == 1.0


def test_perturbing_a_peer_changes_the_attention():
    _, fn, params, x, peers = attention_setup()
    params = perturb(params)
    for i in range(len(peers)):
        grad = jax.grad(lambda p, i=i: jnp.sum(fn(params, x, [*peers[:i], p, *peers[i + 1:]])[0]))(
            peers[i])
        assert float(jnp.abs(grad).max()) > 0, f"no gradient w.r.t. peer {i}"
    # ... and the peer logits h receive a gradient too.
    g = jax.grad(lambda prm: jnp.sum(fn(prm, x, peers)[0]))(params)
    assert float(jnp.abs(g["params"]["h_p0"])) > 0


def test_attention_width_must_match_input_channels():
    x = jnp.zeros((B, T, 3, 3, 6))
    with pytest.raises(ValueError, match="one factor per channel"):
        asn.PeerAttention(5, ("p",)).init(jax.random.PRNGKey(0), x, [jnp.zeros((B, T, 4))])


# --- fusion --------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["peer", "self", "none"])
def test_fusion_of_mismatched_shapes_gives_target_shape(mode):
    xs = {"a": jnp.ones((B, T, 16, 16, 8)), "b": jnp.ones((B, T, 8, 8, 16)),
          "p": jnp.ones((B, T, 4, 4, 3))}
    fusion = asn.Fusion(32, ("a", "b"), (("b", "p"), ("a", "p")), mode)
    variables = init(fusion, xs)
    out, info = fusion.apply(variables, xs)
    assert out.shape == (B, T, 8, 8, 32)  # smallest H x W, the target's channels
    params = variables["params"]
    assert params["proj_a"]["kernel"].shape == (1, 1, 1, 8, 32)
    assert params["proj_b"]["kernel"].shape == (1, 1, 1, 16, 32)
    assert all(float(g) == 0.5 for g in info["connection_weights"].values())  # w = 0 at init
    if mode == "peer":
        assert params["peer_proj_p"]["kernel"].shape == (3, 32)
        assert params["attn_a"]["dense"]["kernel"].shape == (32, 8)
        assert info["attention"]["b"].shape == (B, T, 1, 1, 16)
    elif mode == "self":
        assert params["attn_a"]["dense"]["kernel"].shape == (8, 8)
    else:
        assert not any(k.startswith("attn_") for k in params) and not info["attention"]


def test_fusion_pools_and_rejects_non_integer_factors():
    xs = {"a": jnp.ones((B, T, 6, 6, 4)), "b": jnp.ones((B, T, 4, 4, 4))}
    with pytest.raises(ValueError, match="integer factor"):
        asn.Fusion(4, ("a", "b"), attention_mode="none").init(jax.random.PRNGKey(0), xs)


# --- graph ---------------------------------------------------------------------------------------

def edit(**changes):
    """tiny_graph() with block `name` updated (value None deletes the key)."""
    g = tiny_graph()
    for name, upd in changes.items():
        b = next(b for b in g if b["name"] == name)
        for k, v in upd.items():
            if v is None:
                b.pop(k, None)
            else:
                b[k] = v
    return g


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
    # the peer of a connection may be deeper than its input block (seed L127)
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


# --- model ---------------------------------------------------------------------------------------

def test_model_outputs_aux_and_batch_stats():
    m = asn.Model(3, blocks=tiny_graph())
    x = tiny_inputs()
    variables = init(m, x)
    assert set(variables) == {"params", "batch_stats"}
    assert "mean" in variables["batch_stats"]["c"]["unit_0"]["bn1"]
    logits, aux = m.apply(variables, x)
    assert logits.shape == (B, 3) and bool(jnp.all(logits == 0))  # zero-init head
    assert aux["pre_logits"].shape == (B, 8)
    assert aux["blocks"]["a"].shape == (B, T, 4, 4, 8)
    assert aux["blocks"]["c"].shape == (B, T, 4, 4, 8)  # fused at the smallest size (a's)
    assert aux["attention"]["c"]["b"].shape == (B, T, 1, 1, 4)
    assert aux["peer_weights"]["c"]["a"].shape == (5,)
    assert float(aux["connection_weights"]["a"]["v1"]) == 0.5
    (_, _), new = m.apply(variables, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(new["batch_stats"]["v1"]["bn"]["mean"],
                           variables["batch_stats"]["v1"]["bn"]["mean"])
    with pytest.raises(ValueError, match="lack stream 'mask'"):
        m.apply(variables, {"video": x["video"]})
    with pytest.raises(ValueError, match="dict of the streams"):
        m.apply(variables, x["video"])


def test_real_init():
    m = asn.Model(3, blocks=TWO_STEMS)
    x = {"video": np.zeros((1, 2, 4, 4, 1), np.float32)}
    variables = m.init(jax.random.PRNGKey(0), x)
    fusion = variables["params"]["a"]["fusion"]
    assert float(fusion["w_v1"]) == 0.0 and float(fusion["attn_v1"]["h_v2"]) == 0.0  # g = 0.5
    assert float(jnp.abs(fusion["attn_v1"]["dense"]["kernel"]).max()) < 0.1  # N(0, 0.01)
    assert float(jnp.abs(variables["params"]["head"]["kernel"]).max()) == 0.0
    assert float(jnp.abs(variables["params"]["a"]["unit_0"]["bn3"]["scale"]).max()) == 0.0
    assert float(variables["batch_stats"]["a"]["unit_0"]["bn1"]["var"].min()) == 1.0


def test_fixed_connection_weights_round_trip():
    x = tiny_inputs()
    m = asn.Model(3, blocks=tiny_graph())
    variables = perturb(init(m, x))
    scores = asn.connection_scores(variables, tiny_graph())
    assert set(scores) == {"v1->a", "v2->a", "m->a", "v1->b", "m->b", "v1->c", "v2->c", "m->c",
                           "a->c", "b->c"}
    fixed = asn.Model(3, blocks=tiny_graph(), connection_weights=scores)
    fixed_vars = init(fixed, x)
    assert "w_v1" not in fixed_vars["params"]["a"]["fusion"]  # fixed: no param
    params = dict(variables["params"])
    for name in ("a", "b", "c"):
        params[name] = dict(params[name], fusion={k: v for k, v in params[name]["fusion"].items()
                                                  if not k.startswith("w_")})
    out_learned, _ = m.apply(variables, x)
    out_fixed, _ = fixed.apply({**variables, "params": params}, x)
    np.testing.assert_array_equal(out_learned, out_fixed)
    with pytest.raises(ValueError, match="not a connection of the graph"):
        asn.Model(3, blocks=tiny_graph(), connection_weights={"c->a": 0.5})


@pytest.mark.parametrize("conv", ["(2+1)d", "3d", "2d"])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_temporal_dilation_keeps_t_and_receptive_field(conv, d):
    k, t0, t = 3, 4, 9
    x = jnp.zeros((1, t, 3, 3, 1)).at[0, t0, 1, 1, 0].set(1.0)
    st = asn.SpaceTimeConv(1, kernel=k, dilation=d, conv=conv)
    variables = init(st, x)
    ones = jax.tree_util.tree_map_with_path(  # kernels and BN scale 1, BN bias 0
        lambda path, v: jnp.zeros_like(v) if path[-1].key == "bias" else jnp.ones_like(v),
        variables["params"])
    y = st.apply({**variables, "params": ones}, x)
    assert y.shape == x.shape  # T (and H, W at stride 1) kept
    support = np.nonzero(np.asarray(jnp.abs(y).sum(axis=(0, 2, 3, 4))))[0].tolist()
    if conv == "2d":
        assert support == [t0]
    else:
        assert support == [t0 - d, t0, t0 + d]
        assert support[-1] - support[0] + 1 == (k - 1) * d + 1


# --- pruning -------------------------------------------------------------------------------------

def flat_shapes(params):
    return {k: np.shape(v) for k, v in tree.flat_leaves(params).items()}


def test_pruning_reproduces_outputs_of_zero_weight_connections(tmp_path):
    x = tiny_inputs()
    m = asn.Model(3, blocks=tiny_graph())
    variables = perturb(init(m, x))
    # a -> c is c's only half-resolution input: pruning it must pin c's fusion size.
    variables = set_leaf(variables, "c/fusion/w_a", -np.inf)   # g = sigmoid(-inf) = 0 exactly
    variables = set_leaf(variables, "c/fusion/w_m", -np.inf)
    variables = set_leaf(variables, "b/fusion/attn_v1/h_v2", -np.inf)  # softmax weight 0
    ref, ref_aux = m.apply(variables, x)
    assert float(ref_aux["connection_weights"]["c"]["a"]) == 0.0
    assert float(ref_aux["peer_weights"]["b"]["v1"][0]) == 0.0

    new_blocks, new_vars = asn.prune_graph(variables, tiny_graph(), threshold=0.01,
                                           peer_threshold=0.01)
    c = next(b for b in new_blocks if b["name"] == "c")
    b = next(b for b in new_blocks if b["name"] == "b")
    assert c["inputs"] == ["v1", "v2", "b"] and c["fuse_scale"] == 2
    assert b["peers"] == {"v1": ["m"], "m": ["v2", "m"]}  # per connection now
    fusion = new_vars["params"]["c"]["fusion"]
    assert not {"w_a", "attn_a", "w_m", "attn_m", "proj_m"} & set(fusion)
    assert "h_v2" not in new_vars["params"]["b"]["fusion"]["attn_v1"]
    assert asn.edge_counts(new_blocks) == {"connections": 8, "attention": 9 + 3 + 15}

    pruned = asn.Model(3, blocks=new_blocks)
    fresh = init(pruned, x)
    assert flat_shapes(fresh) == flat_shapes(new_vars)  # exactly the params the graph needs
    out, aux = pruned.apply(new_vars, x)
    np.testing.assert_array_equal(out, ref)
    np.testing.assert_array_equal(aux["blocks"]["c"], ref_aux["blocks"]["c"])
    out_train, _ = pruned.apply(new_vars, x, train=True, mutable=["batch_stats"])
    ref_train, _ = m.apply(variables, x, train=True, mutable=["batch_stats"])
    np.testing.assert_array_equal(out_train[0], ref_train[0])

    # load: the pruned checkpoint, and the unpruned one with from_unpruned.
    npz.save_npz(tmp_path / "pruned.npz", new_vars["params"])
    npz.save_npz(tmp_path / "full.npz", variables["params"])
    loaded = asn.load(fresh["params"], str(tmp_path / "pruned.npz"), {"blocks": new_blocks})
    np.testing.assert_array_equal(pruned.apply({**new_vars, "params": loaded}, x)[0], ref)
    with pytest.raises(ValueError, match="not in model"):
        asn.load(fresh["params"], str(tmp_path / "full.npz"))
    loaded = asn.load(fresh["params"], str(tmp_path / "full.npz"), from_unpruned=True)
    np.testing.assert_array_equal(pruned.apply({**new_vars, "params": loaded}, x)[0], ref)


def test_pruning_bottom_k_dead_blocks_and_last_input():
    x = tiny_inputs()
    graph = edit(c=dict(peers=["v1", "b"]))  # a is an input of c only, not a peer
    m = asn.Model(3, blocks=graph)
    variables = init(m, x)
    for path, w in [("c/fusion/w_a", -5.0), ("c/fusion/w_m", -4.0), ("b/fusion/w_m", -3.0),
                    ("b/fusion/w_v1", -6.0)]:
        variables = set_leaf(variables, path, w)
    new_blocks, new_vars = asn.prune_graph(variables, graph, bottom_k=3)
    names = {b["name"]: b for b in new_blocks}
    # lowest: b<-v1 (-6), c<-a (-5), c<-m (-4); b keeps its last input (m) after losing v1
    assert names["b"]["inputs"] == ["m"] and names["c"]["inputs"] == ["v1", "v2", "b"]
    assert "a" not in names  # no longer an input or peer of anything: removed
    assert "a" not in new_vars["params"] and "a" not in new_vars["batch_stats"]
    out, _ = asn.Model(3, blocks=new_blocks).apply(new_vars, x)
    assert out.shape == (B, 3)

    _, p = asn.prune_graph(variables["params"], graph, threshold=0.2)  # params only
    assert "batch_stats" not in p and "w_m" in p["b"]["fusion"]  # b keeps its best input
    blocks, _ = asn.prune_graph(variables, graph, threshold=0.2)
    assert next(b for b in blocks if b["name"] == "b")["inputs"] == ["m"]
    with pytest.raises(ValueError, match="pass threshold"):
        asn.prune_graph(variables, graph)
    none_model = asn.Model(3, blocks=graph, attention_mode="none")
    with pytest.raises(ValueError, match="need peer-mode params"):
        asn.prune_graph(init(none_model, x), graph, peer_bottom_k=1)


def test_peer_pruning_keeps_a_peer_other_than_the_input():
    x = tiny_inputs()
    m = asn.Model(3, blocks=tiny_graph())
    variables = init(m, x)
    blocks, new_vars = asn.prune_graph(variables, tiny_graph(), peer_bottom_k=100)
    for b in asn.validate_graph(blocks)[3:]:
        for j, ps in b["peers"].items():
            assert len(ps) == 1 and ps[0] != j
    pruned = asn.Model(3, blocks=blocks)
    assert flat_shapes(init(pruned, x)) == flat_shapes(new_vars)
    out, _ = pruned.apply(new_vars, x)
    assert out.shape == (B, 3)


# --- training ------------------------------------------------------------------------------------

TWO_STEMS = [dict(name="v1", level=1, stream="video", channels=4),
             dict(name="v2", level=1, stream="video", channels=4, dilation=2),
             dict(name="a", level=2, inputs=["v1", "v2"], peers=["v1", "v2"], channels=8,
                  stride=2)]


def test_few_training_steps_lower_the_loss():
    m = asn.Model(4, blocks=TWO_STEMS)
    x = {"video": np.random.default_rng(0).standard_normal((8, T, H, W, 1)).astype(np.float32)}
    labels = jnp.arange(8) % 4
    variables = init(m, x)
    params, stats = variables["params"], variables["batch_stats"]
    tx = optax.adam(3e-2)
    opt = tx.init(params)

    @jax.jit
    def step(params, stats, opt):
        def loss_fn(p):
            (logits, _), new = m.apply({"params": p, "batch_stats": stats}, x, train=True,
                                       mutable=["batch_stats"])
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, new["batch_stats"]
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, updates), stats, opt, loss, grads

    losses = []
    for i in range(8):
        params, stats, opt, loss, grads = step(params, stats, opt)
        losses.append(float(loss))
        if i == 1:  # connection logits, peer logits and attention Dense all get gradients
            f = grads["a"]["fusion"]
            assert float(jnp.abs(f["w_v1"])) > 0 and float(jnp.abs(f["attn_v1"]["h_v2"])) > 0
            assert float(jnp.abs(f["attn_v2"]["dense"]["kernel"]).max()) > 0
    assert losses[-1] < losses[0] - 0.1, losses
