"""The import-layer contract of docs ``shared/design/ARCHITECTURE.md`` ("Layers: imports point down only").

Every module of ``medseg/`` and ``napari_plugin/`` is read with ``ast`` (nothing is imported):
its top-level *and* function-level imports, relative ones resolved, give an edge from its
package to the package it names. Each package sits on one layer of ``LAYERS``; an edge may
point to the same layer or below, never up, and neither the packages nor the modules may
import each other in a cycle. A package missing from the table fails the test: a new one must
be placed on purpose.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOP_PACKAGES = ("medseg", "napari_plugin")

# (layer, packages) from the bottom up. A package is ``medseg`` (its __init__ only), a
# top-level module ``medseg.<name>`` or a subpackage ``medseg.<name>`` with all it holds.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # small types and helpers every layer uses; import nothing of medseg above them
    ("core", ("medseg", "medseg.errors", "medseg.geometry", "medseg.volume", "medseg.prompts",
              "medseg.runtime", "medseg.outputs", "medseg.roi_names", "medseg.settings")),
    # files, cohorts, weights, intensities, metrics and synthetic data: model-free
    ("data", ("medseg.io", "medseg.metrics", "medseg.preprocess", "medseg.manifest", "medseg.manifest_msd",
              "medseg.weights", "medseg.phantom", "medseg.synthetic", "medseg.datasets", "medseg.annotation",
              "medseg.pacs_demo", "medseg.objects")),
    # prompts simulated from a ground truth, as a user would give them: model-free
    ("prompts", ("medseg.prompt_simulation",)),
    # inference (revsam2 builds on sam2: the cycle check keeps it one way)
    ("engines", ("medseg.sam2", "medseg.revsam2", "medseg.maskrcnn")),
    ("training", ("medseg.training",)),
    ("pipeline", ("medseg.pipeline",)),
    ("faces", ("medseg.cli", "napari_plugin")),
)


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported module (the deepest known module the import names)
    where: str  # file:line

    def __str__(self) -> str:
        return f"{self.where}: {self.source} imports {self.target}"


def module_files(root: Path, tops: tuple[str, ...]) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package __init__) for every .py under ``root/<top>``."""
    modules = {}
    for top in tops:
        for path in sorted((root / top).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _known(name: str, modules: dict) -> str | None:
    """The deepest module of ``modules`` that ``name`` lies in (``a.b.func`` -> ``a.b``), else None."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_edges(root: Path, tops: tuple[str, ...] = TOP_PACKAGES) -> list[Edge]:
    """Every import (any depth in the file) of a module under ``tops`` that names another such module."""
    modules = module_files(root, tops)
    edges = []
    for name, (path, is_package) in modules.items():
        package = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                named = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                # ``from pkg import sub`` names the module pkg.sub, ``from mod import func`` names mod
                named = [f"{base}.{alias.name}" for alias in node.names]
            else:
                continue
            for target in filter(None, (_known(n, modules) for n in named)):
                if target != name:
                    edges.append(Edge(name, target, f"{path.relative_to(root)}:{node.lineno}"))
    return edges


def package_of(module: str) -> str:
    """``medseg.io.dicom.scan`` -> ``medseg.io``; ``medseg`` -> ``medseg``;
    ``napari_plugin._x`` -> ``napari_plugin``."""
    parts = module.split(".")
    return parts[0] if parts[0] != "medseg" else ".".join(parts[:2])


def layer_index(layers=LAYERS) -> dict[str, int]:
    return {package: i for i, (_, packages) in enumerate(layers) for package in packages}


def unplaced(edges_or_modules, layers=LAYERS) -> set[str]:
    index = layer_index(layers)
    return {package_of(m) for m in edges_or_modules} - set(index)


def upward(edges: list[Edge], layers=LAYERS) -> list[str]:
    """The edges that point to a higher layer, as readable lines."""
    index = layer_index(layers)
    names = [name for name, _ in layers]
    bad = []
    for edge in edges:
        low, high = index[package_of(edge.source)], index[package_of(edge.target)]
        if high > low:
            bad.append(f"{edge} (layer {names[low]} -> {names[high]})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan's algorithm, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def graph(edges: list[Edge], *, by=lambda module: module) -> dict[str, set[str]]:
    nodes: dict[str, set[str]] = {}
    for edge in edges:
        source, target = by(edge.source), by(edge.target)
        nodes.setdefault(source, set())
        nodes.setdefault(target, set())
        if source != target:
            nodes[source].add(target)
    return nodes


def contract_violations(edges: list[Edge], layers=LAYERS) -> list[str]:
    """Everything that breaks the contract, as readable lines (empty when it holds)."""
    missing = unplaced([e.source for e in edges] + [e.target for e in edges], layers)
    if missing:
        return [f"package {p} is on no layer of LAYERS: place it" for p in sorted(missing)]
    return (upward(edges, layers)
            + [f"package cycle: {' <-> '.join(c)}" for c in cycles(graph(edges, by=package_of))]
            + [f"module cycle: {' <-> '.join(c)}" for c in cycles(graph(edges))])


@pytest.fixture(scope="module")
def real_edges() -> list[Edge]:
    return import_edges(ROOT)


def test_every_package_is_on_a_layer():
    assert unplaced(module_files(ROOT, TOP_PACKAGES)) == set()


def test_imports_point_down_without_cycles(real_edges):
    assert len(real_edges) > 300  # measured 1094 to 1128 edges on this branch: the walk sees the whole tree
    assert contract_violations(real_edges) == []


def test_function_level_and_relative_imports_are_seen(real_edges):
    """Two edges the checker must see: a relative import in the plugin and an import inside a function."""
    pairs = {(e.source, e.target) for e in real_edges}
    assert ("napari_plugin._widget", "napari_plugin._sam2_panel") in pairs  # from ._sam2_panel import ...
    assert ("medseg.pipeline.methods.maskrcnn", "medseg.maskrcnn") in pairs  # inside MaskRCNN.prepare


def test_an_injected_upward_import_is_caught(real_edges):
    injected = Edge("medseg.sam2.engine", "medseg.revsam2.engine", "medseg/sam2/engine.py:1")
    found = contract_violations(real_edges + [injected])
    assert "package cycle: medseg.revsam2 <-> medseg.sam2" in found  # same layer: not upward, but a cycle
    injected = Edge("medseg.io.nifti", "medseg.pipeline.report", "medseg/io/nifti.py:1")
    found = contract_violations(real_edges + [injected])
    assert f"{injected} (layer data -> pipeline)" in found
    assert any(line.startswith("package cycle:") and "medseg.io" in line and "medseg.pipeline" in line
               for line in found)


def test_checker_on_a_package_written_to_disk(tmp_path):
    """A small tree with an upward import inside a function (relative) and a cycle at top level."""
    (tmp_path / "low").mkdir()
    (tmp_path / "high").mkdir()
    (tmp_path / "low" / "__init__.py").write_text("")
    (tmp_path / "low" / "a.py").write_text("import os\n\ndef f():\n    from ..high.b import g\n    return g\n")
    (tmp_path / "low" / "c.py").write_text("from low import d\n")
    (tmp_path / "low" / "d.py").write_text("from .c import x\n")
    (tmp_path / "high" / "__init__.py").write_text("from high.b import g\n")
    (tmp_path / "high" / "b.py").write_text("from low.a import f\n\ndef g():\n    return f\n")
    edges = import_edges(tmp_path, ("low", "high"))
    layers = (("low", ("low",)), ("high", ("high",)))
    found = contract_violations(edges, layers)
    assert "low/a.py:4: low.a imports high.b (layer low -> high)" in found
    assert "module cycle: low.c <-> low.d" in found
    assert "module cycle: high.b <-> low.a" in found
    assert contract_violations(edges, (("low", ("low",)),)) == ["package high is on no layer of LAYERS: place it"]
