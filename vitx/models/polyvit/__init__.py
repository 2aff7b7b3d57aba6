"""PolyViT: one ViT encoder shared by image, video and audio tasks, a tokenizer per modality.

Sources:
  * Likhosherstov et al., "PolyViT: Co-training Vision Transformers on Images, Videos and Audio",
    TMLR 2023 (arXiv 2111.12993), method section (Sec. 4 of the TMLR version, Sec. 3 of arXiv
    v1): architecture (a tokenizer with its own posemb and cls token per modality, optional
    modality-specific layers L_adapt before the shared encoder, a linear head per task on the
    cls token; only the path of the batch's (modality, task) runs, so only it gets gradients)
    and initialisation from an ImageNet ViT (shared encoder and 2D tokenizers copied, video
    tubelets inflated, posembs resized / tiled over time).
  * Pruning to one task or one modality for deployment, and the shared-parameter fraction: seed
    004 (WO2023059737A1), claims 5 and 15-19 (Likhosherstov et al., TMLR 2023).
  * Arnab et al., "ViViT: A Video Vision Transformer", ICCV 2021, Sec. 3.2 (tubelet embedding: a
    3D conv of kernel = stride = t x h x w), Sec. 3.4 (initialisation: "filter inflation" =
    kernel / t in every frame, and "central frame" = kernel in frame t // 2, zeros elsewhere;
    posemb repeated over the temporal tokens).
  * Reference code: google-research/scenic, `scenic/projects/polyvit` (PolyViT paper,
    Sec. 3.3: modality layers initialised from the first ViT blocks, central-frame inflation
    as the default, zero-init cls tokens and heads).

Config (`config.model`, passed to `Model` as keyword arguments; parsed once into `PolyViTCfg`,
whose `Modality` and `Head` entries check themselves):

    variant="pico",                        # a size of vit.WIDTHS (no patch part)
    modalities={                           # name -> tokenizer; names are free strings
        "image": {"patch_size": (4, 4), "input_shape": (32, 32, 3)},     # 2D: (H, W, C)
        "video": {"tubelet": (2, 4, 4), "input_shape": (8, 32, 32, 1)},  # 3D: (T, H, W, C)
        "audio": {"patch_size": (8, 8), "input_shape": (96, 64, 1)},     # 2D: (time, mel, 1)
    },
    heads={"digit": {"modality": "video", "num_classes": 10}, ...},      # task -> head
    num_modality_layers=0,                 # L_adapt: blocks per modality before the shared ones
    width/depth/mlp_dim/num_heads=...,     # overrides of the variant, as in vit
    dropout=0.0, scan=False, remat_policy=None, dtype_mm="float32", head_zeroinit=True,
    drop_path=0.0, attention_dropout=0.0,  # stochastic depth (rate linear over all blocks)

A modality is 2D (`patch_size`, an int or (ph, pw); inputs (B, H, W, C): images, spectrograms
(B, time, mel, 1)) or 3D (`tubelet` (t, ph, pw); inputs (B, T, H, W, C)). `input_shape` (the
example shape without batch) is required: the learned posemb has one entry per token of that
grid, and `model.init` creates every tokenizer from it (see below). A head's `num_classes`
defaults to `Model`'s `num_classes`.

Parameter tree (ViT names for the shared part, so a ViT checkpoint maps onto it):

    tokenizer_<m>/embedding/{kernel (ph, pw, C, D) | (t, ph, pw, C, D), bias (D,)}
    tokenizer_<m>/pos_embedding (1, N_m, D)       # learned; N_m tokens of m's grid (raster,
                                                  # time-major for video)
    tokenizer_<m>/cls (1, 1, D)
    modality_layers_<m>/encoderblock_{i}/...      # i < num_modality_layers (0: none)
    Transformer/encoderblock_{i}/...              # i < depth - num_modality_layers
                                                  # (Transformer/encoderblock with scan=True)
    Transformer/encoder_norm/{scale, bias}
    head_<task>/{kernel (D, K_task), bias (K_task,)}   # zero-initialised

Routing: `model.apply({"params": p}, x, modality=m, task=t)` runs tokenizer_<m> ->
modality_layers_<m> -> Transformer -> head_<t> only (one compiled program per static (m, t)),
so every other tokenizer, modality layer and head gets an exactly-zero gradient (`active_mask`).
`model.init(rng, x, modality=m, task=t)` (x of modality m) creates the params of the WHOLE model:
while initialising, every other tokenizer (+ its modality layers) runs on zeros of its
`input_shape` (batch 1) and every other head on a zero (1, D) feature; outside init only the
route runs. Modalities and heads are kept sorted by name (a dict and an ml_collections
ConfigDict of the same config give equal, equally hashed modules). Parameter groups:
"shared", "modality:<m>", "task:<t>" (`param_groups`).

Layout: `config` (the schema and `check_input`, `num_tokens`), `model` (the flax modules,
`Model`), `routing` (routes, `active_mask`, `prune`, `pruned_model_cfg`, `param_report`),
`surgery` (ViT -> PolyViT surgery, tubelet inflation, `load`).
"""

from vitx.models.polyvit.config import (
    Head,
    Modality,
    PolyViTCfg,
    Routes,
    check_input,
    num_tokens,
)
from vitx.models.polyvit.model import Model
from vitx.models.polyvit.routing import (
    active_mask,
    param_groups,
    param_report,
    prune,
    pruned_model_cfg,
)
from vitx.models.polyvit.surgery import INFLATIONS, adapt_params, load

__all__ = ["INFLATIONS", "Head", "Model", "Modality", "PolyViTCfg", "Routes", "active_mask",
           "adapt_params", "check_input", "load", "num_tokens", "param_groups", "param_report",
           "prune", "pruned_model_cfg"]
# `load` is the function: its import rebinds the package attribute that importing the submodule
# of that name set. Reach the submodule by `from vitx.models.polyvit.surgery import ...`.
