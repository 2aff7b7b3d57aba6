"""Few-shot linear accuracy of frozen features: closed-form ridge regression to {-1, 1}^K.

    config.evals.fewshot = dict(type="fewshot_linear", dataset="digits", train_split="train",
                                test_split="test", pp="...", batch_size=120,
                                shots=(1, 5, 10, 25), num_draws=3, seed=0,
                                l2_reg=None, l2_regs=None, holdout=0.2,
                                representation="pre_logits", label_subset=None)

The representation (`aux[representation]` of the model, default the (B, D) "pre_logits") of
both splits is computed once per `run`. For each shot count S and each of `num_draws` draws
(draw d uses the seed `(seed, d)`; the S-shot set of a draw is the first S of a per-class
permutation, so the 1-shot set is part of the 5-shot set), S training examples per class are
standardised with their own mean and std (+ 1e-5) and a least-squares regression to the
targets 2 * onehot - 1 with an unpenalised intercept and an L2 penalty `l2` on the weights is
solved in closed form; a test example's class is the argmax of its K scores. This is scikit-
learn's `RidgeClassifier(alpha=l2, fit_intercept=True)` on the standardised features.

The L2 strength: `l2_reg` when set; otherwise, per shot count and draw, the value of the grid
`l2_regs` (default 2**-10, 2**-8, ..., 2**18, big_vision's) with the best accuracy on a held-out
`holdout` fraction of each class of the train split (drawn with `seed`, disjoint from the shots;
ties: the first in grid order). Metrics: `<name>/<S>shot` (mean test accuracy over the draws)
and `<name>/<S>shot_std` (their standard deviation).

Sources: Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021, Sec. 4.1 "Metrics"
(few-shot accuracy: regularised least squares from frozen representations to {-1, 1}^K);
big_vision's `evaluators/fewshot_lsr.py` (whitening, eigendecomposition for many L2 values).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from vitx.evaluators import EvalContext, features
from vitx.utils import positive_int

__all__ = ["DEFAULT_L2_REGS", "Evaluator", "draw_shots", "fewshot_accuracies", "holdout_split",
           "ridge_fit", "ridge_predict"]

DEFAULT_L2_REGS = tuple(float(v) for v in 2.0 ** np.arange(-10, 20, 2))
EPS_STD = 1e-5


def _class_indices(labels: np.ndarray, num_classes: int,
                   rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.permutation(np.flatnonzero(labels == c)) for c in range(num_classes)]


def draw_shots(labels: np.ndarray, shots: int, *, num_classes: int,
               seed: int | Sequence[int]) -> np.ndarray:
    """Indices into `labels` (N,) of `shots` examples of each class 0..K-1, class by class.

    Deterministic in `seed` (`np.random.default_rng(seed)`); the first `shots` of a per-class
    permutation, so a larger `shots` with the same seed contains the smaller draw.

    Returns: (K * shots,) int64.

    Raises:
      ValueError: a class with fewer than `shots` examples.
    """
    per_class = _class_indices(np.asarray(labels), num_classes, np.random.default_rng(seed))
    short = [c for c, idx in enumerate(per_class) if len(idx) < shots]
    if short:
        have = min(len(per_class[c]) for c in short)
        raise ValueError(f"{shots} shots per class, but class(es) {short} have only {have} "
                         f"examples left for the draw; use fewer shots or a larger train split")
    return np.concatenate([idx[:shots] for idx in per_class]).astype(np.int64)


def holdout_split(labels: np.ndarray, fraction: float, *, num_classes: int,
                  seed: int | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(pool, held-out) indices into `labels` (N,): round(`fraction` * n_c) of each class held
    out (at least one when the class has two or more), deterministic in `seed`; both sorted."""
    per_class = _class_indices(np.asarray(labels), num_classes, np.random.default_rng(seed))
    pool, val = [], []
    for idx in per_class:
        n_val = min(max(round(fraction * len(idx)), 1), len(idx) - 1) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        pool.append(idx[n_val:])
    return np.sort(np.concatenate(pool)).astype(np.int64), np.sort(np.concatenate(val)).astype(
        np.int64)


