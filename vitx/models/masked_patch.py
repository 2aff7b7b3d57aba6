"""Masked patch prediction: the corruption of patch embeddings (the model side).

Source: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, Sec. 4.6 and
Appendix B.1.2 (seed 000): "we corrupt 50% of patch embeddings by either replacing their
embeddings with a learnable [mask] embedding (80%), a random other patch embedding (10%) or just
keeping them as is (10%)", then predict each corrupted patch's 3-bit mean colour from its
output token (the task side: `vitx.tasks.masked_patch`). This is BERT's masked-LM recipe
(Devlin et al., NAACL 2019, Sec. 3.1) on patches.

A ViT with `model.masked_patch_rate > 0` corrupts its patch embeddings (before the position
embedding is added, so a [mask] token still knows where it sits) with `Corruption` and returns
per-patch logits (B, N, K) and `aux["patch_mask"]` (B, N), 1.0 where a patch was corrupted.

Parameter: `masked_patch/mask_embedding` (1, 1, D), the learned [mask] embedding (init normal,
stddev 0.02). Drop it when fine-tuning: `model_load.dont_load=["head/.*", "masked_patch/.*"]`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

#: Corruption kinds of `draw_corruption` (the `kind` array).
KEEP, MASK, RANDOM, UNCHANGED = 0, 1, 2, 3
#: Of the corrupted patches: the share replaced by [mask], by another patch, left unchanged.
REPLACE_PROBS = (0.8, 0.1, 0.1)
#: The key the corruption is drawn from when the model runs without a `dropout` rng (eval,
#: init): evaluations of a pretraining run see the same corruption every time.
EVAL_SEED = 0


def draw_corruption(rng: Array, batch: int, num_patches: int, rate: float = 0.5,
                    probs: tuple[float, float, float] = REPLACE_PROBS) -> tuple[Array, Array]:
    """The corruption of a batch of patch grids: a pure function of `rng`.

    Each patch independently is corrupted with probability `rate`; a corrupted one is replaced
    by the [mask] embedding with probability probs[0], by another patch's embedding with
    probs[1] and left unchanged with probs[2] (ViT App. B.1.2: rate 0.5, probs 0.8/0.1/0.1).

    Args:
      rng: a PRNG key.
      batch, num_patches: B and N.
      rate: the corrupted share, in [0, 1].
      probs: (mask, random, unchanged), summing to 1.

    Returns:
      kind: (B, N) int32 in {KEEP, MASK, RANDOM, UNCHANGED}; corrupted = kind != KEEP.
      source: (B, N) int32, the patch (of the same image, never the patch itself when N > 1)
        whose embedding a RANDOM patch takes; the patch's own index elsewhere.

    Raises:
      ValueError: `rate` outside [0, 1] or `probs` not three non-negative shares summing to 1.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"model.masked_patch_rate={rate!r} must be in [0, 1] (0.5 in the ViT "
                         f"paper)")
    if len(probs) != 3 or min(probs) < 0 or abs(sum(probs) - 1.0) > 1e-6:
        raise ValueError(f"masked patch probs={probs!r} must be three shares (mask, random, "
                         f"unchanged) summing to 1, e.g. {REPLACE_PROBS}")
    k_sel, k_kind, k_src = jax.random.split(rng, 3)
    corrupted = jax.random.uniform(k_sel, (batch, num_patches)) < rate
    u = jax.random.uniform(k_kind, (batch, num_patches))
    kind = jnp.where(u < probs[0], MASK, jnp.where(u < probs[0] + probs[1], RANDOM, UNCHANGED))
    kind = jnp.where(corrupted, kind, KEEP).astype(jnp.int32)
    own = jnp.broadcast_to(jnp.arange(num_patches, dtype=jnp.int32), (batch, num_patches))
    # Another patch: own + a shift in [1, N) (mod N), uniform over the N - 1 other patches.
    shift = jax.random.randint(k_src, (batch, num_patches), 1, max(num_patches, 2))
    other = (own + shift) % num_patches
    source = jnp.where(kind == RANDOM, other, own).astype(jnp.int32)
    return kind, source


def apply_corruption(x: Array, kind: Array, source: Array, mask_embedding: Array) -> Array:
    """Patch embeddings x (B, N, D) corrupted per `draw_corruption`'s (kind, source) (B, N):
    MASK rows become `mask_embedding` (1, 1, D), RANDOM rows take row `source` of the same
    image, KEEP and UNCHANGED rows stay. Returns (B, N, D) of x's dtype."""
    moved = jnp.take_along_axis(x, source[..., None], axis=1)
    out = jnp.where((kind == MASK)[..., None], mask_embedding.astype(x.dtype), moved)
    return out


class Corruption(nn.Module):
    """Corrupt patch embeddings (B, N, D) for masked patch prediction (ViT Sec. 4.6).

    Returns (corrupted embeddings (B, N, D), patch_mask (B, N) float32: 1.0 where corrupted).
    The corruption is drawn from the `dropout` rng stream when the model runs with one (the
    train step passes `fold_in(state rng, step)`: a pure function of the seed and the step),
    else from the fixed key `EVAL_SEED` (evaluations, init).

    Attributes:
      rate: the corrupted share of the patches (0.5 in the paper).
    """

    rate: float = 0.5

    @nn.compact
    def __call__(self, x: Array, *, train: bool = False) -> tuple[Array, Array]:
        b, n, d = x.shape
        mask_embedding = self.param("mask_embedding", nn.initializers.normal(stddev=0.02),
                                    (1, 1, d), jnp.float32)
        rng = (self.make_rng("dropout") if train and self.has_rng("dropout")
               else jax.random.PRNGKey(EVAL_SEED))
        kind, source = draw_corruption(rng, b, n, self.rate)
        return apply_corruption(x, kind, source, mask_embedding), (kind != KEEP).astype(
            jnp.float32)
