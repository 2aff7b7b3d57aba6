"""Smoke tests of the benchmarks on tiny models (benchmarks are never timed tests: these check
that each measurement runs and reports sane, self-consistent fields, not how fast it is)."""

import glob
import json
import os
import subprocess
import sys

import pytest

from vitx import bench
from vitx import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PP_16 = "decode(channels=1)|resize(16)|value_range(-1,1)|onehot(10)"
TINY = ["model.width=32", "model.depth=2", "model.mlp_dim=64", "model.num_heads=2",
        f"input.pp={PP_16}", "input.batch_size=16", "input.shuffle_buffer=100",
        "checkpoint.every_steps=100"]

pytestmark = pytest.mark.usefixtures("compile_cache")


def _config(data_dir, path="configs/vit_digits.py", *extra):
    c = config_lib.load_config(os.path.join(REPO, path))
    config_lib.apply_overrides(c, [*TINY, f"data_dir={data_dir}", *extra])
    return c


def test_vitx_bench_reports_every_measurement(data_dir, capsys):
    rows = bench.run(_config(data_dir, "configs/vit_digits.py", "model.variant=pico/4"), steps=2)
    names = [r["variant"] for r in rows]
    assert names == ["base", "plain", "bf16", "scan+remat"]
    base = rows[0]
    assert base["ratio"] == 1.0 and base["flops"] > 0 and base["compile_s"] > 0
    assert 0 < base["mfu"] < 1  # model FLOP/s below this run's measured matmul peak
    assert base["memory_bytes"] > base["argument_bytes"] > 0  # params + opt state + batch
    assert rows[3]["memory_bytes"] < base["memory_bytes"]  # remat keeps fewer activations
    assert rows[3]["flops"] == base["flops"]  # scan credited with the model's FLOPs
    assert base["pipeline_ratio"] > 0 and base["save_cost_steps"] >= 0
    assert base["save_every_steps"] == 100
    out = capsys.readouterr().out
    assert "real input pipeline / synthetic batches" in out and "async checkpoint save" in out


def test_vitx_bench_flexivit_compiles_once_per_patch_size(data_dir):
    c = _config(data_dir, "configs/flexivit_digits.py", "model.variant=pico",
                "input.pp=decode(channels=1)|resize(48)|value_range(-1,1)|onehot(10)",
                "flexi.patch_sizes=[12,16]")
    n, sizes = bench._count_programs(c, 12)
    assert sizes == 2 and n == sizes


def test_bench_peers_vitx_worker_smoke(tmp_path):
    """One worker of scripts/bench_peers.py on a tiny ViT: a JSON row with FLOPs and a step time
    (the timm and big_vision workers need the `bench` extra or a checkout)."""
    out = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "bench_peers.py"),
                          "--worker", "vitx", "--variant", "Ti/16", "--batch", "2",
                          "--image-size", "32", "--steps", "1"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["flops"] > 0 and row["step_s"] > 0 and row["memory_bytes"] > 0


def test_vitx_bench_profile_flag_and_trace(data_dir, tmp_path):
    """`vitx bench --profile [DIR]` parses (a default folder without DIR), and the first
    variant's steps are traced into DIR/plugins/profile."""
    from vitx import cli

    parse = lambda *a: cli._parser().parse_args(["bench", "--config", "c.py", *a]).profile
    assert parse() is None
    assert parse("--profile").endswith("vitx_bench_profile")
    assert parse("--profile", str(tmp_path)) == str(tmp_path)
    b = bench._Bench(_config(data_dir, "configs/vit_digits.py", "model.variant=pico/4"))
    where = b.trace(2, str(tmp_path))
    assert where == str(tmp_path / "plugins" / "profile")
    assert glob.glob(os.path.join(where, "*", "*.xplane.pb"))
