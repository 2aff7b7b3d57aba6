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
