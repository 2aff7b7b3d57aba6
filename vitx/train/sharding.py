"""Device mesh from the config and regex -> PartitionSpec rules for params and optimizer state.

`config.mesh = [("data", -1), ("fsdp", 1), ("model", 1)]`: axis names and sizes, one size may be
-1 (all remaining devices). The global batch is split over ("data", "fsdp").

`config.sharding_rules = [(regex, spec), ...]`: the first rule whose regex `re.search`-matches a
leaf's '/'-joined path (e.g. "params/Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel" or
"opt_state/0/mu/head/kernel") decides its sharding. `spec` is
  - "replicate": fully replicated;
  - "fsdp": the largest dimension divisible by the "fsdp" axis size is sharded over it
    (ZeRO-3 style, as big_vision's `fsdp` strategy); replicated when none divides;
  - a tuple of mesh-axis names / None, one per dimension: an explicit PartitionSpec
    (tensor parallelism, e.g. `(None, "model")` for `MlpBlock_0/Dense_0/kernel`).
Leaves that match no rule are replicated. Explicit specs written for one layer also fit the
stacked params of a scanned encoder (`model.scan=True`): the depth axis is left unsharded.
Optimizer states carry their param's path, so one rule
covers a param and its Adam moments.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vitx.utils import ConfigError

BATCH_AXES = ("data", "fsdp")
# Leaves of `model.scan=True` encoders (`Transformer/encoderblock/...`, no `_i`): one more
# (leading, depth) dimension than the per-layer rules are written for.
_SCANNED = re.compile(r"/encoderblock/")

# Megatron-style tensor parallelism for the ViT encoder (Shoeybi et al. 2019, Sec. 3).
TENSOR_PARALLEL_RULES: list[tuple[str, Any]] = [
    (r"MlpBlock_0/Dense_0/kernel$", (None, "model")),
    (r"MlpBlock_0/Dense_0/bias$", ("model",)),
    (r"MlpBlock_0/Dense_1/kernel$", ("model", None)),
    (r"MultiHeadDotProductAttention_0/(query|key|value)/kernel$", (None, "model", None)),
    (r"MultiHeadDotProductAttention_0/(query|key|value)/bias$", ("model", None)),
    (r"MultiHeadDotProductAttention_0/out/kernel$", ("model", None, None)),
]


# The same split combined with fsdp (2D: e.g. fsdp 16 x model 4 for ViT-g on 64 chips): the
# other dimension of each Megatron-split matrix is sharded over "fsdp"; put `(".*", "fsdp")`
# after these for the rest (embeddings, norms, head).
FSDP_TENSOR_PARALLEL_RULES: list[tuple[str, Any]] = [
    (r"MlpBlock_0/Dense_0/kernel$", ("fsdp", "model")),
    (r"MlpBlock_0/Dense_0/bias$", ("model",)),
    (r"MlpBlock_0/Dense_1/kernel$", ("model", "fsdp")),
    (r"MultiHeadDotProductAttention_0/(query|key|value)/kernel$", ("fsdp", "model", None)),
    (r"MultiHeadDotProductAttention_0/(query|key|value)/bias$", ("model", None)),
    (r"MultiHeadDotProductAttention_0/out/kernel$", ("model", None, "fsdp")),
]


def make_mesh(axes: Sequence[Sequence[Any]], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh from [(name, size), ...]; one size may be -1 (the rest of the devices).

    Raises:
      ConfigError: sizes do not multiply to the number of devices, or more than one -1.
    """
    devices = list(devices if devices is not None else jax.devices())
    names = tuple(str(a[0]) for a in axes)
    sizes = [int(a[1]) for a in axes]
    n = len(devices)
    if sizes.count(-1) > 1:
        raise ConfigError(f"mesh={list(map(tuple, axes))}: at most one axis size may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if known <= 0 or n % known:
            raise ConfigError(f"mesh={list(map(tuple, axes))}: fixed axis sizes multiply to "
                              f"{known}, which does not divide the {n} devices")
        sizes[sizes.index(-1)] = n // known
    if int(np.prod(sizes)) != n:
        raise ConfigError(f"mesh={list(map(tuple, axes))}: axis sizes multiply to "
                          f"{int(np.prod(sizes))} but there are {n} devices; use -1 for one axis")
    return Mesh(np.asarray(devices).reshape(sizes), names)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Sharding of a batch: leading dim over the mesh's batch axes ("data", "fsdp")."""
    axes = tuple(a for a in BATCH_AXES if a in mesh.axis_names)
    return NamedSharding(mesh, PartitionSpec(axes))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def path_name(path: tuple) -> str:
    """'/'-joined name of a pytree key path, e.g. "params/head/kernel"."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def _fsdp_spec(shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
    size = mesh.shape.get("fsdp", 1)
    if size == 1 or not shape:
        return PartitionSpec()
    for dim in np.argsort(shape)[::-1]:
        if shape[dim] % size == 0:
            spec: list[Any] = [None] * len(shape)
            spec[dim] = "fsdp"
            return PartitionSpec(*spec)
    return PartitionSpec()


def spec_for(name: str, shape: tuple[int, ...], mesh: Mesh,
             rules: Sequence[tuple[str, Any]]) -> PartitionSpec:
    """PartitionSpec of one leaf by the first matching rule (see module doc).

    Raises:
      ConfigError: an explicit spec has the wrong rank or names an unknown mesh axis.
    """
    for regex, spec in rules:
        if not re.search(regex, name):
            continue
        if spec in ("replicate", None):
            return PartitionSpec()
        if spec == "fsdp":
            return _fsdp_spec(shape, mesh)
        spec = tuple(spec)
        unknown = [ax for ax in spec if ax is not None and ax not in mesh.axis_names]
        if unknown:  # before the rank check: an unknown axis is the error to report
            raise ConfigError(f"sharding_rules: {regex!r} -> {spec} names mesh axis "
                              f"{unknown[0]!r}, which the mesh does not have; use one of "
                              f"{tuple(mesh.axis_names)} or None")
        if len(spec) + 1 == len(shape) and _SCANNED.search(name):
            spec = (None, *spec)  # nn.scan'ed blocks: params stacked on a leading depth axis
        if len(spec) != len(shape):
            raise ConfigError(f"sharding_rules: {regex!r} -> {spec} has rank {len(spec)} but "
                              f"{name} has shape {shape}; give one entry per dimension")
        for ax, dim in zip(spec, shape, strict=True):
            if ax is not None and dim % mesh.shape[ax]:
                return PartitionSpec()  # does not divide: replicate this leaf
        return PartitionSpec(*spec)
    return PartitionSpec()


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
    """A NamedSharding for every leaf of `tree` (arrays or ShapeDtypeStructs).

    Raises:
      ConfigError: a rule that is not a (regex, spec) pair, a regex that does not compile, or
        the errors of `spec_for`.
    """
    for rule in rules:
        try:
            regex, _ = rule
            re.compile(regex)
        except (re.error, TypeError, ValueError) as e:
            raise ConfigError(f"sharding_rules: {rule!r} is not a (regex, spec) pair with a "
                              f"valid regex ({e}); fix it") from None
    def one(path: tuple, leaf: Any) -> NamedSharding:
        shape = tuple(getattr(leaf, "shape", ()))
        return NamedSharding(mesh, spec_for(path_name(path), shape, mesh, rules))
    return jax.tree_util.tree_map_with_path(one, tree)
