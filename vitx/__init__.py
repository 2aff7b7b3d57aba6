"""vitx: config-driven training of vision transformers on JAX (Flax linen, optax, orbax).

Entry points: `vitx train | eval | bench | export` (see `vitx.cli`). Layers, bottom to top:
`vitx.config` / `vitx.utils`, `vitx.data` / `vitx.models`, `vitx.tasks`, `vitx.train` (the one
loop in `vitx.train.trainer`), `vitx.evaluators`, `vitx.experiment` / `vitx.bench`, `vitx.cli`;
see docs/architecture.md.
"""

__version__ = "0.1.0"
