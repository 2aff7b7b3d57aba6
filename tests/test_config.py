"""Config loading, overrides, validation: a bad input gives a one-line error naming the key."""

import subprocess
import sys

import pytest

from vitx import config as config_lib
from vitx.config import ConfigError

CFG = "configs/vit_digits.py"


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_load_and_override():
    c = config_lib.load_config(CFG)
    config_lib.apply_overrides(c, ["lr=0.01", "model.variant=S/16", "input.batch_size=64",
                                   "model.remat_policy=nothing_saveable", "total_steps=7"])
    assert c.lr == 0.01 and c.model.variant == "S/16" and c.input.batch_size == 64
    assert c.model.remat_policy == "nothing_saveable" and c.total_steps == 7
    quick = config_lib.load_config(CFG + ":quick")
    assert quick.total_steps < c.total_steps or quick.total_steps == 60


def test_int_to_float_override():
    c = config_lib.load_config(CFG)
    config_lib.apply_overrides(c, ["lr=1"])
    assert isinstance(c.lr, float) and c.lr == 1.0


def test_unknown_key_names_key_and_suggests():
    c = config_lib.load_config(CFG)
    with pytest.raises(ConfigError) as e:
        config_lib.apply_overrides(c, ["model.widht=3"])
    msg = one_line(e)
    assert "'model.widht'" in msg and "did you mean 'width'" in msg
    with pytest.raises(ConfigError, match="unknown config key 'nosuch.key'"):
        config_lib.apply_overrides(c, ["nosuch.key=3"])


def test_wrong_type_names_key():
    c = config_lib.load_config(CFG)
    with pytest.raises(ConfigError) as e:
        config_lib.apply_overrides(c, ["input.batch_size=abc"])
    assert "'input.batch_size'" in one_line(e)


def test_missing_file():
    with pytest.raises(ConfigError, match="no such file"):
        config_lib.load_config("configs/nope.py")


def test_unknown_model_name():
    from vitx import models

    with pytest.raises(ValueError, match="model_name='resnet9000' does not exist"):
        models.get_model_module("resnet9000")


def test_batch_not_divisible_by_devices():
    c = config_lib.load_config(CFG)
    c.input.batch_size = 30
    with pytest.raises(ConfigError) as e:
        config_lib.validate(c, num_devices=8)
    assert "input.batch_size=30" in one_line(e) and "multiple of 8" in one_line(e)
    c.input.batch_size = 32
    config_lib.validate(c, num_devices=8)  # and eval batch size 120 is divisible by 8


def test_grad_accum_must_divide_batch():
    c = config_lib.load_config(CFG)
    c.grad_accum_steps = 3
    with pytest.raises(ConfigError, match="grad_accum_steps=3"):
        config_lib.validate(c, num_devices=1)


def test_patch_size_not_dividing_image():
    from vitx.models import vit

    c = config_lib.load_config(CFG)
    c.model.variant = "mu/5"
    with pytest.raises(ValueError) as e:
        vit.check_input(c.model, (32, 32, 1))
    msg = one_line(e)
    assert "model.variant='mu/5'" in msg and "32x32" in msg and "[1, 2, 4, 8, 16, 32]" in msg
    c.model.variant = "mu/8"
    vit.check_input(c.model, (32, 32, 1))


def test_config_arguments_parse_and_unknown_ones_are_errors():
    c = config_lib.load_config(CFG + ":variant=pico/8,steps=200,quick")
    assert c.model.variant == "pico/8" and c.total_steps == 60  # quick wins over steps
    c = config_lib.load_config(CFG + ":steps=200")
    assert c.total_steps == 200 and c.model.variant == "mu/8"
    with pytest.raises(ConfigError) as e:
        config_lib.load_config(CFG + ":stpes=3")
    msg = one_line(e)
    assert "'stpes=3' is unknown" in msg and "steps=1000" in msg and "quick=False" in msg
    with pytest.raises(ConfigError, match="steps='x' is not a int"):
        config_lib.load_config(CFG + ":steps=x")
    ft = config_lib.load_config("configs/transfer_digits.py:finetune32")
    assert ft.total_steps == 200
    with pytest.raises(ConfigError, match="'finetune33' is unknown; use one of pretrain16"):
        config_lib.load_config("configs/transfer_digits.py:finetune33")


def test_parse_arg_types():
    a = config_lib.parse_arg("lr=0.5,n=3,flag,name=x", lr=1.0, n=1, flag=False, name="y",
                             sizes=(1, 2))
    assert (a.lr, a.n, a.flag, a.name, a.sizes) == (0.5, 3, True, "x", (1, 2))
    assert config_lib.parse_arg("flag=false", flag=True).flag is False
    assert config_lib.parse_arg(None, n=1).n == 1


def test_split_argv_forms():
    rest, ov = config_lib.split_argv(["train", "--config", "x.py", "--config.a=1",
                                      "--config.b", "2", "--workdir", "w"])
    assert rest == ["train", "--config", "x.py", "--workdir", "w"]
    assert ov == ["a=1", "b=2"]


def test_cli_prints_one_line_error_and_exit_code(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "vitx.cli", "train", "--config", CFG, "--workdir",
         str(tmp_path / "w"), "--config.modle.variant=S/16"],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    err = [line for line in out.stderr.splitlines() if line.startswith("vitx: error:")]
    assert len(err) == 1 and "'modle.variant'" in err[0] and "did you mean 'model'" in err[0]
    assert not (tmp_path / "w").exists()  # nothing written by a failed start


def test_total_epochs_resolves_to_steps():
    from vitx.train.trainer import total_steps_of

    c = config_lib.load_config(CFG)
    assert total_steps_of(c, 1437) == c.total_steps
    c.total_steps = None
    c.total_epochs = 2.0
    assert total_steps_of(c, 1437) == 2 * 1437 // c.input.batch_size  # 22 steps of 128
    c.total_epochs = None
    with pytest.raises(ConfigError, match="set total_steps or total_epochs"):
        total_steps_of(c, 1437)
