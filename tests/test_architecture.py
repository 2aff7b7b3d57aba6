"""The structure holds: imports point one way (import-linter), no import cycles, a generic loop."""

import ast
import os
import subprocess
import sys

import grimp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_import_layers_hold():
    """`lint-imports` with the contracts in pyproject.toml (config/utils -> data, models ->
    tasks -> train -> evaluators -> experiment/bench -> cli; models and data independent)."""
    exe = os.path.join(os.path.dirname(sys.executable), "lint-imports")
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_no_import_cycles():
    graph = grimp.build_graph("vitx")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            chain = graph.find_shortest_chain(importer=imported, imported=module)
            if chain:
                cycles.append((module, *chain))
    assert not cycles, cycles


def test_trainer_has_no_model_or_modality_specific_code():
    """FlexiViT, distillation and images live in plugins, model modules and tasks."""
    with open(os.path.join(ROOT, "vitx", "train", "trainer.py")) as f:
        tree = ast.parse(f.read())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name | ast.arg):
            names.add(getattr(node, "id", None) or node.arg)
        elif isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node is not ast.get_docstring(tree) and len(node.value) < 60:
                names.add(node.value)
    bad = sorted(n for n in names if any(w in n.lower() for w in
                                         ("image", "patch", "flexi", "distill", "teacher")))
    assert not bad, bad


_BLOCKED = ("tensorflow", "tensorflow_datasets", "clu", "orbax", "ml_collections", "torch")
_GPU_IMAGE_SCRIPT = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {_BLOCKED!r}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
import jax, jax.numpy as jnp, optax
from vitx.models import MODELS, build_model, get_model_module
from vitx.tasks import get_task
from vitx.train import optim, sharding, steps
for name in MODELS:
    get_model_module(name)
model = build_model("vit", 10, variant="pico/4")
task = get_task(dict(inputs="image", labels="labels"), 10)
x = jnp.zeros((2, 8, 8, 3))
params = model.init(jax.random.PRNGKey(0), x)["params"]
tx = optax.adam(1e-3)
state = dict(params=params, opt_state=tx.init(params), step=jnp.int32(0),
             rng=jax.random.PRNGKey(1), model_state={{}})
batch = dict(image=x, labels=jax.nn.one_hot(jnp.array([1, 2]), 10))
state, metrics = jax.jit(steps.make_train_step(model, tx, task))(state, batch)
assert int(state["step"]) == 1 and bool(jnp.isfinite(metrics["loss"]))
print("ok", sorted(m for m in sys.modules if m.split(".")[0] in {_BLOCKED!r}))
"""


def test_model_zoo_and_train_step_import_without_tf_tfds_clu_orbax():
    """A GPU image has jax, flax and optax only: the models, tasks and train step must run there
    (one jitted step of a pico ViT with those packages blocked from import)."""
    out = subprocess.run([sys.executable, "-c", _GPU_IMAGE_SCRIPT], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok []"), out.stdout
