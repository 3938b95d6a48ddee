"""Typed errors for expected failures. The CLI maps them to exit codes: ScenarioError and PlanError 2,
Infeasible 1, SolveIncomplete 1. None of them should ever surface as a traceback."""

from __future__ import annotations


class OptimizerError(Exception):
    """Base of every error the optimizer raises on purpose."""


class ScenarioError(OptimizerError):
    """Bad input: the file, the field, what is wrong and what would be right.

    Args:
        message: what is wrong and what would be right.
        source: the file (or ``<inline>``) the value came from.
        field: dotted path of the offending field, e.g. ``model.num_experts``.
    """

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        self.message = message
        self.source = source
        self.field = field
        where = ": ".join(part for part in (source, field) if part)
        super().__init__(f"{where}: {message}" if where else message)


class PlanError(ScenarioError):
    """A hand-written plan file that cannot be read (not one that breaks a rule: that is a verdict)."""


class Infeasible(OptimizerError):
    """No plan satisfies the rules. ``reasons``: one line per independent reason. ``conflicts``: the rule
    names of each minimal conflicting set, sets disjoint (from CP-SAT; empty when not known, e.g. from the
    exhaustive solver, whose reasons are rejection counts)."""

    def __init__(self, reasons: list[str], conflicts: tuple[tuple[str, ...], ...] = ()):
        self.reasons = list(reasons)
        self.conflicts = tuple(conflicts)
        super().__init__("no feasible plan: " + "; ".join(self.reasons))


class SolveIncomplete(OptimizerError):
    """The solver stopped (time limit) before it found a plan or proved that none exists."""
