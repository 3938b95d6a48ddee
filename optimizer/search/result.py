"""What a search works on (the grid and its integer tables) and returns (plan, tables, evidence)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from optimizer.model.cost import CostTable, integer_costs
from optimizer.model.memory import MemoryTable, memory_table
from optimizer.model.parallel import Layout, Plan, batch_ladder, layout_grid
from optimizer.inputs.scenario import Objective, Scenario


@dataclass(frozen=True)
class Evidence:
    """How the plan was found. ``proved_optimal`` only when the status is OPTIMAL and
    ``objective == best_bound`` (CP-SAT; no gap limit is ever set), or every candidate was enumerated
    (exhaustive).

    ``objective`` is ``primary x candidates + tie_break_rank`` where ``primary`` is the scenario's
    objective in nanoseconds (lower is better) and the rank orders layouts by ``tie_break_key``; it is the
    objective of the returned plan, recomputed from the integer tables. ``best_bound`` is the solver's
    proved lower bound, read as an exact integer. ``double_check`` is the status of the re-solve with
    ``objective <= best - 1`` (INFEASIBLE confirms the proof), or None when not asked for.
    ``certificate`` is the optimality certificate a proof rests on besides CP-SAT's status, re-checked
    without CP-SAT (``certificate_check``); ``solver_fault`` says when that check refuted CP-SAT.

    ``wall_s``, ``solve_wall_s`` and ``workers`` describe the run, not the result: they are printed on
    the terminal but kept out of the JSON, which is byte-identical across runs and worker counts.
    """

    status: str  # OPTIMAL | FEASIBLE | INFEASIBLE | UNKNOWN
    objective: int | None
    best_bound: int | None
    proved_optimal: bool
    solver: str
    wall_s: float
    parameters: dict[str, Any] = field(default_factory=dict)
    model_size: dict[str, int] = field(default_factory=dict)
    candidates: int = 0
    double_check: str | None = None
    workers: int = 1
    solve_wall_s: float = 0.0
    certificate: dict | None = None  # the optimality certificate (``certify.py``), when CP-SAT claimed a proof
    certificate_check: str | None = None  # what re-checking it without CP-SAT found
    solver_fault: str | None = None  # CP-SAT's claim failed the check; the enumeration's plan was kept

    @property
    def gap(self) -> int | None:
        """``objective - best_bound`` (0 when proved), in objective units."""
        return None if self.objective is None or self.best_bound is None else self.objective - self.best_bound

    @property
    def gap_ns(self) -> int | None:
        """How far (ns of the primary objective) the true optimum may lie below this plan: the plan's
        ``primary`` minus the bound's ``floor(bound / candidates)``."""
        if self.objective is None or self.best_bound is None or not self.candidates:
            return None
        return self.objective // self.candidates - self.best_bound // self.candidates


@dataclass(frozen=True)
class Solution:
    scenario: Scenario
    plan: Plan
    tables: Tables
    evidence: Evidence


def primary_ns(objective: Objective, *, ttft_ns: int, tpot_ns: int, request_latency_ns: int, gpus: int = 1,
               sequences: int = 1) -> int:
    """The scenario objective as an integer to minimise.

    - Throughput ``B x OSL / latency`` for the workload's fixed B is maximised by minimising the request
      latency.
    - Throughput per GPU with a chosen batch: ``sequences`` (DP x batch) requests complete every request
      latency on ``gpus`` GPUs, so minimise the GPU-time per request, ``ceil(latency x gpus / sequences)``
      GPU-nanoseconds (OSL is fixed, so this is output tokens per second per GPU, inverted, rounded up
      once).
    """
    if objective is Objective.TTFT:
        return ttft_ns
    if objective is Objective.TPOT:
        return tpot_ns
    if objective is Objective.THROUGHPUT_PER_GPU:
        return -(-request_latency_ns * gpus // sequences)
    return request_latency_ns


@dataclass(frozen=True)
class Tables:
    """Candidates (a layout and a batch per replica each) and their integer cost and memory tables, in
    tie-break order. A layout appears once per batch when the objective chooses the batch.

    Usually the whole grid. Tables of part of it (``ranks`` set: the grid position of each row, and
    ``grid_size`` the grid's candidates) serve where the rest is rejected by a rule on the sizes alone:
    the objective's tie-break rank is then ``rank(row)``, never the row, and ``candidates`` the grid's."""

    layouts: tuple[Layout, ...]
    cost: CostTable
    memory: MemoryTable
    ranks: tuple[int, ...] | None = None
    grid_size: int | None = None

    @property
    def candidates(self) -> int:
        """Candidates of the whole grid: the ``C`` of the objective encoding ``primary x C + rank``."""
        return len(self.layouts) if self.grid_size is None else self.grid_size

    def rank(self, c: int) -> int:
        """Row ``c``'s position in the whole grid (its tie-break rank)."""
        return c if self.ranks is None else self.ranks[c]

    @cached_property
    def _positions(self) -> dict[tuple[Layout, int], int]:
        positions: dict[tuple[Layout, int], int] = {}
        for c, key in enumerate(zip(self.layouts, self.cost.batch)):
            positions.setdefault(key, c)
        return positions

    def index(self, layout: Layout, batch: int) -> int | None:
        """The first candidate with this layout and batch per replica, or None."""
        return self._positions.get((layout, batch))


def candidate_grid(scenario: Scenario) -> tuple[tuple[Layout, ...], tuple[int, ...] | None]:
    """The scenario's candidates in tie-break order, without their tables: every layout of the grid, once
    per value of ``batch_ladder(engine.max_num_seqs)`` when the objective chooses the batch (then the
    batches too; else None: ``ceil(concurrent_sequences / DP)``)."""
    grid = layout_grid(num_gpus=scenario.cluster.num_gpus, is_moe=scenario.model.is_moe)
    if scenario.search.objective.chooses_batch:
        ladder = batch_ladder(scenario.engine.max_num_seqs)
        return tuple(lay for lay in grid for _ in ladder), tuple(b for _ in grid for b in ladder)
    return grid, None


def build_tables(scenario: Scenario, layouts: tuple[Layout, ...] | None = None, batches: tuple[int, ...] | None = None, *,
                 ranks: tuple[int, ...] | None = None, grid_size: int | None = None) -> Tables:
    """Tables for ``layouts`` (default: ``candidate_grid``) with their ``batches`` (default:
    ``ceil(concurrent_sequences / DP)``); ``ranks`` and ``grid_size`` when they are part of the grid."""
    if layouts is None:
        layouts, grid_batches = candidate_grid(scenario)
        batches = grid_batches if batches is None else batches
    cost = integer_costs(scenario=scenario, layouts=layouts, batches=batches)
    return Tables(layouts=layouts, cost=cost, memory=memory_table(scenario=scenario, layouts=layouts, batches=cost.batch),
                  ranks=ranks, grid_size=grid_size)
