"""AssembleNet++ layers: peer attention, fusion, space-time conv (temporal dilation)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from asn_helpers import B, T, init, perturb, set_leaf

from vitx.models import assemblenet as asn

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
