"""timm / Hugging Face weights in and out (`vitx.utils.timm_hub`, `timm_layout`).

The fixtures in tests/fixtures/timm/ were written by timm 1.0.31 itself
(scripts/make_timm_fixtures.py) with timm's logits on fixed inputs; here vitx reads them
through each model module's `load` (no torch) and must give the same logits.
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from vitx import cli, models
from vitx.utils import checkpoints, timm_cli, timm_hub, timm_layout
from vitx.utils.tree import flat_leaves

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "timm")
#: fixture -> (vitx model_name, extra config.model keys the weights do not say)
CASES = {"vit": ("vit", {}), "vit_gap": ("vit", {}), "vit_gap_cls": ("vit", {}),
         "vit_map": ("vit", {}),
         "flexivit": ("flexivit", {}), "hybrid": ("hybrid", {}),
         "hybrid_r": ("hybrid", {"gn_groups": 4}),
         "vit_reg": ("vit", {}), "vit_reg4_gap_ls": ("vit", {})}


def _fixture(name: str) -> str:
    return os.path.join(FIXTURES, name)


def _model_cfg(name: str) -> tuple[str, dict]:
    _, meta = checkpoints.load_params(_fixture(name))
    h = meta["timm"]["hints"]
    model_name, extra = CASES[name]
    cfg = {k: h[k] for k in ("width", "depth", "mlp_dim", "num_heads", "patch_size",
                             "pool_type", "gelu")}
    cfg.update({k: h[k] for k in ("cls_token", "reg_tokens", "fc_norm", "layer_scale") if k in h})
    if model_name == "flexivit":
        cfg.update(base_patch_size=h["patch_size"], posemb_grid=h["posemb_grid"])
    if model_name == "hybrid":
        cfg.update(resnet_blocks=h["resnet_blocks"], resnet_width=h["resnet_width"])
    return model_name, {**cfg, **extra, "num_classes": h["num_classes"]}


def _vitx_logits(folder: str, model_name: str, cfg: dict, image: np.ndarray,
                 **load_kw) -> np.ndarray:
    """vitx's logits of checkpoint `folder` loaded by the model module's `load` into a model
    initialised (shapes only) at `image`'s size."""
    cfg = dict(cfg)
    module = models.get_model_module(model_name)
    model = module.Model(cfg.pop("num_classes"), **cfg)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), image)["params"]
    init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    params = module.load(init, folder, cfg, **load_kw)
    return np.asarray(jax.jit(model.apply)({"params": params}, image)[0])


@pytest.mark.parametrize("name,which", [(n, "") for n in sorted(CASES)] + [
    (n, "_other") for n in ("vit", "flexivit", "hybrid", "vit_reg", "vit_reg4_gap_ls")])
def test_logits_match_timm(name: str, which: str) -> None:
    """timm -> vitx: max |logits diff| <= 1e-4 at timm's resolution (every family and pool
    type) and at another one (posemb resized bilinearly on both sides; one per family)."""
    model_name, cfg = _model_cfg(name)
    expected = load_file(os.path.join(_fixture(name), "expected.safetensors"))
    got = _vitx_logits(_fixture(name), model_name, cfg, expected["image" + which])
    assert got.shape == expected["logits" + which].shape
    assert np.max(np.abs(got - expected["logits" + which])) <= 1e-4


def test_tanh_gelu_gives_other_logits() -> None:
    """The activation matters: timm's weights with the tanh GELU miss timm's logits."""
    _, cfg = _model_cfg("vit")
    assert cfg["gelu"] == "exact"
    expected = load_file(os.path.join(_fixture("vit"), "expected.safetensors"))
    got = _vitx_logits(_fixture("vit"), "vit", {**cfg, "gelu": "tanh"}, expected["image"])
    assert np.max(np.abs(got - expected["logits"])) > 1e-5


@pytest.mark.parametrize("name", ["vit", "vit_gap", "vit_map", "flexivit", "hybrid", "vit_reg",
                                  "vit_reg4_gap_ls"])
def test_export_round_trip(name: str, tmp_path) -> None:
    """vitx -> timm hub folder -> vitx gives back the same params, and the config.json names
    an architecture and model_args timm builds (act_layer only for the tanh GELU)."""
    params, meta = checkpoints.load_params(_fixture(name))
    out = str(tmp_path / "hub")
    arch = timm_cli.export_checkpoint(_fixture(name), params, meta, out)
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["architecture"] == arch and cfg["num_classes"] == 5
    assert cfg["model_args"]["no_embed_class"] is True and "act_layer" not in cfg["model_args"]
    again, meta2 = checkpoints.load_params(out)
    a, b = flat_leaves(params), flat_leaves(again)
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert meta2["timm"]["hints"]["gelu"] == "exact"


