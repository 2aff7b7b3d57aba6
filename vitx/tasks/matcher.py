"""One-to-one Hungarian matching of predictions to padded ground-truth objects, inside `jit`.

The assignment is solved on the host by `scipy.optimize.linear_sum_assignment` (the reference
O(n^3) solver, scipy being a dependency of jax) through `jax.pure_callback`, so it runs inside
the jitted train step on any backend; only the (B, N, M) cost matrix crosses to the host. No
gradient flows through the matching (DETR: the matching is a constant of the loss).

Source: DETR (Carion et al., "End-to-End Object Detection with Transformers", ECCV 2020,
Sec. 3.1, Eq. 1): the permutation of lowest total matching cost, found with the Hungarian
algorithm (Kuhn, 1955).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = ["hungarian_matching", "linear_sum_assignment_batched"]


def linear_sum_assignment_batched(cost: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Host (numpy) solver. cost: (B, N, M) float, valid: (B, M) bool -> (B, M) int32.

    Entry [b, j] is the prediction index matched to object j of example b (each prediction
    used at most once, total cost minimal over the valid objects), -1 where object j is padding.

    Raises:
      ValueError: an example with more valid objects than predictions (N < #valid).
    """
    cost, valid = np.asarray(cost, np.float64), np.asarray(valid, bool)
    from scipy.optimize import linear_sum_assignment  # scipy ships with jax
    out = np.full(valid.shape, -1, np.int32)
    for b in range(cost.shape[0]):
        cols = np.flatnonzero(valid[b])
        if not len(cols):
            continue
        if len(cols) > cost.shape[1]:
            raise ValueError(f"example {b} has {len(cols)} objects but only {cost.shape[1]} "
                             f"predictions (tokens); use a smaller patch size or fewer objects")
        rows, matched = linear_sum_assignment(cost[b][:, cols])
        out[b, cols[matched]] = rows
    return out


def hungarian_matching(cost: Array, valid: Array) -> Array:
    """Jittable minimum-cost one-to-one matching of N predictions to M padded objects.

    Args:
      cost: (B, N, M) matching cost of prediction i for object j (any float dtype).
      valid: (B, M) bool, False for padded objects (they are matched to nothing).

    Returns:
      (B, M) int32: the prediction matched to each object, -1 for padded objects. Equals
      `scipy.optimize.linear_sum_assignment` on `cost[b][:, valid[b]]` for every example.

    Raises:
      ValueError (at trace time): N < M, more object slots than predictions (tokens).
    """
    b, n, m = cost.shape
    if n < m:
        raise ValueError(f"{m} object slots but only {n} tokens per image; lower max_objects "
                         f"of pad_objects or use a smaller patch size (more tokens)")
    cost = jax.lax.stop_gradient(cost).astype(jnp.float32)
    return jax.pure_callback(linear_sum_assignment_batched,
                             jax.ShapeDtypeStruct((b, m), jnp.int32), cost, valid,
                             vmap_method="sequential")
