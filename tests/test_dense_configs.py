"""configs/segmentation_digits.py and configs/detection_digits.py: every `encoder=` option
builds, passes its input check and runs on a 64x64 scene (FlexiViT at every patch size)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import pytest

from vitx import config as config_lib
from vitx.models import build_model, get_model_module

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("config", ["segmentation_digits", "detection_digits"])
@pytest.mark.parametrize("encoder", ["vit", "flexivit", "hybrid", "coatnet"])
def test_every_encoder_of_the_dense_configs_runs_at_every_patch_size(config, encoder):
    c = config_lib.load_config(os.path.join(ROOT, "configs", f"{config}.py:encoder={encoder}"))
    model_cfg = c.model.to_dict()
    get_model_module(c.model_name).check_input(model_cfg, (64, 64, 1))
    model = build_model(c.model_name, c.num_classes, **model_cfg)
    x = jnp.zeros((1, 64, 64, 1))
    sizes = [(p, p) for p in c.flexi.patch_sizes] if "flexi" in c else [None]
    kw = {} if sizes[0] is None else {"patch_size": sizes[0]}
    variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, **kw))
    grid = 64 // 8
    for ps in sizes:
        kw = {} if ps is None else {"patch_size": ps}
        out, aux = jax.eval_shape(lambda v, kw=kw: model.apply(v, x, **kw), variables)
        g = grid if ps is None else 64 // ps[0]
        assert aux["token_map"].shape[1:3] == (g, g), (encoder, ps)
        if config == "segmentation_digits":
            assert out.shape == (1, 64, 64, 11), (encoder, ps)
        else:
            assert out.shape == (1, g * g, 4 + 10 + 1), (encoder, ps)
