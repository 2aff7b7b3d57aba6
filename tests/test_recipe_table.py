"""configs/vit_digits_augreg.py, configs/vit_digits_fewshot.py and scripts/recipe_table.py:
each ablation row turns exactly one part of the recipe off; the few-shot modes share one model."""

from __future__ import annotations

import importlib.util
import json
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
                ema=EmaConfig.from_config(c) is not None,
                eval_crop="central_crop(" in c.evals.test.pp)


@pytest.fixture(autouse=True)
def _root(monkeypatch):
    monkeypatch.chdir(ROOT)


def test_each_ablation_row_turns_off_only_its_part():
    configs = {row: config_lib.load_config(spec + "seed=2")
               for row, (spec, _, _) in rt.ABLATION.items()}
    recipe, baseline = configs["recipe"], configs["baseline"]
    assert _parts(recipe) == dict(randaug=False, mixup=True, drop_path=True, ema=True,
                                  eval_crop=True)
    assert not any(_parts(baseline).values())
    # the recipe is the baseline plus its parts: the same crop, steps and model; its eval crop
    # is the baseline's eval pp with the train-time scale (resize to 36, central 32x32)
    assert recipe.input.pp == baseline.input.pp
    assert recipe.total_steps == baseline.total_steps and recipe.model.width == baseline.model.width
    assert configs["-eval_crop"].evals.test.pp == baseline.evals.test.pp
    assert recipe.evals.test.pp.replace("|resize(36)|central_crop(32)|", "|resize(32)|") == (
        baseline.evals.test.pp)
    for row, part in (("+randaug", "randaug"), ("-mixup/cutmix", "mixup"),
                      ("-drop_path", "drop_path"), ("-EMA", "ema"), ("-eval_crop", "eval_crop")):
        c = configs[row]
        assert _parts(c) == {**_parts(recipe), part: not _parts(recipe)[part]}, row
        assert c.total_steps == recipe.total_steps and c.model.width == recipe.model.width
    assert _parts(configs["baseline+eval_crop"]) == {**_parts(baseline), "eval_crop": True}
    assert [op for op in configs["+randaug"].input.pp.split("|")
            if not op.startswith("randaug(")] == recipe.input.pp.split("|")
    assert all(c.seed == 2 for c in configs.values())
    # a row that evaluates another row's run trains exactly as that row
    for row, (_, _, shared) in rt.ABLATION.items():
        if shared:
            assert rt.ABLATION[shared][2] is None, row
            assert rt._training(configs[row]) == rt._training(configs[shared]), row
    assert rt._training(configs["-mixup/cutmix"]) != rt._training(recipe)  # _training can fail
    # the EMA rows report the EMA weights, the others the raw weights
    assert {row for row, (_, m, _) in rt.ABLATION.items() if m.startswith("test_ema/")} == {
        row for row, c in configs.items() if _parts(c)["ema"]}
    assert len({rt.workdir("recipe", row, 0) for row in rt.ABLATION}) == len(rt.ABLATION)


def test_rows_read_their_eval_and_their_runs_train_time(tmp_path, monkeypatch):
    """`-EMA` reads its own `eval.json` with the recipe run's train time; a run trained with
    another config than its row's is an error; rows whose shared run is left out of `--rows`
    are an error."""
    monkeypatch.chdir(ROOT)
    configs = {row: config_lib.load_config(f"{spec}seed=0")
               for row, (spec, _, _) in rt.ABLATION.items()}
    monkeypatch.chdir(tmp_path)
    recipe, no_ema = rt.workdir("recipe", "recipe", 0), rt.workdir("recipe", "-EMA", 0)
    for wd, name, res in ((recipe, "results.json", {"test/accuracy": 0.5, "train_seconds": 7}),
                          (recipe, "config.json", json.loads(config_lib.to_json(
                              configs["-mixup/cutmix"]))),
                          (no_ema, "eval.json", {"test/accuracy": 0.25})):
        os.makedirs(wd, exist_ok=True)
        with open(os.path.join(wd, name), "w") as f:
            json.dump(res, f)
    assert rt._row_results("-EMA", 0) == {"test/accuracy": 0.25, "train_seconds": 7}
    assert rt._row_results("-EMA", 1) is None
    monkeypatch.chdir(ROOT)  # the configs load from the repo
    for row in ("recipe", "-EMA"):
        with pytest.raises(SystemExit, match="trained with another config"):
            _check_in(tmp_path, row)
    with open(tmp_path / recipe / "config.json", "w") as f:
        f.write(config_lib.to_json(configs["-eval_crop"]))
    _check_in(tmp_path, "-EMA")  # the same training: no error
    with pytest.raises(SystemExit, match="recipe must be included"):
        rt.ablation("vitx", 1, ["-EMA"], run=False)


def _check_in(folder, row: str) -> None:
    """`rt._check_trained_as(row, 0)` on the workdirs under `folder` (configs from the repo)."""
    wd = rt.workdir
    try:
        rt.workdir = lambda *a: os.path.join(str(folder), wd(*a))
        rt._check_trained_as(row, 0)
    finally:
        rt.workdir = wd


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
