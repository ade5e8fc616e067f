"""The package's house, drawn from its imports: every import (module level or inside a
function) goes to the same or a lower layer, and the module graph has no cycle.

Layers (docs/design.md), bottom to top. A module may import its own layer's modules and
anything below; never anything above.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tracin_jax"

LAYERS = [
    ("errors", "files", "programs", "mesh", "rankings"),  # foundations: no model, no data
    ("data", "models", "kernels", "store"),  # text -> tokens; models; pure kernels; the store
    ("config",),  # experiment configs (assemble the modules' default blocks)
    ("train", "grads"),  # fine-tuning + checkpoints; per-example gradients into stores
    ("methods",),  # influence methods over stores, retrieval, explanations
    ("report", "deletion"),  # outputs of scoring; case-deletion (consumes rankings, never scores)
    ("analysis",),  # the paper's analyses (computations)
    ("stages",),  # orchestration: run -> stores -> rankings -> plan
    ("commands",),  # one module per CLI command
    ("cli",),  # parse and dispatch
]
LAYER_OF = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """tracin_jax modules imported by ``path`` (``from a.b import c`` -> ``a.b.c`` if it is a
    module, else ``a.b``), at any depth of the file (``if TYPE_CHECKING:`` blocks aside)."""
    out = set()
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for block in ast.walk(tree)  # `if TYPE_CHECKING:` imports never run
                   if isinstance(block, ast.If) and getattr(block.test, "id", None) == "TYPE_CHECKING"
                   for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        out.update(n for n in names if n.split(".")[0] == "tracin_jax")
    return out


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return len(LAYERS)  # the package's __init__: a facade over everything
    if parts[1] not in LAYER_OF:
        raise AssertionError(f"{module}: top-level name {parts[1]!r} has no layer in tests/test_layers.py")
    return LAYER_OF[parts[1]]


def test_every_import_goes_down_or_sideways():
    modules = _modules()
    upward = []
    for name, path in sorted(modules.items()):
        for target in sorted(_imports(path, modules)):
            if _layer(target) > _layer(name):
                upward.append(f"{name} -> {target}")
    assert not upward, "imports that run back up a layer:\n" + "\n".join(upward)


def test_no_import_cycle():
    modules = _modules()
    graph = {name: {t for t in _imports(path, modules) if t in modules and t != name}
             for name, path in modules.items()}
    # A package's __init__ may import its own submodules (re-exports); a submodule importing
    # its package's __init__ back is the cycle this test forbids.
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_deletion_never_reaches_gradients_or_scoring():
    """The sweep machinery consumes rankings and a trainer: nothing under deletion/ imports
    gradient extraction, the methods or the stages."""
    modules = _modules()
    bad = [f"{name} -> {t}" for name, path in modules.items() if name.startswith("tracin_jax.deletion")
           for t in _imports(path, modules)
           if t.startswith(("tracin_jax.grads", "tracin_jax.methods", "tracin_jax.stages"))]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", sorted(LAYER_OF))
def test_every_layer_name_exists(name):
    assert (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()
