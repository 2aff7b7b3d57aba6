"""Multi-task batching policies: which task(s) each optimizer step trains on.

Source: PolyViT (Likhosherstov et al., "PolyViT: Co-training Vision Transformers on Images,
Videos and Audio", TMLR 2023, Sec. 3.2; WO2023059737A1, FIG. 3: 310-350). With T
tasks and U_j steps of task j (U = sum_j U_j), 0-based steps:

  task_by_task   tasks in a seeded random order; all U_j steps of one task before the next.
  alternating    fixed round-robin: step i trains task i mod T (U steps in all).
  uniform        a seeded shuffle of an array holding U // T copies of every task.
  weighted       a seeded shuffle of an array holding U_j copies of task j (sampling
                 proportional to each task's size).
  accumulated    every step takes one batch of every task and sums (or averages) their
                 gradients into one optimizer step: U // T steps.

Every schedule is a pure function of (seed, step), computed on the host with numpy, so every
host agrees and a resumed run replays it exactly. The sequence is built once (O(U) memory).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["KINDS", "TASK_SCHEDULE_SALT", "TaskSchedule"]

KINDS = ("task_by_task", "alternating", "uniform", "weighted", "accumulated")
#: Salt of the schedule's RNG, independent of the patch-size draw at the same (seed, step).
TASK_SCHEDULE_SALT = 0x7A5C


class TaskSchedule:
    """The task(s) of every step for `kind` over tasks with `steps[j]` = U_j.

    `schedule(step)` is a tuple of task indices: one for every kind but "accumulated", which
    gives all T of them. `len(schedule)` is the number of optimizer steps.

    Raises:
      ValueError: unknown kind (lists KINDS), no tasks, or a U_j that is not an int >= 1 (so
        U // T >= 1 always).
    """

    def __init__(self, kind: str, steps: Sequence[int], seed: int = 0):
        if kind not in KINDS:
            raise ValueError(f"multitask.schedule={kind!r} is unknown; use one of {KINDS}")
        u = [int(s) for s in steps]
        if not u or any(isinstance(s, bool) or s < 1 for s in u) or len(u) != len(steps):
            raise ValueError(f"multitask task steps {list(steps)} must be ints >= 1, one per "
                             f"task (set steps or epochs on every task)")
        self.kind, self.steps, self.seed = kind, tuple(u), int(seed)
        t = len(u)
        rng = np.random.default_rng((self.seed, TASK_SCHEDULE_SALT))
        if kind == "task_by_task":
            order = rng.permutation(t)
            seq = np.concatenate([np.full(u[j], j) for j in order])
        elif kind == "alternating":
            seq = np.arange(sum(u)) % t
        elif kind == "uniform":
            seq = rng.permutation(np.repeat(np.arange(t), sum(u) // t))
        elif kind == "weighted":
            seq = rng.permutation(np.repeat(np.arange(t), u))
        else:  # accumulated
            seq = np.full(sum(u) // t, -1)
        self._seq = seq.astype(np.int64)
        self._all = tuple(range(t))

    def __len__(self) -> int:
        return len(self._seq)

    def __call__(self, step: int) -> tuple[int, ...]:
        """The task indices trained at `step` (0-based; steps past the end repeat the last)."""
        j = int(self._seq[min(int(step), len(self._seq) - 1)])
        return self._all if j < 0 else (j,)

    def counts_before(self, step: int) -> list[int]:
        """Batches of every task consumed by steps [0, step): where each task's data resumes."""
        seq = self._seq[:max(int(step), 0)]
        if self.kind == "accumulated":
            return [len(seq)] * len(self._all)
        return np.bincount(seq, minlength=len(self._all)).tolist()
