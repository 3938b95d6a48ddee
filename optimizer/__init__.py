"""optimizer: a constraint-solving planner for LLM deployments, with a proof.

Public API: ``load_scenario``, ``optimize`` (CP-SAT), ``optimize_exhaustive`` (the oracle), ``certify``,
``Plan``, ``Certificate``, ``load_fleet``, ``plan_fleet``. The package is grouped by layer (DESIGN.md):
``inputs/``, ``model/``, ``search/``, ``outputs/``, with ``cli.py`` on top. Each is imported when first used (PEP 562), so that ``import optimizer.inputs.loader``
or ``optimize --help`` does not load OR-Tools.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_PUBLIC = {
    "Certificate": "optimizer.search.verify",
    "Layout": "optimizer.model.parallel",
    "Plan": "optimizer.model.parallel",
    "certify": "optimizer.search.verify",
    "load_scenario": "optimizer.inputs.loader",
    "optimize": "optimizer.search.solve",
    "optimize_exhaustive": "optimizer.search.exhaustive",
    "load_fleet": "optimizer.inputs.fleet",
    "plan_fleet": "optimizer.search.fleet",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'optimizer' has no attribute {name!r}")
    return getattr(import_module(_PUBLIC[name]), name)
