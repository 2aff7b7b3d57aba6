"""PolyViT: init of every path, routing, masked gradients, token counts, pruning, ViT surgery."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vitx.models import build_model, get_model_module, polyvit, vit
from vitx.models.polyvit import model as polyvit_model
from vitx.utils import npz, tree

MODALITIES = {
    "image": {"patch_size": 4, "input_shape": (16, 16, 3)},
    "video": {"tubelet": (2, 4, 4), "input_shape": (4, 16, 16, 1)},
    "audio": {"patch_size": (4, 4), "input_shape": (24, 16, 1)},  # (time, mel, 1)
}
HEADS = {
    "digits": {"modality": "image", "num_classes": 10},
    "vdigit": {"modality": "video", "num_classes": 10},
    "vdir": {"modality": "video", "num_classes": 8},
    "keys": {"modality": "audio", "num_classes": 12},
}
CFG = dict(variant="pico", modalities=MODALITIES, heads=HEADS)
TOKENS = {"image": 4 * 4 + 1, "video": 2 * 4 * 4 + 1, "audio": 6 * 4 + 1}
ROUTES = [(h["modality"], t) for t, h in HEADS.items()]


def _x(modality, batch=2, seed=0, modalities=MODALITIES):
    shape = tuple(modalities[modality]["input_shape"])
    return jnp.asarray(np.random.default_rng(seed).uniform(-1, 1, (batch, *shape)), jnp.float32)


def _random_like(shapes, seed=0):
    """Random values for a params tree (heads included, so every param affects the logits)."""
    r = np.random.default_rng(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray(0.1 * r.standard_normal(s.shape)
                                    + (path[-1].key == "scale"), s.dtype), shapes)


@functools.cache
def _model(num_modality_layers=0):
    return polyvit.Model(None, **CFG, num_modality_layers=num_modality_layers)


@functools.cache
def _params(num_modality_layers=0, seed=0):
    m = _model(num_modality_layers)
    shapes = jax.eval_shape(functools.partial(m.init, modality="image", task="digits"),
                            jax.random.PRNGKey(0), _x("image", 1))["params"]
    return _random_like(shapes, seed)


@functools.cache
def _apply(m, modality, task):
    return jax.jit(functools.partial(m.apply, modality=modality, task=task))


# Init and shapes.


def test_init_creates_every_tokenizer_and_head():
    m = _model()
    init = jax.jit(functools.partial(m.init, modality="image", task="digits"))
    params = init(jax.random.PRNGKey(0), _x("image", 1))["params"]
    assert set(params) == {"tokenizer_image", "tokenizer_video", "tokenizer_audio", "Transformer",
                           "head_digits", "head_vdigit", "head_vdir", "head_keys"}
    f = {k: v.shape for k, v in tree.flat_leaves(params).items()}
    assert f["tokenizer_image/embedding/kernel"] == (4, 4, 3, 32)
    assert f["tokenizer_video/embedding/kernel"] == (2, 4, 4, 1, 32)
    assert f["tokenizer_audio/embedding/kernel"] == (4, 4, 1, 32)
    for mod, n in TOKENS.items():
        assert f[f"tokenizer_{mod}/pos_embedding"] == (1, n - 1, 32)
        assert f[f"tokenizer_{mod}/cls"] == (1, 1, 32)
    assert f["head_vdir/kernel"] == (32, 8) and f["head_keys/bias"] == (12,)
    assert {k.split("/")[1] for k in f if k.startswith("Transformer/")} == {
        "encoderblock_0", "encoderblock_1", "encoder_norm"}
    for t in HEADS:  # zero-initialised heads
        assert not np.any(np.asarray(params[f"head_{t}"]["kernel"]))
    # Initialising through another route gives the same tree.
    other = jax.eval_shape(functools.partial(m.init, modality="video", task="vdir"),
                           jax.random.PRNGKey(0), _x("video", 1))["params"]
    assert jax.tree.map(lambda a: a.shape, other) == jax.tree.map(lambda a: a.shape, params)
    mask = polyvit.active_mask(other, modality="video", task="vdir")  # abstract shapes work
    assert sorted(k for k, v in tree.flat_leaves(mask).items() if v and "Transformer" not in k
                  ) == sorted(n for n in tree.flat_leaves(other)
                              if n.startswith(("tokenizer_video/", "head_vdir/")))


@pytest.mark.parametrize("modality,task", ROUTES)
def test_route_shapes_tokens_and_masked_gradients(modality, task):
    m, params = _model(), _params()
    x = _x(modality)
    logits, aux = _apply(m, modality, task)({"params": params}, x)
    k = HEADS[task]["num_classes"]
    assert logits.shape == (2, k) and aux["logits"].shape == (2, k)
    assert aux["encoded"].shape == (2, TOKENS[modality], 32)
    assert aux["pre_logits"].shape == (2, 32)
    assert polyvit.num_tokens(CFG, modality) == TOKENS[modality]

    target = jax.nn.one_hot(jnp.arange(2) % k, k)

    def loss(p):
        lg, _ = m.apply({"params": p}, x, modality=modality, task=task)
        return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(lg), -1))

    grads = jax.jit(jax.grad(loss))(params)
    mask = polyvit.active_mask(params, modality=modality, task=task)
    flat_g, flat_m = tree.flat_leaves(grads), tree.flat_leaves(mask)
    for name, g in flat_g.items():
        g = np.asarray(g)
        if not flat_m[name]:
            assert not np.any(g), name  # other tokenizers / heads: exactly zero
        elif not name.endswith("key/bias"):  # softmax is invariant to the key bias
            assert np.any(g), name
    active_tops = {n.split("/")[0] for n, a in flat_m.items() if a}
    assert active_tops == {f"tokenizer_{modality}", "Transformer", f"head_{task}"}


def test_route_defaults_and_errors():
    m, params = _model(), _params()
    logits, _ = _apply(m, None, "digits")({"params": params}, _x("image"))  # modality implied
    assert logits.shape == (2, 10)
    logits, _ = _apply(m, "audio", None)({"params": params}, _x("audio"))  # the only head
    assert logits.shape == (2, 12)
    for kw, match in [(dict(modality="video"), "pass task="),
                      (dict(modality="image", task="vdir"), "model.heads.vdir.modality"),
                      (dict(modality="text", task="digits"), "not in model.modalities"),
                      (dict(modality="image", task="nope"), "not in model.heads")]:
        with pytest.raises(ValueError, match=match):
            m.apply({"params": params}, _x("image"), **kw)
    with pytest.raises(ValueError, match=r"model.modalities.video.input_shape"):
        m.apply({"params": params}, _x("image"), modality="video", task="vdir")


def test_config_errors_are_one_line():
    bad = [
        (dict(modalities={"image": {"patch_size": 4}}), "model.modalities.image.input_shape"),
        (dict(modalities={"v": {"patch_size": 4, "tubelet": (2, 4, 4),
                                "input_shape": (4, 8, 8, 1)}}), "exactly one of"),
        (dict(modalities={"image": {"patch_size": 5, "input_shape": (16, 16, 3)}}),
         "does not divide"),
        (dict(modalities={"image": {"patch_size": 4, "input_shape": (16, 16, 3), "x": 1}}),
         "unknown keys"),
        (dict(heads={"t": {"modality": "text", "num_classes": 3}}), "model.heads.t.modality"),
        (dict(heads={"t": {"modality": "image"}}), "model.heads.t.num_classes"),
        (dict(variant="S/16"), "patch part"),
        (dict(num_modality_layers=2), "model.num_modality_layers"),
        (dict(patch_size=4), "model.patch_size is not a polyvit option"),
    ]
    for override, match in bad:
        with pytest.raises(ValueError, match=match) as e:
            polyvit.Model(None, **{**CFG, **override})
        assert "\n" not in str(e.value)
    polyvit.check_input(CFG, (4, 16, 16, 1))
    polyvit.check_input(CFG, None)
    with pytest.raises(ValueError, match="input_shape to \\(8, 8, 3\\)"):
        polyvit.check_input(CFG, (8, 8, 3))


def test_registry_and_config_dict():
    assert get_model_module("polyvit") is polyvit
    cfg = ml_collections.ConfigDict(CFG)  # as config.model, passed as **kwargs
    m = build_model("polyvit", 5, **cfg)
    assert isinstance(m, polyvit_model._PolyViT) and m == _model()
    polyvit.check_input(cfg, (24, 16, 1))
    assert polyvit.pruned_model_cfg(cfg, task="keys")["heads"] == {"keys": HEADS["keys"]}


# Parameter groups, report, pruning.


def test_param_groups_and_report():
    params = _params()
    groups = polyvit.param_groups(params)
    assert set(groups) == {"shared", "modality:image", "modality:video", "modality:audio",
                           "task:digits", "task:vdigit", "task:vdir", "task:keys"}
    assert all(n.startswith("Transformer/") for n in groups["shared"])
    rep = polyvit.param_report(params, CFG)
    total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    assert sum(rep["groups"].values()) == rep["total"] == total
    assert rep["shared"] == rep["groups"]["shared"]
    assert rep["shared_fraction"] == pytest.approx(rep["shared"] / total)
    assert 0.5 < rep["shared_fraction"] < 1
    assert rep["per_task"]["vdir"] == (rep["shared"] + rep["groups"]["modality:video"]
                                       + rep["groups"]["task:vdir"])
    assert rep["sum_single_task"] == sum(rep["per_task"].values()) > total


@pytest.mark.parametrize("sel", [dict(task="vdir"), dict(modality="video")])
def test_pruned_model_equals_full_model(sel):
    full, params = _model(), _params()
    pruned = polyvit.prune(params, model_cfg=CFG, **sel)
    cfg = polyvit.pruned_model_cfg(CFG, **sel)
    tasks = ["vdir"] if "task" in sel else ["vdigit", "vdir"]
    assert set(pruned) == {"tokenizer_video", "Transformer"} | {f"head_{t}" for t in tasks}
    assert set(cfg["modalities"]) == {"video"} and set(cfg["heads"]) == set(tasks)
    small = polyvit.Model(None, **cfg)
    shapes = jax.eval_shape(functools.partial(small.init, modality="video", task=tasks[0]),
                            jax.random.PRNGKey(0), _x("video", 1))["params"]
    assert jax.tree.map(lambda a: a.shape, shapes) == jax.tree.map(lambda a: a.shape, pruned)
    x = _x("video", seed=3)
    for t in tasks:
        want = np.asarray(_apply(full, "video", t)({"params": params}, x)[0])
        got = np.asarray(_apply(small, "video", t)({"params": pruned}, x)[0])
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="model_cfg="):
        polyvit.prune(params, task="vdir")
    with pytest.raises(ValueError, match="reads modality 'video'"):
        polyvit.prune(params, task="vdir", modality="image", model_cfg=CFG)


def test_modality_layers_build_and_route():
    m, params = _model(1), _params(1)
    names = tree.flat_leaves(params)
    for mod in MODALITIES:
        assert any(n.startswith(f"modality_layers_{mod}/encoderblock_0/") for n in names)
        assert not any(n.startswith(f"modality_layers_{mod}/encoderblock_1/") for n in names)
    assert {n.split("/")[1] for n in names if n.startswith("Transformer/")} == {
        "encoderblock_0", "encoder_norm"}
    x = _x("audio")
    grads = jax.jit(jax.grad(lambda p: jnp.sum(m.apply({"params": p}, x, modality="audio",
                                                       task="keys")[0] ** 2)))(params)
    for mod in ("image", "video"):
        assert not any(np.any(np.asarray(g)) for g in
                       jax.tree.leaves(grads[f"modality_layers_{mod}"]))
    assert any(np.any(np.asarray(g)) for g in jax.tree.leaves(grads["modality_layers_audio"]))
    groups = polyvit.param_groups(params)
    assert any(n.startswith("modality_layers_audio/") for n in groups["modality:audio"])


# Initialisation from a ViT checkpoint.

LOAD_MODALITIES = {
    "image": {"patch_size": 4, "input_shape": (16, 16, 3)},
    "video1": {"tubelet": (2, 4, 4), "input_shape": (2, 16, 16, 3)},  # T/t = 1
    "video2": {"tubelet": (2, 4, 4), "input_shape": (4, 16, 16, 3)},  # T/t = 2
    "audio": {"patch_size": 8, "input_shape": (16, 16, 1)},  # other patch and channel count
}
LOAD_HEADS = {m: {"modality": m, "num_classes": 5} for m in LOAD_MODALITIES}


@functools.cache
def _vit_checkpoint(tmp_dir):
    m = vit.Model(7, variant="pico/4")
    shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    params = _random_like(shapes, seed=1)
    path = f"{tmp_dir}/vit.npz"
    npz.save_npz(path, params)
    return m, params, path


@pytest.mark.parametrize("k,inflation", [(0, "central"), (0, "average"), (1, "central")])
def test_load_from_vit_static_video_matches_image_model(tmp_path_factory, k, inflation):
    vm, vparams, path = _vit_checkpoint(str(tmp_path_factory.getbasetemp()))
    cfg = dict(variant="pico", modalities=LOAD_MODALITIES, heads=LOAD_HEADS,
               num_modality_layers=k)
    m = polyvit.Model(None, **cfg)
    shapes = jax.eval_shape(functools.partial(m.init, modality="image", task="image"),
                            jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"]
    init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)  # (heads zero-init)
    params = polyvit.load(init, path, cfg, inflation=inflation)
    flat, vflat = tree.flat_leaves(params), tree.flat_leaves(vparams)
    assert isinstance(flat["tokenizer_image/cls"], np.ndarray)
    # Shared encoder and the image tokenizer: copied (the first k blocks -> modality layers).
    for name, v in vflat.items():
        if name.startswith(f"Transformer/encoderblock_{k}/"):
            np.testing.assert_array_equal(
                flat[name.replace(f"encoderblock_{k}", "encoderblock_0")], v)
        if k and name.startswith("Transformer/encoderblock_0/"):
            for mod in LOAD_MODALITIES:
                np.testing.assert_array_equal(
                    flat[name.replace("Transformer", f"modality_layers_{mod}")], v)
    for part in ("embedding/kernel", "embedding/bias", "pos_embedding", "cls"):
        np.testing.assert_array_equal(flat[f"tokenizer_image/{part}"], vflat[part])
    for mod in LOAD_MODALITIES:  # heads are never loaded
        assert not np.any(flat[f"head_{mod}/kernel"])
    # Tubelet inflation (ViViT Sec. 3.4).
    kv = flat["tokenizer_video2/embedding/kernel"]
    if inflation == "central":
        np.testing.assert_array_equal(kv[1], vflat["embedding/kernel"])
        assert not np.any(kv[0])
    else:
        np.testing.assert_allclose(kv, np.stack([vflat["embedding/kernel"] / 2] * 2), rtol=1e-6)
    np.testing.assert_array_equal(flat["tokenizer_video2/pos_embedding"],
                                  np.tile(vflat["pos_embedding"], (1, 2, 1)))
    # Audio: channels summed (3 -> 1), kernel PI-resized 4 -> 8, posemb resized 4x4 -> 2x2.
    assert flat["tokenizer_audio/embedding/kernel"].shape == (8, 8, 1, 32)
    assert flat["tokenizer_audio/pos_embedding"].shape == (1, 4, 32)

    img = _x("image", 2, seed=5, modalities=LOAD_MODALITIES)
    _, want = jax.jit(vm.apply)({"params": vparams}, img)
    _, got = _apply(m, "image", "image")({"params": params}, img)
    np.testing.assert_allclose(got["pre_logits"], want["pre_logits"], atol=1e-5)
    # A static video with one temporal token reproduces the image model exactly.
    _, got = _apply(m, "video1", "video1")({"params": params}, jnp.stack([img, img], axis=1))
    np.testing.assert_allclose(got["pre_logits"], want["pre_logits"], atol=1e-5)
    # T/t = 2: the tokens are the image tokens repeated over time, and so are the outputs.
    patch = {mo.name: mo.patch for mo in m.modalities}
    tok = lambda mod, x: polyvit_model._Tokenizer(mod, patch[mod], x.shape[1:], 32).apply(
        {"params": params[f"tokenizer_{mod}"]}, x)
    video = jnp.stack([img] * 4, axis=1)
    ti, tv = tok("image", img), tok("video2", video)
    np.testing.assert_allclose(tv, jnp.concatenate([ti, ti[:, 1:]], axis=1), atol=1e-5)
    _, got = _apply(m, "video2", "video2")({"params": params}, video)
    np.testing.assert_allclose(got["encoded"][:, 1:17], got["encoded"][:, 17:], atol=1e-5)


def test_load_polyvit_checkpoint_roundtrip_and_errors(tmp_path):
    params = jax.tree.map(np.asarray, _params(1, seed=2))
    path = str(tmp_path / "polyvit.npz")
    npz.save_npz(path, params)
    init = jax.tree.map(np.zeros_like, params)
    cfg = {**CFG, "num_modality_layers": 1}
    out = polyvit.load(init, path, cfg)
    for name, v in tree.flat_leaves(params).items():
        np.testing.assert_array_equal(tree.flat_leaves(out)[name], v)
    out = polyvit.load(init, path, cfg, dont_load=["head_.*"])
    assert not np.any(out["head_vdir"]["kernel"])
    with pytest.raises(ValueError, match="inflation"):
        polyvit.load(init, path, cfg, inflation="middle")
    with pytest.raises(ValueError, match="model_load.foo"):
        polyvit.load(init, path, cfg, foo=1)
    with pytest.raises(ValueError, match="not in model"):  # strict: an extra head
        polyvit.adapt_params({k: v for k, v in init.items() if k != "head_keys"}, params,
                             model_cfg=cfg)
