"""vitx: config-driven training of vision transformers on JAX (Flax linen, optax, orbax).

Entry points: `vitx train | eval | bench` (see `vitx.cli`), models in `vitx.models`, the trainer
in `vitx.train.trainer`, data in `vitx.data`.
"""

__version__ = "0.1.0"
