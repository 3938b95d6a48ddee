"""optimizer: a constraint-solving planner for LLM deployments, with a proof.

Public API: ``load_scenario``, ``optimize`` (CP-SAT), ``optimize_exhaustive`` (the oracle), ``certify``,
``Plan``, ``Certificate``.
"""

from optimizer.exhaustive import optimize_exhaustive
from optimizer.loader import load_scenario
from optimizer.parallel import Layout, Plan
from optimizer.solve import optimize
from optimizer.verify import Certificate, certify

__all__ = ["Certificate", "Layout", "Plan", "certify", "load_scenario", "optimize", "optimize_exhaustive"]