def test_tanh_model_exports_gelu_tanh_and_hints(tmp_path) -> None:
    params, _ = checkpoints.load_params(_fixture("vit"))
    out = str(tmp_path / "hub")
    timm_hub.export(params, out, model_name="vit", model={"gelu": "tanh"})
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["model_args"]["act_layer"] == "gelu_tanh"
    assert cfg["pretrained_cfg"]["input_size"] == [3, 16, 16]
    assert timm_hub.init_hints(out) == {"gelu": "tanh"}
    config = {"model_name": "vit", "model_init": _fixture("vit"), "model": {"width": 16}}
    assert timm_hub.apply_init_hints(config) == {"gelu": "exact"}
    assert config["model"]["gelu"] == "exact"
    config = {"model_name": "vit", "model_init": _fixture("vit"), "model": {"gelu": "tanh"}}
    assert timm_hub.apply_init_hints(config) == {} and config["model"]["gelu"] == "tanh"


def test_info_and_pp_string(capsys) -> None:
    assert cli.main(["info", _fixture("vit")]) == 0
    out = capsys.readouterr().out
    assert "vit_tiny_patch16_224" in out and "parameters: " in out
    assert "resize_small(17, method='bicubic')|central_crop(16)|value_range(-1, 1)" in out
    pp = timm_hub.pp_from_pretrained_cfg({"input_size": [3, 224, 224], "crop_pct": 0.875,
                                          "interpolation": "bilinear", "mean": [0.485, 0.456,
                                                                                0.406],
                                          "std": [0.229, 0.224, 0.225]})
    assert pp.startswith("decode|resize_small(256, method='bilinear')|central_crop(224)|")
    assert "vgg_value_range(mean=(123.675, 116.28, 103.53)" in pp


def _copy(name: str, tmp_path) -> str:
    dst = str(tmp_path / name)
    shutil.copytree(_fixture(name), dst)
    return dst


def test_bad_files_one_line_naming_file(tmp_path) -> None:
    """A foreign or damaged file: one line naming the file (and keys) and the fix."""
    other = str(tmp_path / "resnet.safetensors")
    save_file({"conv1.weight": np.zeros((4, 3, 3, 3), np.float32)}, other)
    with pytest.raises(ValueError, match=r"resnet.safetensors: not a timm ViT state dict "
                                         r"\(keys \['conv1.weight'\]"):
        checkpoints.load_params(other)
    broken = _copy("vit", tmp_path)
    weights = os.path.join(broken, "model.safetensors")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    with pytest.raises(ValueError, match=r"model.safetensors: not a readable safetensors file"):
        checkpoints.load_params(broken)
    for arch, what in (("convnext_tiny", "is not one vitx maps"),
                       ("coatnet_0_rw_224", "timm's CoAtNets are MaxxViT-style")):
        folder = _copy("vit", tmp_path / arch)
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump({"architecture": arch}, f)
        with pytest.raises(ValueError, match=f"config.json: architecture '{arch}'.*{what}"):
            checkpoints.load_params(folder)
    dist = str(tmp_path / "dist.safetensors")
    sd = load_file(os.path.join(_fixture("vit"), "model.safetensors"))
    save_file({**sd, "dist_token": np.zeros((1, 1, 16), np.float32)}, dist)
    with pytest.raises(ValueError, match=r"a distillation token \(\['dist_token'\]\)"):
        checkpoints.load_params(dist)
    bn = str(tmp_path / "resnet50d_hybrid.safetensors")
    save_file({**sd, "patch_embed.backbone.conv1.0.weight": np.zeros((4, 3, 3, 3), np.float32)},
              bn)
    with pytest.raises(ValueError, match=r"resnet50d_hybrid.safetensors: hybrid backbone "
                                         r"\['patch_embed.backbone.conv1.0.weight'\]"):
        checkpoints.load_params(bn)


def test_mismatched_shapes_name_the_keys() -> None:
    _, cfg = _model_cfg("vit")
    image = np.zeros((1, 16, 16, 3), np.float32)
    with pytest.raises(ValueError, match="MlpBlock_0/Dense_0"):
        _vitx_logits(_fixture("vit"), "vit", {**cfg, "mlp_dim": 48}, image)


