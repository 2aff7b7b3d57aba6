"""`vitx sweep`'s grid language (vitx/sweep/grid.py): `h.sweep / product / zip / chain`,
`--sweep` lists and ranges, trial names."""

from __future__ import annotations

import optuna.distributions as od
import pytest

from vitx import sweep
from vitx.sweep import Hyper as h

# ------------------------------------------------------------------------------------------------
# Grids and ranges.


def test_hyper_product_zip_chain_fixed():
    grid = h.product([h.sweep("config.lr", [1e-3, 3e-4]),
                      h.zip([h.sweep("config.wd", [0.0, 0.1]), h.sweep("config.seed", [0, 1])])])
    assert grid == [{"config.lr": 1e-3, "config.wd": 0.0, "config.seed": 0},
                    {"config.lr": 1e-3, "config.wd": 0.1, "config.seed": 1},
                    {"config.lr": 3e-4, "config.wd": 0.0, "config.seed": 0},
                    {"config.lr": 3e-4, "config.wd": 0.1, "config.seed": 1}]
    assert h.product(h.sweep("a", [1, 2]), h.sweep("b", ["x"])) == [{"a": 1, "b": "x"},
                                                                     {"a": 2, "b": "x"}]
    assert h.zip(h.sweep("a", [1, 2]), h.fixed("b", 5, length=2)) == [{"a": 1, "b": 5},
                                                                       {"a": 2, "b": 5}]
    assert h.chain([h.sweep("a", [1]), h.sweep("b", [2])]) == [{"a": 1}, {"b": 2}]
    with pytest.raises(sweep.SweepError, match="equal lengths"):
        h.zip(h.sweep("a", [1, 2]), h.sweep("b", [1]))
    with pytest.raises(sweep.SweepError, match="swept twice"):
        h.product(h.sweep("a", [1, 2]), h.sweep("a", [3]))
    with pytest.raises(sweep.SweepError, match="no values"):
        h.sweep("a", [])


@pytest.mark.parametrize("text, key, values", [
    ("config.lr=[1e-3,3e-4]", "lr", [1e-3, 3e-4]),
    ("lr=[0.001]", "lr", [0.001]),
    ("config.model.variant=[S/16, mu/8]", "model.variant", ["S/16", "mu/8"]),
    ("config.input.pp=['a,b', 'c']", "input.pp", ["a,b", "c"]),
    ("config.mesh=[[('data', -1)], [('data', 1)]]", "mesh", [[("data", -1)], [("data", 1)]]),
    ("config.model.scan=[True,false]", "model.scan", [True, False]),
])
def test_parse_grid_lists(text, key, values):
    assert sweep.parse_sweep(text) == (key, values)


@pytest.mark.parametrize("text, dist", [
    ("config.lr=loguniform(1e-4,1e-2)", od.FloatDistribution(1e-4, 1e-2, log=True)),
    ("config.wd=uniform(0, 0.3)", od.FloatDistribution(0.0, 0.3)),
    ("config.model.depth=int(2,8)", od.IntDistribution(2, 8)),
    ("config.input.batch_size=logint(16,256)", od.IntDistribution(16, 256, log=True)),
    ("config.optax_name=choice(adamw, sgd)", od.CategoricalDistribution(("adamw", "sgd"))),
    ("config.wd=choice(0.0, 0.1)", od.CategoricalDistribution((0.0, 0.1))),
])
def test_parse_ranges_to_optuna_distributions(text, dist):
    assert sweep.parse_sweep(text)[1] == dist


@pytest.mark.parametrize("text, match", [
    ("config.lr", "expected KEY="),
    ("config.lr=0.1", "neither a list"),
    ("config.lr=normal(0,1)", "unknown range 'normal'"),
    ("config.lr=loguniform(0,1)", "low > 0"),
    ("config.lr=uniform(1,1)", "low < high"),
    ("config.depth=int(1.5,4)", "two ints"),
    ("config.lr=uniform(1)", "two numbers"),
    ("config.lr=[]", "empty"),
    ("config.mesh=choice([1],[2])", "choice"),
])
def test_bad_sweep_arguments_are_one_line_errors(text, match):
    with pytest.raises(sweep.SweepError, match=match) as e:
        sweep.parse_sweep(text)
    assert "\n" not in str(e.value) and "--sweep" in str(e.value)


def test_trial_names_are_filesystem_safe():
    assert sweep.trial_name({"lr": 1e-3, "wd": 0.1}) == "lr=0.001,wd=0.1"
    assert sweep.trial_name({"lr": 3e-4, "wd": 0.0}) == "lr=0.0003,wd=0"
    name = sweep.trial_name({"model.variant": "S/16", "input.pp": "resize(32)|x y"})
    assert name == "model.variant=S_16,input.pp=resize_32__x_y"
    long = sweep.trial_name({"k": "v" * 300})
    assert len(long) <= 100 and long != sweep.trial_name({"k": "v" * 301})
