"""The one checkpoint resolver: where a spec points and the params it holds, for every caller.

A spec (`config.model_init`, `vitx eval --checkpoint`, `vitx export --checkpoint`,
`config.distill.teacher`) is one of

    WORKDIR                      a vitx run: its latest finalized checkpoint
    WORKDIR/checkpoints          the same
    WORKDIR/checkpoints/STEP     that step
    file.npz                     vitx, vit_jax or big_vision layout (detected from the names;
                                 params under opt/target/ or params/ are found by themselves)
    DIR or file.safetensors      a timm / Hugging Face hub folder (config.json +
                                 model.safetensors) or its weights file: a timm ViT, FlexiViT
                                 or hybrid state dict mapped to vitx's names (`timm_hub`)
    any of these + ":subtree"    only the params under that '/'-prefix, prefix stripped
                                 (e.g. "ckpt.npz:params", "ckpt.npz:opt/target")

relative (to the current directory) or absolute, with `~` expanded. orbax needs absolute paths;
the resolver makes them, so users never have to.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np

from vitx.utils import npz, timm_hub

__all__ = ["Resolved", "load_model_state", "load_params", "parse_spec", "read_run_config",
           "resolve", "short_reason"]


@dataclasses.dataclass(frozen=True)
class Resolved:
    """Where a checkpoint spec points.

    Attributes:
      spec: the spec as given.
      kind: "orbax" (a vitx checkpoint directory), "npz" or "timm" (hub folder / .safetensors).
      path: absolute path of the .npz / .safetensors file or hub folder, or of the orbax
        `checkpoints` directory.
      step: the step to read (orbax: the latest finalized one unless the spec names one; npz:
        None).
      subtree: '/'-prefix of the params to keep, or None.
      workdir: the run's workdir (holding config.json) for orbax specs, else None.
    """

    spec: str
    kind: str
    path: str
    step: int | None
    subtree: str | None
    workdir: str | None


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'path[:subtree]' -> (path, subtree or None).

    The subtree is the part after the last ':' unless that part starts with '/' (so URLs such as
    "gs://bucket/x.npz" stay whole paths), e.g. "/abs/ckpt.npz:params" -> ("/abs/ckpt.npz",
    "params"), "ckpt.npz:opt/target" -> ("ckpt.npz", "opt/target"), "/abs/ckpt.npz" ->
    ("/abs/ckpt.npz", None).

    Raises:
      ValueError: an empty spec, path or subtree ("x.npz:").
    """
    if not spec:
        raise ValueError("checkpoint spec is empty; pass 'path' or 'path:subtree'")
    head, sep, tail = spec.rpartition(":")
    if not sep or tail.startswith(("/", "\\")):
        return spec, None
    if not head or not tail.strip("/"):
        raise ValueError(f"checkpoint spec {spec!r} has an empty path or subtree; pass "
                         f"'path' or 'path:subtree' (e.g. 'ckpt.npz:params')")
    return head, tail.strip("/")


def _steps(directory: str) -> list[int]:
    if not os.path.isdir(directory):
        return []
    return sorted(int(d) for d in os.listdir(directory)
                  if d.isdigit() and os.path.isdir(os.path.join(directory, d)))


def resolve(spec: str) -> Resolved:
    """Resolve a checkpoint spec (see the module docstring) without reading any params.

    Raises:
      FileNotFoundError: nothing checkpoint-like at that path; the message names the spec and
        the forms that are accepted.
      ValueError: a malformed spec (see `parse_spec`).
    """
    raw, subtree = parse_spec(spec)
    path = os.path.abspath(os.path.expanduser(raw))
    if path.endswith(".npz"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {spec!r}: no such file {path}; fix the path")
        return Resolved(spec, "npz", path, None, subtree, None)
    if timm_hub.is_timm_path(path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"checkpoint {spec!r}: no such file {path}; fix the path")
        return Resolved(spec, "timm", path, None, subtree, None)
    parent, base = os.path.split(path)
    if base.isdigit() and _steps(parent) and int(base) in _steps(parent):  # .../checkpoints/STEP
        ckpt_dir, step = parent, int(base)
    else:
        ckpt_dir = next((c for c in (os.path.join(path, "checkpoints"), path) if _steps(c)), None)
        if ckpt_dir is None:
            raise FileNotFoundError(
                f"checkpoint {spec!r} ({path}) holds no vitx checkpoint; pass a workdir of a run "
                f"(WORKDIR, WORKDIR/checkpoints or WORKDIR/checkpoints/STEP) or a .npz file")
        import orbax.checkpoint as ocp  # lazy: models import without orbax (GPU images)

        mngr = ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(
            read_only=True))
        step = mngr.latest_step()
        mngr.close()
        if step is None:
            raise FileNotFoundError(f"checkpoint {spec!r} ({ckpt_dir}) holds no finalized "
                                    f"checkpoint; let the run save one, or pass a .npz file")
    workdir = os.path.dirname(ckpt_dir) if os.path.basename(ckpt_dir) == "checkpoints" else None
    return Resolved(spec, "orbax", ckpt_dir, step, subtree, workdir)


