"""The package's import structure, read with ``ast`` (nothing is imported or run).

Layers, top to bottom; a module may import any module in a lower layer, and a module in its own layer
only where ``SAME_LAYER`` lists the pair (the imports the code makes today). Nothing imports upwards.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "optimizer"

LAYERS = [
    {"cli"},
    {"sweep", "pareto"},
    {"report", "fleet_report"},
    {"diagnose", "disagg", "fleet", "fleet_check", "fleet_types"},
    {"verify", "solve", "exhaustive", "certify", "candidates"},
    {"result", "split", "rules", "schema", "measured", "launch"},
    {"cost", "memory"},
    {"engines", "parallel"},
    {"scenario", "loader", "catalog", "calibration", "fleet_input"},
    {"units", "errors"},
]
RANK = {module: rank for rank, layer in enumerate(LAYERS) for module in layer}

# (importer, imported) inside one layer, as the code has them now.
SAME_LAYER = {
    ("exhaustive", "verify"),
    ("solve", "candidates"),
    ("solve", "certify"),
    ("solve", "exhaustive"),  # the oracle's plan when a certificate refutes CP-SAT
    ("certify", "verify"),  # the plan's own certificate
    ("cost", "memory"),
    ("engines", "parallel"),
    ("loader", "catalog"),
    ("calibration", "catalog"),
    ("loader", "calibration"),
    ("loader", "scenario"),
    ("fleet", "fleet_types"),
    ("fleet", "fleet_check"),  # the plan is never returned without its solver-free check
    ("fleet_check", "fleet_types"),  # the checker shares the vocabulary, never the model builder
    ("fleet_types", "disagg"),  # the KV transfer time and the instance-size limit of the disaggregated model
    ("fleet_input", "loader"),  # strict YAML reading, catalog names and config.json for fleet files
    ("fleet_input", "scenario"),
    ("fleet_input", "catalog"),
    ("fleet_input", "calibration"),
}

# Third-party packages only one module may import.
ONLY_IN = {"ortools": "solve", "click": "cli"}


def module_name(path: Path) -> str:
    """``optimizer/solve.py`` -> ``solve``; ``optimizer/catalog/__init__.py`` -> ``catalog``."""
    rel = path.relative_to(PACKAGE).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts) or "__init__"


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
            # ``from optimizer import catalog`` imports the submodule catalog
            found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names
                      if f"{target}.{alias.name}".removeprefix("optimizer.") in SOURCES]
    return found


def project_imports(module: str) -> set[tuple[str, int]]:
    """Optimizer modules (top-level names: ``catalog``, ``rules``, ...) that ``module`` imports."""
    out = set()
    for target, line in imports(module):
        if target.startswith("optimizer."):
            name = target.removeprefix("optimizer.").split(".")[0]
            if name != module:
                out.add((name, line))
    return out


def test_sources_found():
    assert {"solve", "rules", "verify", "catalog", "units"} <= set(SOURCES)


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_every_module_has_a_layer(module):
    assert module == "__init__" or module in RANK, f"optimizer/{module}: add it to LAYERS"


def test_package_init_is_the_public_api_and_never_imports_the_cli():
    # optimizer/__init__.py re-exports the API (DESIGN.md); it must not pull in click through cli.
    targets = {target for target, _ in project_imports("__init__")}
    assert "cli" not in targets and targets <= set(RANK)


@pytest.mark.parametrize("module", sorted(m for m in SOURCES if m in RANK))
def test_imports_point_down(module):
    upward = []
    for target, line in sorted(project_imports(module)):
        assert target in RANK, f"optimizer/{module}.py:{line} imports unknown optimizer.{target}"
        if RANK[target] < RANK[module] or (RANK[target] == RANK[module] and (module, target) not in SAME_LAYER):
            upward.append(f"optimizer/{module}.py:{line} imports optimizer.{target}")
    assert not upward, "imports against the layering: " + "; ".join(upward)


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
    assert any(t == "memory" for t, _ in project_imports("cost"))
    assert any(t == "catalog" for t, _ in project_imports("loader"))  # from optimizer import catalog
    assert any(t == "rules" for t, _ in project_imports("verify"))
