"""The package's import structure, read with ``ast`` (nothing is imported or run).

Layers, top to bottom; a module may import any module in a lower layer, and a module in its own layer
only where ``SAME_LAYER`` lists the pair (the imports the code makes today). Nothing imports upwards.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "optimizer"

# The folders, top to bottom (DESIGN.md, Layout): a module imports from its own folder or a lower one.
FOLDERS = ["cli", "outputs", "search", "model", "inputs", "base"]

LAYERS = [
    {"cli"},
    {"outputs.sweep"},
    {"outputs.report", "outputs.fleet_report", "outputs.deploy", "outputs.bench"},
    {"outputs.launch"},
    {"search.pareto", "search.diagnose", "search.disagg", "search.fleet", "search.fleet_check", "search.fleet_types"},
    {"search.verify", "search.solve", "search.exhaustive", "search.certify", "search.candidates"},
    {"search.result", "search.split", "search.rules"},
    {"model.measured", "model.serving_fit"},
    {"model.cost", "model.memory"},
    {"model.engines", "model.parallel", "model.calibration", "model.placement", "model.fit", "model.workload_features"},
    {"inputs.schema", "inputs.fleet"},
    {"inputs.loader"},
    {"inputs.scenario", "inputs.catalog", "inputs.bench_results", "inputs.calibration_file"},
    {"units", "errors", "inputs", "model", "search", "outputs"},  # the folders' own __init__: a docstring each
]
RANK = {module: rank for rank, layer in enumerate(LAYERS) for module in layer}

# (importer, imported) inside one layer, as the code has them now.
SAME_LAYER = {
    ("search.exhaustive", "search.verify"),
    ("search.solve", "search.candidates"),
    ("search.solve", "search.certify"),
    ("search.solve", "search.exhaustive"),  # the oracle's plan when a certificate refutes CP-SAT
    ("search.certify", "search.verify"),  # the plan's own certificate
    ("model.cost", "model.memory"),
    ("model.engines", "model.parallel"),
    ("model.placement", "model.parallel"),
    ("search.fleet", "search.fleet_types"),
    ("search.fleet", "search.fleet_check"),  # the plan is never returned without its solver-free check
    ("search.fleet_check", "search.fleet_types"),  # the checker shares the vocabulary, never the model builder
    ("search.fleet_types", "search.disagg"),  # the KV transfer time and the instance-size limit of the disaggregated model
}

# Third-party packages only one module may import.
ONLY_IN = {"ortools": "search.solve", "click": "cli"}


def module_name(path: Path) -> str:
    """``optimizer/search/solve.py`` -> ``search.solve``; ``optimizer/inputs/catalog/__init__.py`` -> ``inputs.catalog``."""
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts) or "__init__"


def folder(module: str) -> str:
    """The DESIGN folder of a module: its first component, ``cli``, or ``base`` (units, errors, __init__s)."""
    top = module.split(".")[0]
    return top if top in FOLDERS and "." in module or top == "cli" else "base"


SOURCES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def parse(module: str) -> ast.Module:
    return ast.parse(SOURCES[module].read_text(encoding="utf-8"), filename=str(SOURCES[module]))


def imports(module: str) -> list[tuple[str, int]]:
    """(absolute dotted module, line) for every import in ``module``, function-level ones included."""
    package = SOURCES[module].relative_to(PACKAGE.parent).parent.parts  # ("optimizer",) or ("optimizer", "catalog")
    found = []
    for node in ast.walk(parse(module)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            target = ".".join(part for part in (base, node.module or "") if part)
            found.append((target, node.lineno))
            # ``from optimizer.inputs import catalog`` imports the submodule catalog
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names
                      if f"{target}.{alias.name}".removeprefix("optimizer.") in SOURCES]
    return found


def project_imports(module: str) -> set[tuple[str, int]]:
    """Optimizer modules (``search.rules``, ``inputs.catalog``, ...) that ``module`` imports: the longest
    known module each import names."""
    out = set()
    for target, line in imports(module):
        if target.startswith("optimizer."):
            parts = target.removeprefix("optimizer.").split(".")
            name = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in SOURCES), parts[0])
            if name != module:
                out.add((name, line))
    return out


def test_sources_found():
    assert {"search.solve", "search.rules", "search.verify", "inputs.catalog", "units"} <= set(SOURCES)


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_every_module_has_a_layer(module):
    assert module == "__init__" or module in RANK, f"optimizer/{module.replace('.', '/')}: add it to LAYERS"


def test_package_init_is_the_public_api_and_never_imports_the_cli():
    # optimizer/__init__.py re-exports the API (DESIGN.md), each name loaded on first use; never cli.
    source = SOURCES["__init__"].read_text(encoding="utf-8")
    named = set(re.findall(r'"optimizer\.([a-z_.]+)"', source))
    assert named and named <= set(RANK) and "cli" not in named


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if m in RANK))
def test_imports_point_down(module):
    upward = []
    for target, line in sorted(project_imports(module)):
        assert target in RANK, f"{SOURCES[module]}:{line} imports unknown optimizer.{target}"
        if RANK[target] < RANK[module] or (RANK[target] == RANK[module] and (module, target) not in SAME_LAYER):
            upward.append(f"optimizer.{module}:{line} imports optimizer.{target}")
    assert not upward, "imports against the layering: " + "; ".join(upward)


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if m in RANK))
def test_folders_point_down(module):
    """cli -> outputs -> search -> model -> inputs -> units/errors, by folder (DESIGN.md)."""
    here = FOLDERS.index(folder(module))
    upward = [f"optimizer.{module}:{line} imports optimizer.{target} ({folder(target)}/)"
              for target, line in sorted(project_imports(module)) if FOLDERS.index(folder(target)) < here]
    assert not upward, "imports against the folders: " + "; ".join(upward)


def test_layers_respect_the_folders():
    """The fine-grained LAYERS list the folders in their order, so the two tests agree."""
    ranks = [FOLDERS.index(folder(m)) for layer in LAYERS for m in sorted(layer) if folder(m) != "base"]
    assert ranks == sorted(ranks)


def test_same_layer_pairs_are_same_layer_and_acyclic():
    for a, b in SAME_LAYER:
        assert RANK[a] == RANK[b], (a, b)
        assert (b, a) not in SAME_LAYER, (a, b)


@pytest.mark.parametrize(("package", "owner"), sorted(ONLY_IN.items()))
def test_third_party_confined(package, owner):
    users = sorted({module for module in SOURCES for target, _ in imports(module)
                    if target == package or target.startswith(package + ".")})
    assert set(users) <= {owner}, f"{package} imported by {users}, only {owner} may"


def test_no_bare_assert_statements():
    found = [f"optimizer/{SOURCES[m].relative_to(PACKAGE)}:{node.lineno}"
             for m in SOURCES for node in ast.walk(parse(m)) if isinstance(node, ast.Assert)]
    assert not found, "assert is stripped under python -O; raise a typed error instead: " + ", ".join(found)


def test_the_checker_sees_upward_imports():
    # Guard against a checker that passes vacuously.
    assert any(t == "model.memory" for t, _ in project_imports("model.cost"))
    assert any(t == "inputs.catalog" for t, _ in project_imports("inputs.loader"))  # from optimizer.inputs import catalog
    assert any(t == "search.rules" for t, _ in project_imports("search.verify"))
    assert folder("search.solve") == "search" and folder("units") == "base" and folder("cli") == "cli"
