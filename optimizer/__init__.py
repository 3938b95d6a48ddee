"""optimizer: a constraint-solving planner for LLM deployments, with a proof.

Public API: ``load_scenario``, ``optimize`` (CP-SAT), ``optimize_exhaustive`` (the oracle), ``certify``,
``Plan``, ``Certificate``. Each is imported when first used (PEP 562), so that ``import optimizer.loader``
or ``optimize --help`` does not load OR-Tools.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_PUBLIC = {
    "Certificate": "optimizer.verify",
    "Layout": "optimizer.parallel",
    "Plan": "optimizer.parallel",
    "certify": "optimizer.verify",
    "load_scenario": "optimizer.loader",
    "optimize": "optimizer.solve",
    "optimize_exhaustive": "optimizer.exhaustive",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'optimizer' has no attribute {name!r}")
    return getattr(import_module(_PUBLIC[name]), name)
