"""configs/vit_digits_augreg.py, configs/vit_digits_fewshot.py and scripts/recipe_table.py:
each ablation row turns exactly one part of the recipe off; the few-shot modes share one model."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from vitx import config as config_lib
from vitx.train.ema import EmaConfig
from vitx.train.mixup import MixupConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _script():
    spec = importlib.util.spec_from_file_location(
        "recipe_table", os.path.join(ROOT, "scripts", "recipe_table.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rt = _script()


def _parts(c) -> dict:
    """What the ablation toggles, read the way the trainer reads it."""
    return dict(randaug="randaug(" in c.input.pp,
                mixup=MixupConfig.from_config(c) is not None,
                drop_path=c.model.get("drop_path", 0.0) > 0,
                ema=EmaConfig.from_config(c) is not None)


@pytest.fixture(autouse=True)
def _root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_each_ablation_row_turns_off_only_its_part():
    configs = {row: config_lib.load_config(spec + "seed=2")
               for row, (spec, _) in rt.ABLATION.items()}
    recipe = configs["recipe"]
    assert all(_parts(recipe).values())
    # the recipe is the baseline plus the four parts: the same crop, steps and model
    baseline = configs["baseline"]
    strip = recipe.input.pp.split("|")
    assert [op for op in strip if not op.startswith("randaug(")] == baseline.input.pp.split("|")
    assert recipe.total_steps == baseline.total_steps and recipe.model.width == baseline.model.width
    for row, part in (("-randaug", "randaug"), ("-mixup/cutmix", "mixup"),
                      ("-drop_path", "drop_path"), ("-EMA", "ema")):
        c = configs[row]
        assert _parts(c) == {**_parts(recipe), part: False}, row
        assert c.total_steps == recipe.total_steps and c.model.width == recipe.model.width
    assert not any(_parts(configs["baseline"]).values())
    assert all(c.seed == 2 for c in configs.values())
    # the EMA rows report the EMA weights, the others the raw weights
    assert {row for row, (_, m) in rt.ABLATION.items() if m.startswith("test_ema/")} == {
        row for row, c in configs.items() if _parts(c)["ema"]}
    assert len({rt.workdir("recipe", row, 0) for row in rt.ABLATION}) == len(rt.ABLATION)


def test_fewshot_modes_share_the_model_and_split_the_labels():
    pre = config_lib.load_config(f"{rt.FEWSHOT}:pretrain04")
    rand = config_lib.load_config(f"{rt.FEWSHOT}:random_init")
    ev = config_lib.load_config(f"{rt.FEWSHOT}:eval59")
    assert pre.input.label_subset == [0, 1, 2, 3, 4]
    assert rand.lr == 0.0 and rand.total_steps == 1  # the checkpoint is the initialisation
    assert pre.model.to_dict() == rand.model.to_dict() == ev.model.to_dict()
    assert pre.num_classes == rand.num_classes == ev.num_classes == 5
    (fs,) = ev.evals.values()
    assert fs.type == "fewshot_linear" and tuple(fs.shots) == rt.SHOTS
    assert list(fs.label_subset) == [5, 6, 7, 8, 9]


def test_jobs_pin_each_run_to_one_core(tmp_path):
    cores = sorted(os.sched_getaffinity(0))
    jobs = min(2, len(cores))
    outs = [tmp_path / f"run{i}.txt" for i in range(3)]
    cmds = [[sys.executable, "-c", "import os, sys; open(sys.argv[1], 'w').write("
             "str(sorted(os.sched_getaffinity(0))))", str(o)] for o in outs]
    rt._run_all(cmds, jobs)
    pinned = [eval(o.read_text()) for o in outs]
    assert all(len(p) == 1 and p[0] in cores[:jobs] for p in pinned), pinned
    with pytest.raises(SystemExit, match="--jobs"):
        rt._run_all(cmds, len(cores) + 1)
