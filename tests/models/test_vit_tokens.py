"""Register tokens, fc_norm and layer scale on the ViT (`vitx.models.vit_tokens`)."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from vitx.models import vit
from vitx.utils import npz
from vitx.utils.tree import flat_leaves

TINY = dict(width=16, depth=2, mlp_dim=32, num_heads=2, patch_size=4)
X = np.random.RandomState(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)


def _init(**kw):
    model = vit.Model(3, head_zeroinit=False, **TINY, **kw)
    return model, model.init(jax.random.PRNGKey(0), X)["params"]


def test_defaults_add_nothing() -> None:
    """At their defaults the fields add no param (the outputs are the plain ViT's: the
    existing ViT / layers tests check them) and the aux has no "registers"."""
    model = vit.Model(3, **TINY)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), X)["params"]
    names = set(flat_leaves(shapes))
    assert "Transformer/encoder_norm/scale" in names
    assert not {n for n in names if "registers" in n or "fc_norm" in n or "LayerScale" in n}
    _, aux = jax.eval_shape(model.apply, {"params": shapes}, X)
    assert "registers" not in aux and aux["encoded"].shape == (2, 5, 16)


def test_extras_params_and_effect() -> None:
    """Each extra adds its params; registers change the logits but not the aux shapes;
    layer scale at 1 equals no layer scale (same other params)."""
    model, params = _init(reg_tokens=2, fc_norm=True, layer_scale=1.0)
    flat = flat_leaves(params)
    assert flat["registers"].shape == (1, 2, 16) and flat["fc_norm/scale"].shape == (16,)
    assert "Transformer/encoder_norm/scale" not in flat
    assert {k for k in flat if "LayerScale" in k} == {
        f"Transformer/encoderblock_{i}/LayerScale_{j}/scale" for i in (0, 1) for j in (0, 1)}
    logits, aux = model.apply({"params": params}, X)
    assert aux["encoded"].shape == (2, 5, 16) and aux["registers"].shape == (2, 2, 16)
    assert aux["token_map"].shape == (2, 2, 2, 16)
    no_ls = vit.Model(3, **TINY, reg_tokens=2, fc_norm=True)
    p = {k: v for k, v in params.items() if k != "Transformer"}
    p["Transformer"] = {b: {k: v for k, v in blk.items() if not k.startswith("LayerScale")}
                        for b, blk in params["Transformer"].items()}
    np.testing.assert_allclose(no_ls.apply({"params": p}, X)[0], logits, atol=1e-6)
    params["registers"] = params["registers"] + 1.0
    assert np.max(np.abs(model.apply({"params": params}, X)[0] - logits)) > 1e-4


def test_scan_equals_unscanned() -> None:
    model, params = _init(reg_tokens=1, layer_scale=0.5, pool_type="gap")
    scanned = vit.Model(3, **TINY, reg_tokens=1, layer_scale=0.5, pool_type="gap", scan=True)
    np.testing.assert_allclose(scanned.apply({"params": npz.stack_blocks(params)}, X)[0],
                               model.apply({"params": params}, X)[0], atol=1e-5)


@pytest.mark.parametrize("kw,match", [(dict(reg_tokens=-1), "model.reg_tokens=-1"),
                                      (dict(layer_scale=0.0), "model.layer_scale=0.0")])
def test_bad_values(kw, match) -> None:
    with pytest.raises(ValueError, match=match):
        _init(**kw)
