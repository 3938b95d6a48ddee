"""What a search works on (the grid and its integer tables) and returns (plan, tables, evidence)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from optimizer.cost import CostTable, integer_costs
from optimizer.memory import MemoryTable, memory_table
from optimizer.parallel import Layout, Plan, batch_ladder, layout_grid
from optimizer.scenario import Objective, Scenario


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
    """The candidate grid (a layout and a batch per replica each) and its integer cost and memory tables,
    in tie-break order. A layout appears once per batch when the objective chooses the batch."""

    layouts: tuple[Layout, ...]
    cost: CostTable
    memory: MemoryTable

    @cached_property
    def _positions(self) -> dict[tuple[Layout, int], int]:
        positions: dict[tuple[Layout, int], int] = {}
        for c, key in enumerate(zip(self.layouts, self.cost.batch)):
            positions.setdefault(key, c)
        return positions

    def index(self, layout: Layout, batch: int) -> int | None:
        """The first candidate with this layout and batch per replica, or None."""
        return self._positions.get((layout, batch))


def build_tables(scenario: Scenario, layouts: tuple[Layout, ...] | None = None, batches: tuple[int, ...] | None = None) -> Tables:
    """Tables for ``layouts`` (default: the whole grid of the scenario's cluster and model) with their
    ``batches`` (default: ``ceil(concurrent_sequences / DP)``, or, when the objective chooses the batch,
    every layout once per value of ``batch_ladder(engine.max_num_seqs)``)."""
    if layouts is None:
        grid = layout_grid(num_gpus=scenario.cluster.num_gpus, is_moe=scenario.model.is_moe)
        if scenario.search.objective.chooses_batch and batches is None:
            ladder = batch_ladder(scenario.engine.max_num_seqs)
            layouts = tuple(lay for lay in grid for _ in ladder)
            batches = tuple(b for _ in grid for b in ladder)
        else:
            layouts = grid
    cost = integer_costs(scenario=scenario, layouts=layouts, batches=batches)
    return Tables(layouts=layouts, cost=cost, memory=memory_table(scenario=scenario, layouts=layouts, batches=cost.batch))
