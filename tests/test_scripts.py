"""scripts/seeds_table.py: every table's commands load as configs, in dependency order."""

from __future__ import annotations

import importlib.util
import os
import sys

import pytest

from vitx import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _seeds_table():
    spec = importlib.util.spec_from_file_location(
        "seeds_table", os.path.join(ROOT, "scripts", "seeds_table.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["seeds_table"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


st = _seeds_table()


@pytest.mark.parametrize("table", sorted(st.TABLES))
def test_every_row_command_is_a_valid_config_and_builds_on_earlier_rows(table, monkeypatch):
    monkeypatch.chdir(ROOT)
    seen: list[str] = []
    for row in st.rows_of(table):
        cmd = st.command("vitx", table, row, seed=2)
        config = config_lib.load_config(cmd[cmd.index("--config") + 1])
        config_lib.apply_overrides(config, [c.removeprefix("--config.") for c in cmd
                                            if c.startswith("--config.")])
        assert config.seed == 2, (row, cmd)  # the seed reaches the config, either way
        for dep in (row.init, row.teacher, row.eval_of):
            if dep:
                assert dep in seen, f"{table}/{row.name} builds on {dep}, which runs later"
                assert any(c.endswith(st.workdir(table, dep, 2)) for c in cmd), cmd
        seen.append(row.name)
    assert len(set(seen)) == len(seen)


def test_transfer_rows_differ_only_where_the_ablation_says():
    cmds = {r.name: st.command("vitx", "transfer", r, seed=0) for r in st.rows_of("transfer")}
    assert "--config.model_init=workdirs/transfer_pretrain16_s0" in cmds["finetune32"]
    assert not any("model_init" in c for c in cmds["scratch32"] + cmds["scratch59"])
    # "from scratch" on 5-9 is the fine-tune recipe itself, without the pretrained weights
    assert [c for c in cmds["finetune59"] if "model_init" not in c] == [
        c.replace("scratch59", "finetune59") for c in cmds["scratch59"]]
    vit8_eval = st.command("vitx", "flexi", st.rows_of("flexi")[1], seed=1)
    assert vit8_eval[1] == "eval" and "workdirs/flexi_vit8_s1" in vit8_eval


def test_waves_run_a_row_after_the_rows_it_builds_on():
    rows = st.rows_of("flexi")
    waves = [[r.name for r in w] for w in st.waves(rows)]
    assert sorted(sum(waves, [])) == sorted(r.name for r in rows)  # every row, once
    depth = {n: i for i, w in enumerate(waves) for n in w}
    for r in rows:
        for dep in (r.init, r.teacher, r.eval_of):
            if dep:
                assert depth[dep] < depth[r.name], (r.name, dep, waves)
    assert waves[0] == ["vit8", "flexi", "flexi2400"]
    seg = [r.name for r in st.rows_of("seg")]
    assert [[r.name for r in w] for w in st.waves(st.rows_of("seg"))] == [seg]


def test_cells_format_accuracy_in_percent_and_dense_metrics_as_fractions():
    assert st.fmt_of("test/accuracy@8") == (100, ".1f")
    assert st.fmt_of("digits/accuracy") == (100, ".1f")
    assert st.fmt_of("test/pixel_accuracy") == (1, ".3f")
    assert st.fmt_of("test/mIoU@4") == (1, ".3f")
    assert st.fmt_of("det/mAP50") == (1, ".3f")
    assert st.fmt_of("test/loss") == (1, ".4f")


def test_seed_list_picks_the_seeds_to_run():
    assert st.seeds_of(3) == [0, 1, 2]
    assert st.seeds_of(3, "1,2") == [1, 2]
    for bad in ("1,x", "-1", "1,,2"):
        with pytest.raises(ValueError, match="--seed-list"):
            st.seeds_of(3, bad)