def ridge_fit(x: np.ndarray, labels: np.ndarray, num_classes: int,
              l2_regs: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Ridge regression from `x` (N, D) to 2 * onehot(labels) - 1 (N, K), for every L2 value.

    Minimises ||x w + b - y||^2 + l2 ||w||^2 (intercept b unpenalised: x and y are centred, as
    scikit-learn's `Ridge(fit_intercept=True)`), through one eigendecomposition of the (D, D) or
    (N, N) Gram matrix, whichever is smaller (big_vision's `fewshot_lsr`), in float64.

    Returns: (w (R, D, K), b (R, K)) for the R values of `l2_regs`.

    Raises:
      ValueError: an L2 value <= 0 or an empty `x`.
    """
    regs = np.asarray(l2_regs, np.float64).reshape(-1)
    if regs.size == 0 or np.any(regs <= 0) or len(x) == 0:
        raise ValueError(f"ridge_fit needs examples and l2 values > 0, got {len(x)} examples and "
                         f"l2_regs={regs.tolist()}")
    x = np.asarray(x, np.float64)
    y = 2.0 * np.eye(num_classes)[np.asarray(labels)] - 1.0
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    n, d = xc.shape
    if n >= d:  # w = (xc^T xc + l2 I)^-1 xc^T yc
        eigs, q = np.linalg.eigh(xc.T @ xc)
        lhs, rhs = q, q.T @ (xc.T @ yc)
    else:  # w = xc^T (xc xc^T + l2 I)^-1 yc
        eigs, q = np.linalg.eigh(xc @ xc.T)
        lhs, rhs = xc.T @ q, q.T @ yc
    eigs = np.maximum(eigs, 0.0)  # round-off of a PSD matrix
    w = np.einsum("de,re,ek->rdk", lhs, 1.0 / (eigs[None] + regs[:, None]), rhs)
    b = y_mean[None] - np.einsum("d,rdk->rk", x_mean, w)
    return w, b


def ridge_predict(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Class predictions (R, M) of `x` (M, D) under each of the R fits of `ridge_fit`."""
    scores = np.einsum("md,rdk->rmk", np.asarray(x, np.float64), w) + b[:, None]
    return scores.argmax(-1)


def fewshot_accuracies(x: np.ndarray, labels: np.ndarray, x_eval: np.ndarray,
                       labels_eval: np.ndarray, num_classes: int,
                       l2_regs: Sequence[float]) -> np.ndarray:
    """Accuracy (R,) on (`x_eval` (M, D), `labels_eval` (M,)) of `ridge_fit` on `x` (N, D)
    standardised with its own mean and std (+ 1e-5), one per L2 value.

    Raises:
      ValueError: see `ridge_fit`.
    """
    x = np.asarray(x, np.float64)
    mean, std = x.mean(0), x.std(0) + EPS_STD
    w, b = ridge_fit((x - mean) / std, labels, num_classes, l2_regs)
    preds = ridge_predict((np.asarray(x_eval, np.float64) - mean) / std, w, b)
    return (preds == np.asarray(labels_eval)[None]).mean(-1)


def _config(name: str, cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    del name  # `evaluators.from_config` prefixes errors with "evals.<name>: "
    shots = tuple(positive_int(s, "shots") for s in (cfg.get("shots") or (1, 5, 10, 25)))
    l2_reg, l2_regs = cfg.get("l2_reg"), cfg.get("l2_regs")
    regs = (float(l2_reg),) if l2_reg is not None else tuple(
        float(v) for v in (DEFAULT_L2_REGS if l2_regs is None else l2_regs))
    if not regs or min(regs) <= 0:
        raise ValueError(f"l2_reg / l2_regs must be > 0, got {list(regs)}")
    holdout = float(cfg.get("holdout", 0.2))
    if l2_reg is None and not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout={holdout} must be in (0, 1) (the train fraction held "
                         "out to choose l2), or set l2_reg")
    return dict(shots=shots, regs=regs, fixed=l2_reg is not None, holdout=holdout,
                num_draws=positive_int(cfg.get("num_draws", 3), "num_draws"),
                seed=int(cfg.get("seed", 0)))


class Evaluator:
    """Few-shot linear accuracy (module docstring) of `ctx.predict_fn`'s representation.

    Args:
      name: metric prefix (the key in `config.evals`).
      cfg: that eval's config (keys: the module docstring).
      ctx: the shared `EvalContext`.

    Raises:
      ValueError: a bad dataset, split, pp, batch size, shot count, draw count, L2 value or
        holdout fraction; on `run`, a class with too few train examples for the shots.
    """

    def __init__(self, name: str, cfg: ml_collections.ConfigDict, ctx: EvalContext):
        self.name = name
        self.__dict__.update(_config(name, cfg))
        self.features = features.TrainTestFeatures(cfg, ctx)

    def run(self, variables: Any, *, final: bool = False) -> dict[str, float]:
        """`<name>/<S>shot` and `<name>/<S>shot_std` for every S in `shots`."""
        del final
        x_tr, y_tr, x_te, y_te, k = self.features(variables)
        if self.fixed:
            pool, val = np.arange(len(y_tr)), None
        else:
            pool, val = holdout_split(y_tr, self.holdout, num_classes=k, seed=self.seed)
        metrics: dict[str, float] = {}
        for shots in self.shots:
            accs = []
            for draw in range(self.num_draws):
                try:
                    idx = pool[draw_shots(y_tr[pool], shots, num_classes=k,
                                          seed=(self.seed, draw))]
                except ValueError as e:
                    raise ValueError(f"evals.{self.name}.shots: {e}") from None
                l2 = self.regs
                if val is not None and len(l2) > 1:
                    val_acc = fewshot_accuracies(x_tr[idx], y_tr[idx], x_tr[val], y_tr[val], k, l2)
                    l2 = (l2[int(np.argmax(val_acc))],)
                accs.append(float(fewshot_accuracies(x_tr[idx], y_tr[idx], x_te, y_te, k, l2)[0]))
            metrics[f"{self.name}/{shots}shot"] = float(np.mean(accs))
            metrics[f"{self.name}/{shots}shot_std"] = float(np.std(accs))
        return metrics
