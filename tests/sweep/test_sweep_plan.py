"""`vitx sweep`'s plan (vitx/sweep/plan.py): grids from `--sweep` and `get_hyper`, and the
one-line errors of bad plans."""

from __future__ import annotations

import os
import textwrap

import pytest

from vitx import config as config_lib
from vitx import sweep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(REPO, "configs", "vit_digits.py")


def test_plan_grid_from_sweeps_and_from_get_hyper(tmp_path):
    plan = sweep.make_plan(config=CONFIG, sweeps=["config.lr=[1e-3,3e-4]", "config.wd=[0.0,0.1]"])
    assert plan.kind == "grid" and plan.direction == "maximize"
    assert plan.names == ["lr=0.001,wd=0", "lr=0.001,wd=0.1", "lr=0.0003,wd=0",
                          "lr=0.0003,wd=0.1"]
    cfg = tmp_path / "with_hyper.py"
    cfg.write_text(textwrap.dedent(f"""
        import importlib.util
        spec = importlib.util.spec_from_file_location("base", {CONFIG!r})
        base = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(base)
        get_config = base.get_config

        def get_hyper(h):
            return h.zip([h.sweep("config.lr", [1e-3, 3e-4]), h.sweep("config.seed", [0, 1])])
    """))
    plan = sweep.make_plan(config=f"{cfg}:quick", sweeps=[], metric="test/loss")
    assert plan.points == [{"lr": 1e-3, "seed": 0}, {"lr": 3e-4, "seed": 1}]
    assert plan.direction == "minimize"  # inferred from the metric's name


@pytest.mark.parametrize("kw, match", [
    (dict(sweeps=["config.lrr=[1,2]"]), "unknown config key 'lrr'.*did you mean 'lr'"),
    (dict(sweeps=["config.lr=loguniform(1e-4,1e-2)"]), "add --search random"),
    (dict(sweeps=["config.lr=loguniform(1e-4,1e-2)"], search="tpe"), "needs --trials"),
    (dict(sweeps=["config.lr=[1,2]"], overrides=["lr=0.1"]), "both swept .* and fixed"),
    (dict(sweeps=["config.lr=[1,2]", "lr=[3]"]), "swept twice"),
    (dict(sweeps=[]), "nothing to sweep"),
    (dict(sweeps=["config.model.depth=['deep']"]), "model.depth"),
])
def test_bad_plans(kw, match):
    with pytest.raises(config_lib.ConfigError, match=match) as e:  # SweepError is one too
        sweep.make_plan(config=CONFIG, **kw)
    assert "\n" not in str(e.value)
