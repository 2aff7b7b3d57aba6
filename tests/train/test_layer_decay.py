"""Layer-wise lr decay (`config.layer_decay`): exact multipliers per depth (BEiT Sec. 2.6)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vitx.models import vit
from vitx.train import optim
from vitx.train.sharding import path_name
from vitx.utils import ConfigError

DECAY = 0.5


def _vit_params(depth: int, scan: bool = False, pool_type: str = "tok"):
    model = vit.Model(10, variant="pico/4", depth=depth, width=16, mlp_dim=32, num_heads=2,
                      scan=scan, pool_type=pool_type)
    x = jnp.zeros((1, 16, 16, 1))
    return jax.eval_shape(model.init, jax.random.key(0), x)["params"]


def _mults(params, decay=DECAY, lr_mults=()):
    cfg = optim.OptimConfig(lr=1.0, total_steps=10, lr_mults=tuple(lr_mults), layer_decay=decay)
    tree = optim.lr_mult_tree(params, optim.lr_rules(params, cfg))
    return {path_name(p): m for p, m in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _expected(path: str, depth: int, decay: float = DECAY) -> float:
    if path.startswith(("head/", "Transformer/encoder_norm/", "MAPHead")):
        return 1.0
    if path.startswith("Transformer/encoderblock_"):
        i = int(path.split("/")[1].split("_")[1])
        return decay ** (depth - i)
    return decay ** (depth + 1)  # embedding, cls, pos_embedding


@pytest.mark.parametrize("depth", [2, 3])
def test_vit_multipliers_exact_per_depth(depth):
    mults = _mults(_vit_params(depth))
    assert mults["head/kernel"] == 1.0 and mults["Transformer/encoder_norm/scale"] == 1.0
    for name in ("embedding/kernel", "cls", "pos_embedding"):
        assert mults[name] == DECAY ** (depth + 1), name
    for i in range(depth):
        block = {k: v for k, v in mults.items() if k.startswith(f"Transformer/encoderblock_{i}/")}
        assert block and set(block.values()) == {DECAY ** (depth - i)}
    assert all(m == _expected(p, depth) for p, m in mults.items())


def test_map_head_and_user_rules_first():
    mults = _mults(_vit_params(2, pool_type="map"), lr_mults=[("^embedding/", None),
                                                               ("encoderblock_1/", 3.0)])
    assert all(v == 1.0 for k, v in mults.items() if k.startswith("MAPHead"))
    assert mults["embedding/kernel"] == 0.0  # frozen by the user's rule, which wins
    assert mults["Transformer/encoderblock_1/LayerNorm_0/scale"] == 3.0
    assert mults["Transformer/encoderblock_0/LayerNorm_0/scale"] == DECAY ** 2


def test_polyvit_paths_modality_layers_count_first():
    paths = ["tokenizer_image/embedding/kernel", "tokenizer_image/cls",
             "modality_layers_image/encoderblock_0/MlpBlock_0/Dense_0/kernel",
             "modality_layers_audio/encoderblock_0/MlpBlock_0/Dense_0/kernel",
             "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel",
             "Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel",
             "Transformer/encoder_norm/scale", "head_digits/kernel", "head_audio/bias"]
    rules = optim.layer_decay_mults(paths, 0.8)
    params = {}
    for p in paths:  # nested dict of the paths
        node = params
        *parents, leaf = p.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = 0.0
    got = {path_name(p): m for p, m in jax.tree_util.tree_flatten_with_path(
        optim.lr_mult_tree(params, rules))[0]}
    depth = 3  # 1 modality layer + 2 shared blocks
    assert got["tokenizer_image/embedding/kernel"] == 0.8 ** (depth + 1)
    assert got["modality_layers_audio/encoderblock_0/MlpBlock_0/Dense_0/kernel"] == 0.8 ** 3
    assert got["Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel"] == 0.8 ** 2
    assert got["Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel"] == 0.8 ** 1
    assert got["head_digits/kernel"] == got["head_audio/bias"] == 1.0


def test_scanned_model_raises():
    with pytest.raises(ConfigError, match="model.scan=False"):
        _mults(_vit_params(2, scan=True))


def test_bad_factor_and_non_vit_raise():
    with pytest.raises(ConfigError, match="layer_decay=1.5 must be in"):
        optim.OptimConfig(lr=1.0, total_steps=10, layer_decay=1.5)
    with pytest.raises(ConfigError, match="ViT-family"):
        optim.layer_decay_mults(["stem/conv/kernel", "head/kernel"], 0.7)


def test_optimizer_scales_updates_and_from_config():
    params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), _vit_params(2))
    config = ml_collections.ConfigDict(dict(lr=1.0, total_steps=10, optax_name="sgd",
                                            schedule=dict(decay_type="constant"),
                                            layer_decay=DECAY))
    tx = optim.make_optimizer(config, params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    leaves = jax.tree_util.tree_flatten_with_path(updates)[0]
    flat = {path_name(p): np.asarray(u) for p, u in leaves}
    for p, u in flat.items():
        np.testing.assert_array_equal(u, np.full(u.shape, -_expected(p, 2), np.float32), p)