def test_cli_errors_leave_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "hub"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert cli.main(["export", "--checkpoint", _fixture("vit"), "--layout", "timm",
                     "--output", str(out)]) == 2
    assert os.listdir(out) == ["keep.txt"]
    assert "exists and is not an empty folder" in capsys.readouterr().err
    broken = str(tmp_path / "x.safetensors")
    with open(broken, "wb") as f:
        f.write(b"\x10\x00garbage")
    assert cli.main(["info", broken]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "x.safetensors: not a readable safetensors file" in err


def test_layout_inverse_on_scanned_params() -> None:
    """to_timm(from_timm(sd)) == sd, from scanned params too; the class posemb slot is folded
    into cls_token (exact) and not written (no_embed_class=True)."""
    from vitx.utils import npz

    params, _ = checkpoints.load_params(_fixture("vit"))
    sd = timm_layout.to_timm(npz.stack_blocks(params))
    ref = load_file(os.path.join(_fixture("vit"), "model.safetensors"))
    assert sd.keys() == ref.keys()
    for k in ref.keys() - {"pos_embed", "cls_token"}:
        np.testing.assert_array_equal(sd[k], ref[k], err_msg=k)
    np.testing.assert_array_equal(sd["pos_embed"], ref["pos_embed"][:, 1:])
    np.testing.assert_allclose(sd["cls_token"], ref["cls_token"] + ref["pos_embed"][:, :1])


#: timm kwargs -> the vitx config.model keys of the same model (both-ways test below)
EXTRAS = {"plain": ({}, {}),
          "reg_ls_fcnorm": (dict(reg_tokens=2, init_values=0.1, global_pool="avg", fc_norm=True),
                            dict(reg_tokens=2, layer_scale=0.1, pool_type="gap", cls_token=True,
                                 fc_norm=True))}


@pytest.mark.parametrize("extra", sorted(EXTRAS))
def test_timm_itself_both_ways(tmp_path, extra: str) -> None:
    """Where timm is installed: a model timm makes loads into vitx, and vitx's export loads
    into timm (`create_model("local-dir:...")`), logits within 1e-4 both ways; also with
    register tokens, layer scale and fc_norm (their params perturbed off their inits)."""
    timm = pytest.importorskip("timm")
    torch = pytest.importorskip("torch")
    timm_kw, vitx_kw = EXTRAS[extra]
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, embed_dim=16, depth=1,
                              num_heads=2, img_size=16, patch_size=4, num_classes=3,
                              **timm_kw).eval()
    if timm_kw:
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.25 * torch.randn(p.shape, generator=g))
    folder = str(tmp_path / "timm")
    timm.models.save_for_hf(model, folder, safe_serialization=True)
    x = np.random.RandomState(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)

    def timm_logits(m) -> np.ndarray:
        with torch.no_grad():
            return m(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()

    cfg = dict(width=16, depth=1, mlp_dim=64, num_heads=2, patch_size=4, num_classes=3,
               **vitx_kw)
    got = _vitx_logits(folder, "vit", {**cfg, "gelu": "exact"}, x)
    assert np.max(np.abs(got - timm_logits(model))) <= 1e-4
    params, _ = checkpoints.load_params(folder)
    out = str(tmp_path / "export")
    timm_hub.export(params, out, model_name="vit", model={"gelu": "tanh", **vitx_kw})
    back = timm.create_model("local-dir:" + out, pretrained=True).eval()
    got = _vitx_logits(out, "vit", {**cfg, "gelu": "tanh"}, x)
    assert np.max(np.abs(got - timm_logits(back))) <= 1e-4


def test_polyvit_from_timm_vit() -> None:
    """PolyViT initialised from a timm ViT by its ViT surgery: the image tokenizer and the
    shared encoder hold the timm weights (as vit's `load` maps them), heads are new."""
    params, _ = checkpoints.load_params(_fixture("vit"))
    module = models.get_model_module("polyvit")
    cfg = dict(variant=None, width=16, depth=2, mlp_dim=32, num_heads=2, gelu="exact",
               modalities={"image": {"patch_size": 4, "input_shape": (16, 16, 3)}},
               heads={"digits": {"modality": "image", "num_classes": 10}})
    model = module.Model(10, **cfg)
    x = np.zeros((1, 16, 16, 3), np.float32)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)["params"]
    init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    loaded = flat_leaves(module.load(init, _fixture("vit"), cfg))
    vit = flat_leaves(params)
    for k, v in vit.items():
        if k.startswith("Transformer/"):
            np.testing.assert_array_equal(loaded[k], v, err_msg=k)
    for k in ("embedding/kernel", "cls", "pos_embedding"):
        np.testing.assert_allclose(loaded[f"tokenizer_image/{k}"], vit[k], err_msg=k)
    assert not np.any(loaded["head_digits/kernel"])


