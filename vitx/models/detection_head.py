"""Per-token detection head: every output token predicts one box and K + 1 class logits.

Source: OWL-ViT (Minderer et al., "Simple Open-Vocabulary Object Detection with Vision
Transformers", ECCV 2022, Sec. 3.1 and Appendix A.1.2): each image token is one detection; a
3-layer MLP predicts its box and the box is biased towards the token's own grid cell (the
`box_bias`: the logit of the cell's center and of its size, added before the sigmoid). The class
logits get one extra "no object" class, as DETR (Carion et al., ECCV 2020, Sec. 3.1), in place
of OWL-ViT's text-embedding classifier.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["DetectionHead", "box_bias"]


def box_bias(h: int, w: int) -> Array:
    """(h * w, 4) logit of each token's cell (cy, cx, cell height, cell width) in [0, 1].

    Row-major over the (h, w) grid, as `token_map.reshape(B, h * w, D)`. OWL-ViT's
    `compute_box_bias` (there in (cx, cy, w, h) order).
    """
    cy, cx = jnp.meshgrid((jnp.arange(h) + 0.5) / h, (jnp.arange(w) + 0.5) / w, indexing="ij")
    size = jnp.broadcast_to(jnp.array([1.0 / h, 1.0 / w]), (h * w, 2))
    boxes = jnp.concatenate([jnp.stack([cy.ravel(), cx.ravel()], -1), size], -1)
    boxes = jnp.clip(boxes, 1e-4, 1 - 1e-4)
    return jnp.log(boxes) - jnp.log1p(-boxes)


class DetectionHead(nn.Module):
    """Token map (B, h, w, D) -> (B, h * w, 4 + K + 1): per token a box and class logits.

    Output columns: [0:4] the box (cy, cx, h, w) in [0, 1] of the image (sigmoid of the box
    MLP plus `box_bias`), [4:4 + K] the class logits, [4 + K] the no-object logit. The box MLP's
    last layer is zero-initialised, so every token starts with its own grid cell as its box.

    Attributes:
      num_classes: K, the object classes (without no-object).
      hidden: width of the box MLP's hidden layers (None: the token width D).
    """

    num_classes: int
    hidden: int | None = None

    @nn.compact
    def __call__(self, token_map: Array) -> Array:
        b, h, w, d = token_map.shape
        x = nn.LayerNorm(name="norm")(token_map.reshape(b, h * w, d).astype(jnp.float32))
        y = x
        for i in range(2):
            y = nn.gelu(nn.Dense(self.hidden or d, name=f"box_mlp_{i}")(y))
        y = nn.Dense(4, kernel_init=nn.initializers.zeros, name="box_out")(y)
        boxes = jax.nn.sigmoid(y + box_bias(h, w))
        logits = nn.Dense(self.num_classes + 1, name="class_out")(x)
        return jnp.concatenate([boxes, logits], axis=-1)
