"""Single-label classification with softmax cross-entropy (hard or soft / smoothed labels).

Source: the ViT recipe (Dosovitskiy et al., ICLR 2021, Sec. 4.1): softmax cross-entropy on
one-hot labels, label smoothing as a preprocessing op (`onehot(K, label_smoothing=...)`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

Array = jax.Array


def onehot_labels(label: Array, num_classes: int) -> Array:
    """(B,) int -> (B, K) float one-hot; (B, K) passes through as float32."""
    if label.ndim == 1:
        return jax.nn.one_hot(label, num_classes)
    return label.astype(jnp.float32)


def softmax_xent(logits: Array, labels: Array) -> Array:
    """Per-example cross-entropy with (soft) labels. logits, labels: (B, K) -> (B,)."""
    return -jnp.sum(labels * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)


@dataclasses.dataclass(frozen=True)
class Task:
    """Softmax classification of `batch[inputs]` into `batch[labels]` ((B,) int or (B, K)).

    Attributes:
      num_classes: K.
      inputs: the batch key the model is called on ("image", "video", "audio", ...), or a
        tuple of keys: the model then gets the dict {key: batch[key]} (multi-stream models).
      labels: the batch key holding the labels.
    """

    num_classes: int
    inputs: str | tuple[str, ...] = "image"
    labels: str = "label"

    def model_inputs(self, batch: dict[str, Array]) -> Array | dict[str, Array]:
        if isinstance(self.inputs, tuple):
            return {k: batch[k] for k in self.inputs}
        return batch[self.inputs]

    def targets(self, batch: dict[str, Array]) -> Array:
        """(B, K) float label distribution."""
        return onehot_labels(batch[self.labels], self.num_classes)

    def loss(self, logits: Array, batch: dict[str, Array]) -> Array:
        """(B, K) logits -> (B,) softmax cross-entropy."""
        return softmax_xent(logits, self.targets(batch))

    def correct(self, logits: Array, batch: dict[str, Array]) -> Array:
        """(B,) float32: 1 where argmax(logits) is the argmax of the label distribution."""
        hit = jnp.argmax(logits, -1) == jnp.argmax(self.targets(batch), -1)
        return hit.astype(jnp.float32)

    def predict(self, logits: Array) -> Array:
        """(B, K) class probabilities."""
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
