"""`vitx train | eval | bench | export`: the command line (the top of the import graph).

  vitx train --config configs/vit_digits.py[:key=value,flag] --workdir DIR [--config.key=value]
  vitx eval  --config configs/vit_digits.py --checkpoint DIR [--ema] [--config.key=value ...]
  vitx bench --config configs/vit_digits.py [--steps N] [--profile [DIR]]
  vitx export --checkpoint DIR --output params.npz [--layout vit_jax|big_vision|vitx] [--ema]
  vitx export --checkpoint DIR --layout timm --output HUB_DIR   (timm / Hugging Face folder)
  vitx info CHECKPOINT          (architecture, parameters, pretrained_cfg and its pp string)
  vitx predict --config configs/vit_digits.py --checkpoint DIR [--task T] [--top_k 5] FILE ...
  vitx sweep --config configs/vit_digits.py --dir DIR --sweep 'config.lr=[1e-3,3e-4]' [--parallel N]

Errors print one line, `vitx: error: <what>; <fix>` (no traceback; set VITX_TRACEBACK=1 for
one), and exit with status 2 for bad input (config, arguments, checkpoints, paths: nothing was
written) or 1 when a run fails midway (it diverged: NaN/inf loss, gradients or params; or a
write failed, e.g. no space left on device).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vitx", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (or resume) a model from a config file")
    t.add_argument("--config", required=True, help="path/to/config.py[:arg]")
    t.add_argument("--workdir", required=True, help="checkpoints, metrics and config.json go here")
    t.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (multi-host TPU pods / SLURM "
                        "GPU clusters: coordinator and process ids are auto-detected)")
    t.add_argument("--coordinator_address", default=None,
                   help="with --distributed where nothing auto-detects it: host:port of "
                        "process 0")
    t.add_argument("--num_processes", type=int, default=None, help="with --distributed")
    t.add_argument("--process_id", type=int, default=None, help="with --distributed")
    e = sub.add_parser("eval", help="evaluate a checkpoint on the config's evals")
    e.add_argument("--config", required=True)
    e.add_argument("--checkpoint", required=True,
                   help="WORKDIR, WORKDIR/checkpoints/STEP or file.npz, optionally :subtree")
    e.add_argument("--output", default=None, help="metrics JSON (default: next to checkpoint)")
    e.add_argument("--ema", action="store_true",
                   help="evaluate the EMA of the weights (config.ema); metrics <eval>_ema/...")
    b = sub.add_parser("bench", help="measure train-step throughput for a config")
    b.add_argument("--config", required=True)
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--profile", nargs="?", default=None, metavar="DIR",
                   const=os.path.join(tempfile.gettempdir(), "vitx_bench_profile"),
                   help="also write a profiler trace of the first variant's steps to "
                        "DIR/plugins/profile (default DIR: %(const)s); open it with "
                        "`tensorboard --logdir DIR`")
    x = sub.add_parser("export", help="write a checkpoint's params as .npz (vit_jax/big_vision)")
    x.add_argument("--checkpoint", required=True,
                   help="WORKDIR, WORKDIR/checkpoints/STEP or file.npz, optionally :subtree")
    x.add_argument("--output", required=True, help="the .npz file to write")
    x.add_argument("--layout", default="vit_jax",
                   choices=("vit_jax", "big_vision", "vitx", "timm"),
                   help="timm: a hub folder (config.json + model.safetensors) at --output")
    i = sub.add_parser("info", help="what a checkpoint holds (timm / HF folders: architecture, "
                                    "pretrained_cfg and the pp string that reproduces it)")
    i.add_argument("checkpoint", help="WORKDIR, file.npz, hub folder or .safetensors")
    x.add_argument("--ema", action="store_true",
                   help="write the EMA of the params (runs with config.ema)")
    x.add_argument("--task", default=None,
                   help="multi-task models (PolyViT): keep only what this task needs")
    x.add_argument("--modality", default=None,
                   help="multi-task models (PolyViT): keep only this modality and its tasks")
    r = sub.add_parser("predict", help="top-k classes of a checkpoint for your own files "
                                       "(images, WAV audio, video clips), as JSON lines")
    r.add_argument("--config", required=True)
    r.add_argument("--checkpoint", required=True,
                   help="WORKDIR, WORKDIR/checkpoints/STEP or file.npz, optionally :subtree")
    r.add_argument("files", nargs="+", help=".png/.jpg/.bmp/.gif, .wav, .npy or a frame folder")
    r.add_argument("--task", action="append", help="multi-task models: answer only this task "
                   "(repeatable; default: every task of each file's modality)")
    r.add_argument("--top_k", type=int, default=5)
    r.add_argument("--batch_size", type=int, default=None, help="default: the eval's")
    r.add_argument("--output", default=None, help="JSON-lines file (default: stdout)")
    r.add_argument("--ema", action="store_true", help="the EMA weights (config.ema runs)")
    from vitx import sweep
    sweep.add_arguments(sub.add_parser(
        "sweep", help="hyperparameter sweep: grids, random / TPE searches (Optuna), one "
                      "`vitx train` per trial"))
    return p


def _prune(args: argparse.Namespace, params: dict) -> dict:
    """Params pruned to `--task` / `--modality` by the run's model module; writes the pruned
    model config next to the output (`<output>.model.json`).

    Raises:
      ValueError: the checkpoint's model cannot be pruned, or an unknown task / modality.
    """
    from vitx import models
    from vitx.utils import checkpoints, write_json_atomic

    run = checkpoints.read_run_config(args.checkpoint)
    hooks = models.hooks_of(models.get_model_module(run["model_name"]))
    if hooks.prune is None or hooks.pruned_model_cfg is None:
        raise ValueError(f"--task/--modality: model_name={run['model_name']!r} has no tasks to "
                         f"prune to; drop --task/--modality")
    kw = dict(task=args.task, modality=args.modality)
    pruned = hooks.prune(params, **kw, model_cfg=run["model"])
    cfg_path = args.output + ".model.json"
    write_json_atomic(cfg_path, {"model_name": run["model_name"],
                                 "model": hooks.pruned_model_cfg(run["model"], **kw)})
    print(f"vitx: pruned to {kw}; model config in {cfg_path}")
    return pruned


#: Longest error line printed (the message is cut there; VITX_TRACEBACK=1 shows all).
MAX_ERROR_CHARS = 380


def _error(e: BaseException, code: int, message: str | None = None) -> int:
    """Print `vitx: error: <message>` as one bounded line (or re-raise with VITX_TRACEBACK=1)
    and return the exit status `code`."""
    if os.environ.get("VITX_TRACEBACK"):
        raise e
    text = " ".join(str(message if message is not None else e).split()) or type(e).__name__
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS - 40] + " ... (VITX_TRACEBACK=1 shows all)"
    print(f"vitx: error: {text}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    from absl import logging as absl_logging

    from vitx import config as config_lib

    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax/tfds chatter; errors still show
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = config_lib.split_argv(argv)
    args = _parser().parse_args(rest)
    try:
        if args.command == "sweep":
            from vitx import sweep
            return sweep.main(args, overrides)
        if args.command == "info":
            from vitx.utils import timm_cli
            print(timm_cli.info(args.checkpoint))
            return 0
        if args.command == "export":
            from vitx.utils import checkpoints, npz, timm_cli
            params, meta = checkpoints.load_params(args.checkpoint, ema=args.ema)
            if args.task or args.modality:
                params = _prune(args, params)
            if args.layout == "timm":  # a hub folder timm.create_model("local-dir:...") loads
                arch = timm_cli.export_checkpoint(args.checkpoint, params, meta, args.output)
                print(f"vitx: wrote {args.checkpoint} to {args.output} (timm {arch})")
                return 0
            npz.save_npz(args.output, params, layout=args.layout)
            print(f"vitx: wrote step {meta.get('step')} params of {args.checkpoint} to "
                  f"{args.output} ({args.layout} layout)")
            return 0
        config = config_lib.load_config(args.config)
        config_lib.apply_overrides(config, overrides)
        if args.command == "train":
            if args.distributed:
                import jax
                jax.distributed.initialize(args.coordinator_address, args.num_processes,
                                           args.process_id)
            elif args.coordinator_address or args.num_processes or args.process_id is not None:
                raise config_lib.ConfigError("--coordinator_address/--num_processes/--process_id "
                                             "need --distributed; add it")
            from vitx import experiment
            experiment.train(config, args.workdir)
        elif args.command == "predict":
            from vitx import predict
            predict.main(args, config)
        elif args.command == "eval":
            from vitx import experiment
            from vitx.utils import checkpoints, write_json_atomic
            metrics = experiment.evaluate(config, args.checkpoint, ema=args.ema)
            where = checkpoints.resolve(args.checkpoint)
            out = args.output or os.path.join(
                where.workdir or os.path.dirname(where.path), "eval_metrics.json")
            write_json_atomic(out, metrics)
            print(json.dumps(metrics, sort_keys=True))
            print(f"vitx: metrics written to {out}")
        else:
            from vitx import bench
            bench.run(config, steps=args.steps, profile=args.profile)
    except (config_lib.ConfigError, FileNotFoundError, ValueError) as e:
        return _error(e, 2)
    except FloatingPointError as e:  # vitx.utils.TrainingDiverged: the run diverged
        return _error(e, 1)
    except OSError as e:  # e.g. no space left on device while writing a checkpoint
        from vitx.utils import describe_os_error
        return _error(e, 1, describe_os_error(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
