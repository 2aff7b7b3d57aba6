"""Multi-label classification with per-class sigmoid cross-entropy.

Source: the standard multi-label loss, as used for AudioSet in PolyViT (Likhosherstov et al.,
2021, Sec. 4) and in big_vision's `sigmoid_xent`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vitx.tasks import classification

Array = jax.Array


def sigmoid_xent(logits: Array, labels: Array) -> Array:
    """Per-example sum over classes of binary cross-entropy. (B, K), (B, K) -> (B,)."""
    logits = logits.astype(jnp.float32)
    return -jnp.sum(labels * jax.nn.log_sigmoid(logits) + (1 - labels) * jax.nn.log_sigmoid(
        -logits), axis=-1)


@dataclasses.dataclass(frozen=True)
class Task(classification.Task):
    """Multi-label classification: `batch[labels]` is (B, K) multi-hot (or (B,) int for one).

    Reads the same keys as `classification.Task`; `correct` is precision@1: whether the
    top-scoring class is one of the positives.
    """

    def loss(self, logits: Array, batch: dict[str, Array]) -> Array:
        """(B, K) logits -> (B,) sum over classes of binary cross-entropy."""
        return sigmoid_xent(logits, self.targets(batch))

    def correct(self, logits: Array, batch: dict[str, Array]) -> Array:
        top = jnp.argmax(logits, -1)
        hit = jnp.take_along_axis(self.targets(batch), top[:, None], -1)[:, 0] > 0
        return hit.astype(jnp.float32)

    def predict(self, logits: Array) -> Array:
        """(B, K) independent class probabilities."""
        return jax.nn.sigmoid(logits.astype(jnp.float32))
