"""ViT_REL: a ViT whose self-attention adds a learned 2D relative-position bias per head.

Source: Dai, Liu, Le, Tan, "CoAtNet: Marrying Convolution and Attention for All Data Sizes",
NeurIPS 2021, Sec. 2.1 (eq. 3, pre-softmax relative bias w_{i-j}) and Sec. 4 / Table 3 (the
ViT_REL baseline: ViT with the same relative attention); seed 003, claims 16-18.

`config.model_name = "vit_rel"` is `vit` with `model.attention = "relative"` (the default here;
any ViT variant, e.g. "S/16"); `model.attention = "relative"` works the same for `vit`,
`flexivit` and `hybrid`. Each encoder block holds one table (the CoAtNet code's per-block
tables), the (class) token gets zero bias:

    Transformer/encoderblock_{i}/rel_table (heads, 2H-1, 2W-1)   # H x W token grid
    ... everything else as `vitx.models.vit`

`load` is ViT's: it resizes the tables to a new token grid (`relative.adapt_rel_table`, as
CoAtNet's `load`) along with the position embedding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn

from vitx.models import vit

load = vit.load


def Model(num_classes: int | None = 1000, *, variant: str | None = None, **kw: Any) -> nn.Module:  # noqa: N802
    """ViT_REL, e.g. `Model(1000, variant="S/16")`: `vit.Model` with attention="relative"."""
    return vit.Model(num_classes, variant=variant, **{"attention": "relative", **kw})


def check_input(model_cfg: Mapping[str, Any], shape: Sequence[int]) -> None:
    """`vit.check_input` (patch size / stride against the image, `vit.ViTCfg`).

    Raises:
      ValueError: see `vit.check_input`.
    """
    vit.check_input({"attention": "relative", **dict(model_cfg)}, shape)