def _subtree(params: Any, subtree: str | None, spec: str) -> Any:
    for part in (subtree or "").split("/") if subtree else []:
        if not isinstance(params, dict) or part not in params:
            tops = sorted(params) if isinstance(params, dict) else []
            raise ValueError(f"checkpoint {spec!r}: subtree {subtree!r} not found; the names "
                             f"at that level are {tops}; pass one of them (path:subtree)")
        params = params[part]
    return params


def _ema_of(state: dict[str, Any], r: Resolved) -> dict[str, Any]:
    """The EMA variables ({"params": ..., "batch_stats": ...}) of a restored train state.

    Raises:
      ValueError: the run kept no EMA.
    """
    if "ema" not in state:
        raise ValueError(f"checkpoint {r.path}/{r.step} holds no EMA weights (its run had no "
                         f"config.ema.decay > 0); drop --ema")
    return dict(state["ema"])


def load_params(spec: str | Resolved, *, ema: bool = False
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The params of a checkpoint as a nested dict of host numpy arrays, and its metadata.

    With `ema`, the EMA of the params (`config.ema`, `vitx.train.ema`) instead.

    Orbax checkpoints are restored as numpy whatever mesh or device count wrote them; their
    metadata is the run's `meta` item (step, examples_seen, config). For .npz files the layout
    is detected (`vitx.utils.npz.load_npz`) and the metadata is `{"step": None}`.

    Raises:
      FileNotFoundError: see `resolve`.
      ValueError: a malformed spec, a subtree that is not there, an unreadable .npz, a damaged
        orbax checkpoint; with `ema`: a .npz file or a run without EMA.
    """
    r = resolve(spec) if isinstance(spec, str) else spec
    if r.kind == "npz":
        if ema:
            raise ValueError(f"checkpoint {r.spec!r} is a .npz file, which holds no EMA "
                             f"weights; pass a vitx workdir or drop --ema")
        return npz.load_npz(r.path, subtree=r.subtree), {"step": None}
    if r.kind == "timm":  # a hub folder / .safetensors: timm's names mapped (`timm_hub.load`)
        params, meta = timm_hub.load(r.path)
        return _subtree(params, r.subtree, r.spec), meta
    state, meta = _restore(r)
    params = _ema_of(state, r)["params"] if ema else state["params"]
    return _subtree(params, r.subtree, r.spec), meta


def load_model_state(spec: str | Resolved, *, ema: bool = False) -> dict[str, Any]:
    """The non-trained collections of a vitx checkpoint (e.g. {"batch_stats": ...}), host numpy;
    {} for .npz files and models without any. With `ema`, their EMA.

    Raises:
      FileNotFoundError / ValueError: see `load_params`.
    """
    r = resolve(spec) if isinstance(spec, str) else spec
    if r.kind in ("npz", "timm"):
        return {}
    state = _restore(r)[0]
    if ema:
        return {k: v for k, v in _ema_of(state, r).items() if k != "params"}
    return dict(state.get("model_state") or {})


def short_reason(e: BaseException, limit: int = 160) -> str:
    """One short line for an (orbax / tensorstore) exception: its root cause, spec dumps cut."""
    root = e
    while root.__cause__ is not None or root.__context__ is not None:
        root = root.__cause__ or root.__context__
    text = (str(root).strip().splitlines() or [""])[0]
    for cut in (" [tensorstore_spec", " See full TensorStore details", "; tensorstore_spec"):
        text = text.split(cut)[0]
    text = f"{type(root).__name__}: {text}" if text else type(root).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _restore(r: Resolved) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, meta) of an orbax checkpoint as host numpy.

    Raises:
      ValueError: the checkpoint is damaged (one line naming the step directory, the reason
        and the fix).
    """
    import orbax.checkpoint as ocp  # lazy: models import without orbax (GPU images)

    try:
        with ocp.CheckpointManager(
                r.path, options=ocp.CheckpointManagerOptions(read_only=True),
                item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                               "meta": ocp.JsonCheckpointHandler()}) as mngr:
            tree = mngr.item_metadata(r.step)["state"].tree
            restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                                        tree)
            out = mngr.restore(r.step, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(restore_args=restore_args),
                meta=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001 - orbax/tensorstore raise many kinds
        raise ValueError(f"checkpoint {r.path}/{r.step} does not restore ({short_reason(e)}); "
                         f"pass an earlier step (WORKDIR/checkpoints/STEP)") from None
    return out["state"], dict(out["meta"])


def read_run_config(spec: str | Resolved) -> dict[str, Any]:
    """The `config.json` of the run a checkpoint spec belongs to (e.g. a distillation teacher).

    Raises:
      FileNotFoundError: the spec is not inside a vitx workdir with a config.json.
    """
    r = resolve(spec) if isinstance(spec, str) else spec
    path = os.path.join(r.workdir, "config.json") if r.workdir else None
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {r.spec!r} is not a vitx workdir with a "
                                f"config.json; pass the workdir of a finished vitx run")
    with open(path) as f:
        return json.load(f)
