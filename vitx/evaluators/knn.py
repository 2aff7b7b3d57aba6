"""k-nearest-neighbour accuracy of frozen features (cosine similarity, DINO's weighted vote).

    config.evals.knn = dict(type="knn", dataset="digits", train_split="train",
                            test_split="test", pp="...", batch_size=120, k=20,
                            temperature=0.07, representation="pre_logits", label_subset=None)

Both splits' representations (`aux[representation]`, default "pre_logits" (B, D)) are L2-
normalised; each test example takes its `k` most cosine-similar train examples, and each
neighbour votes for its class with the weight exp(similarity / `temperature`) (the weighted
k-NN of DINO; `temperature=None` or 0: a plain majority vote, weight 1). The predicted class
is the one with the largest total vote (ties: the smaller class index). Metric:
`<name>/knn_accuracy`.

Source: Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO),
ICCV 2021, Sec. 4.1 "Evaluation protocols" (weighted nearest-neighbour classifier, k = 20,
temperature 0.07, following Wu et al. 2018).
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from vitx.evaluators import EvalContext, features
from vitx.utils import positive_int

__all__ = ["Evaluator", "knn_predict"]

_CHUNK = 1024  # test examples per similarity block: (chunk, N) floats at a time


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def knn_predict(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, *, k: int,
                num_classes: int, temperature: float | None = 0.07) -> np.ndarray:
    """Weighted (or majority, `temperature` None/0) cosine k-NN class of each test example.

    Args:
      train: (N, D) features; train_labels: (N,) ints in [0, num_classes).
      test: (M, D) features; both are L2-normalised here.
      k: neighbours (at most N are used).
      num_classes: K.
      temperature: vote weight exp(cosine / temperature); None or 0: weight 1.

    Returns: (M,) int64 predicted classes.

    Raises:
      ValueError: k < 1 or an empty train set.
    """
    if k < 1 or len(train) == 0:
        raise ValueError(f"k-NN needs k >= 1 and train examples, got k={k}, {len(train)} examples")
    train, test = _normalise(train), _normalise(test)
    labels = np.asarray(train_labels, np.int64)
    k = min(k, len(train))
    out = []
    for start in range(0, len(test), _CHUNK):
        sim = test[start:start + _CHUNK] @ train.T  # (m, N)
        nn_idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        nn_sim = np.take_along_axis(sim, nn_idx, axis=1)
        weight = np.exp(nn_sim / temperature) if temperature else np.ones_like(nn_sim)
        votes = np.zeros((len(sim), num_classes))
        np.add.at(votes, (np.arange(len(sim))[:, None], labels[nn_idx]), weight)
        out.append(votes.argmax(-1))
    return np.concatenate(out) if out else np.zeros((0,), np.int64)


class Evaluator:
    """Cosine k-NN accuracy (module docstring) of `ctx.predict_fn`'s representation.

    Args:
      name: metric prefix (the key in `config.evals`).
      cfg: that eval's config (keys: the module docstring).
      ctx: the shared `EvalContext`.

    Raises:
      ValueError: a bad dataset, split, pp, batch size, `k` or `temperature`.
    """

    def __init__(self, name: str, cfg: ml_collections.ConfigDict, ctx: EvalContext):
        self.name = name
        self.k = positive_int(cfg.get("k", 20), "k")  # from_config adds "evals.<name>: "
        temperature = cfg.get("temperature", 0.07)
        if temperature is not None and float(temperature) < 0:
            raise ValueError(f"temperature={temperature} must be > 0 (weighted "
                             f"vote), or 0 / None (majority vote)")
        self.temperature = None if not temperature else float(temperature)
        self.features = features.TrainTestFeatures(cfg, ctx)

    def run(self, variables: Any, *, final: bool = False) -> dict[str, float]:
        """`<name>/knn_accuracy` over the test split."""
        del final
        x_tr, y_tr, x_te, y_te, k = self.features(variables)
        preds = knn_predict(x_tr, y_tr, x_te, k=self.k, num_classes=k,
                            temperature=self.temperature)
        return {f"{self.name}/knn_accuracy": float(np.mean(preds == y_te)) if len(y_te) else 0.0}
