"""AssembleNet++ model: outputs, aux, BatchNorm state, init, fixed weights, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from asn_helpers import TWO_STEMS, B, H, T, W, init, perturb, tiny_graph, tiny_inputs

from vitx.models import assemblenet as asn

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


# --- training ------------------------------------------------------------------------------------
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
