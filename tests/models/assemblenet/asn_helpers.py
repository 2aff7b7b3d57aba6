"""Shared fixtures of the AssembleNet++ tests: a tiny graph and clips, fast numpy init.

Tiny shapes only (T <= 9, 8x8 clips, <= 8 channels).
"""

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np

from vitx.utils import tree

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


def flat_shapes(params):
    return {k: np.shape(v) for k, v in tree.flat_leaves(params).items()}


TWO_STEMS = [dict(name="v1", level=1, stream="video", channels=4),
             dict(name="v2", level=1, stream="video", channels=4, dilation=2),
             dict(name="a", level=2, inputs=["v1", "v2"], peers=["v1", "v2"], channels=8,
                  stride=2)]