def test_registers_fc_norm_layer_scale_params_and_aux() -> None:
    """The timm extras land where vit_tokens puts them: registers (with timm's class-slot
    posemb folded in), fc_norm instead of encoder_norm, LayerScale_{0,1} per block; the
    registers are dropped before pooling and from aux "encoded" / "token_map"."""
    params, meta = checkpoints.load_params(_fixture("vit_reg4_gap_ls"))
    flat = flat_leaves(params)
    sd = load_file(os.path.join(_fixture("vit_reg4_gap_ls"), "model.safetensors"))
    np.testing.assert_array_equal(flat["registers"], sd["reg_token"])
    np.testing.assert_array_equal(flat["fc_norm/scale"], sd["fc_norm.weight"])
    np.testing.assert_array_equal(flat["Transformer/encoderblock_1/LayerScale_1/scale"],
                                  sd["blocks.1.ls2.gamma"])
    assert "Transformer/encoder_norm/scale" not in flat and "cls" not in flat
    h = meta["timm"]["hints"]
    assert (h["reg_tokens"], h["fc_norm"], h["layer_scale"], h["pool_type"]) == (4, True, 0.1,
                                                                                 "gap")
    reg, _ = checkpoints.load_params(_fixture("vit_reg"))
    sd = load_file(os.path.join(_fixture("vit_reg"), "model.safetensors"))
    np.testing.assert_allclose(reg["registers"], sd["reg_token"] + sd["pos_embed"][:, 1:3])
    np.testing.assert_array_equal(reg["pos_embedding"], sd["pos_embed"][:, 3:])
    model_name, cfg = _model_cfg("vit_reg")
    model = models.get_model_module(model_name).Model(cfg.pop("num_classes"), **cfg)
    x = load_file(os.path.join(_fixture("vit_reg"), "expected.safetensors"))["image"]
    _, aux = model.apply({"params": reg}, x)
    assert aux["encoded"].shape == (2, 1 + 16, 16) and aux["registers"].shape == (2, 2, 16)
    assert aux["token_map"].shape == (2, 4, 4, 16)
    np.testing.assert_array_equal(aux["token_map"].reshape(2, 16, 16), aux["encoded"][:, 1:])


def test_bfloat16_weights_upcast(tmp_path, capsys) -> None:
    """A bf16 model.safetensors loads as float32 params, logits within a bf16-sized tolerance
    of timm's float32 ones, and `vitx info` names the stored dtype."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    folder = _copy("vit", tmp_path)
    weights = os.path.join(folder, "model.safetensors")
    sd = load_file(weights)
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in sd.items()}, weights)
    params, meta = checkpoints.load_params(folder)
    assert meta["timm"]["dtypes"] == ["bfloat16"]
    assert {str(v.dtype) for v in flat_leaves(params).values()} == {"float32"}
    _, cfg = _model_cfg("vit")
    expected = load_file(os.path.join(folder, "expected.safetensors"))
    got = _vitx_logits(folder, "vit", cfg, expected["image"])
    diff = np.max(np.abs(got - expected["logits"]))
    assert 1e-6 < diff <= 0.05 * np.max(np.abs(expected["logits"]))  # bf16: 8 mantissa bits
    assert cli.main(["info", folder]) == 0
    assert "dtype: bfloat16 (upcast to float32)" in capsys.readouterr().out


def test_init_hints_read_the_extras_from_the_header() -> None:
    """A timm model_init with registers / fc_norm / layer scale sets those model keys (unset
    ones only; not for polyvit, whose model lacks them)."""
    assert timm_hub.init_hints(_fixture("vit_reg4_gap_ls")) == {
        "gelu": "exact", "reg_tokens": 4, "fc_norm": True, "layer_scale": 0.1}
    config = {"model_name": "vit", "model_init": _fixture("vit_reg"), "model": {}}
    assert timm_hub.apply_init_hints(config) == {"gelu": "exact", "reg_tokens": 2}
    config = {"model_name": "polyvit", "model_init": _fixture("vit_reg"), "model": {}}
    assert timm_hub.apply_init_hints(config) == {"gelu": "exact"}
