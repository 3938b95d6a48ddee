"""CP-SAT model: one boolean per grid layout, the layer split, the latency variables, every rule behind
its own enforcement literal; minimise the scenario objective with a lexicographic tie-break.

Variables (all integers):
- ``x[c]``: layout ``c`` of the grid is chosen (exactly one); ``tp, pp, dp, ep, etp, edp`` follow from it.
- ``l_first, l_middle, l_last``: layers of the first stage, of the largest middle stage, of the last
  stage (an exact encoding: any split with the same first/last counts and middle stages no larger than
  ``l_middle`` has the same slowest stage and the same memory peak).
- ``slowest_stage_ns``, ``tpot_ns``, ``ttft_ns``, ``request_latency_ns``: bounded below by the integer
  cost tables (``tpot >= m x slowest + share``, ``tpot >= all stages + hops + share``).
Objective: ``primary_ns x C + c`` (C layouts): the scenario objective, then the grid's tie-break order.

Proof: status OPTIMAL with no gap limit and ``objective == best_objective_bound``.
Infeasible: the rules' literals become assumptions; CP-SAT returns a core, shrunk by deletion to a
minimal set of rules that conflict, each deletion confirmed by a re-solve.

Reference: OR-Tools CP-SAT Python API (``CpModel.add(...).only_enforce_if``, ``add_assumptions``,
``CpSolver.sufficient_assumptions_for_infeasibility``), developers.google.com/optimization.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import ortools
from ortools.sat.python import cp_model

from optimizer.cost import estimate
from optimizer.errors import Infeasible, OptimizerError, SolveIncomplete
from optimizer.memory import layer_kinds
from optimizer.parallel import Layout, Plan
from optimizer.result import Evidence, Solution, Tables, build_tables, primary_ns
from optimizer.rules import Rule, build_rules
from optimizer.scenario import Objective, Scenario
from optimizer.split import DENSE_FIRST_NOTE, best_split, leading_dense_layers

SOLVER_NAME = f"cp-sat {ortools.__version__}"
_INT_LIMIT = 1 << 62


@dataclass
class _View:
    """The CP-SAT model and variables, as ``rules.SolverView`` describes them."""

    model: Any
    scenario: Scenario
    layouts: tuple[Layout, ...]
    table: Any
    memory: Any
    x: list[Any]
    l_first: Any
    l_middle: Any
    l_last: Any
    tpot_ns: Any
    request_latency_ns: Any
    ttft_ns: Any
    objective: Any


def _bounds(scenario: Scenario, tables: Tables) -> tuple[int, int, int]:
    """Upper bounds (ns) for TTFT, TPOT and request latency over the grid; raises if they could overflow."""
    cost = tables.cost
    n = len(tables.layouts)
    ttft_ub = max((cost.ttft_ns(c) for c in range(n)), default=0)
    tpot_ub = max((cost.microbatches[c] * cost.phase_total_ns(cost.decode, c) + cost.prefill_share_ns[c] for c in range(n)), default=0)
    latency_ub = ttft_ub + max(scenario.workload.output_tokens - 1, 0) * tpot_ub
    if (latency_ub + 1) * (n + 1) >= _INT_LIMIT:
        raise OptimizerError(
            f"estimated latencies up to {latency_ub / 1e9:.3g} s over {n} layouts exceed the solver's 62-bit range; "
            "the scenario is far outside what the cost model is meant for"
        )
    return ttft_ub, tpot_ub, latency_ub


def build_model(scenario: Scenario, tables: Tables, rules: tuple[Rule, ...]) -> tuple[_View, dict[str, Any]]:
    """The CP-SAT model with each rule behind its own literal; returns the view and ``{rule name: literal}``."""
    m = cp_model.CpModel()
    layouts, cost = tables.layouts, tables.cost
    n, total = len(layouts), scenario.model.num_hidden_layers
    ttft_ub, tpot_ub, latency_ub = _bounds(scenario, tables)
    x = [m.new_bool_var(f"x[{c}]") for c in range(n)]
    m.add_exactly_one(x)
    for size in ("tp", "pp", "dp", "ep", "etp", "edp"):
        values = [getattr(layout, size) for layout in layouts]
        var = m.new_int_var(min(values), max(values), size)
        m.add(var == sum(v * xc for v, xc in zip(values, x)))
    view = _View(
        model=m, scenario=scenario, layouts=layouts, table=cost, memory=tables.memory, x=x,
        l_first=m.new_int_var(0, total, "l_first"), l_middle=m.new_int_var(0, total, "l_middle"),
        l_last=m.new_int_var(0, total, "l_last"), tpot_ns=m.new_int_var(0, tpot_ub, "tpot_ns"),
        request_latency_ns=m.new_int_var(0, latency_ub, "request_latency_ns"),
        ttft_ns=m.new_int_var(0, ttft_ub, "ttft_ns"), objective=None,
    )
    _add_costs(view, tpot_ub)
    literals = {}
    for rule in rules:
        lit = m.new_bool_var(f"enforce[{rule.name}]")
        rule.add_to_model(view, lit)
        literals[rule.name] = lit
    primary = {
        Objective.TTFT: view.ttft_ns,
        Objective.TPOT: view.tpot_ns,
    }.get(scenario.search.objective, view.request_latency_ns)
    view.objective = primary * n + sum(c * xc for c, xc in enumerate(x))
    m.minimize(view.objective)
    return view, literals


def _add_costs(view: _View, tpot_ub: int) -> None:
    """Definitional constraints: the split encoding and the latency lower bounds, per layout."""
    m, cost, scenario = view.model, view.table, view.scenario
    k = leading_dense_layers(scenario)
    dec = cost.decode
    slowest = m.new_int_var(0, tpot_ub, "slowest_stage_ns")
    m.add(view.ttft_ns == sum(cost.ttft_ns(c) * xc for c, xc in enumerate(view.x)))
    m.add(view.request_latency_ns == view.ttft_ns + max(scenario.workload.output_tokens - 1, 0) * view.tpot_ns)
    for c, layout in enumerate(view.layouts):
        on = view.x[c]
        dd, dm = int(dec.dense_layer_ns[c]), int(dec.moe_layer_ns[c])
        first_extra, last_extra = int(dec.first_extra_ns[c]), int(dec.last_extra_ns[c])
        all_stages = cost.phase_total_ns(dec, c)
        share = cost.prefill_share_ns[c]
        m.add(view.tpot_ns >= all_stages + share).only_enforce_if(on)
        m.add(view.tpot_ns >= cost.microbatches[c] * slowest + share).only_enforce_if(on)
        if layout.pp == 1:
            m.add(slowest >= all_stages).only_enforce_if(on)
            m.add(view.l_middle == 0).only_enforce_if(on)
            m.add(view.l_last == 0).only_enforce_if(on)
            continue
        if k:
            m.add(view.l_first >= k).only_enforce_if(on)
        m.add(slowest >= view.l_first * dm + k * (dd - dm) + first_extra).only_enforce_if(on)
        m.add(slowest >= view.l_last * dm + last_extra).only_enforce_if(on)
        if layout.pp >= 3:
            m.add(slowest >= view.l_middle * dm).only_enforce_if(on)
        else:
            m.add(view.l_middle == 0).only_enforce_if(on)


def _solver(*, time_limit_s: float | None, seed: int, workers: int) -> cp_model.CpSolver:
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = seed
    if time_limit_s is not None:
        solver.parameters.max_time_in_seconds = time_limit_s
    return solver


def optimize(
    scenario: Scenario, *, time_limit_s: float | None = None, seed: int = 0, workers: int = 1, tables: Tables | None = None
) -> Solution:
    """Find the plan that minimises the scenario's objective, with CP-SAT's evidence.

    One worker and a fixed seed by default: CP-SAT is then deterministic, and these models are small.

    Raises:
        Infeasible: no plan satisfies the rules; ``reasons`` names a minimal conflicting set of rules.
        SolveIncomplete: the time limit ran out before a plan was found or infeasibility proved.
    """
    start = time.perf_counter()
    tables = tables or build_tables(scenario)
    rules = build_rules(scenario)
    view, literals = build_model(scenario, tables, rules)
    for lit in literals.values():
        view.model.add(lit == 1)
    solver = _solver(time_limit_s=time_limit_s, seed=seed, workers=workers)
    status = solver.solve(view.model)
    name = solver.status_name(status)
    if status == cp_model.INFEASIBLE:
        raise Infeasible(explain_infeasible(scenario, tables, rules))
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise SolveIncomplete(f"CP-SAT stopped with status {name} after {solver.wall_time:.2f} s without a plan")
    c = next(i for i, xc in enumerate(view.x) if solver.value(xc))
    plan = _canonical_plan(scenario, tables, c)
    objective, bound = int(round(solver.objective_value)), int(round(solver.best_objective_bound))
    _confirm_objective(scenario, tables, plan, c, objective if status == cp_model.OPTIMAL else None)
    proto = view.model.proto
    evidence = Evidence(
        status=name,
        objective=objective,
        best_bound=bound,
        proved_optimal=status == cp_model.OPTIMAL and objective == bound and time_limit_s is None,
        solver=SOLVER_NAME,
        wall_s=time.perf_counter() - start,
        parameters={"num_workers": workers, "random_seed": seed, "max_time_in_seconds": time_limit_s,
                    "relative_gap_limit": None, "solve_wall_s": solver.wall_time},
        model_size={"variables": len(proto.variables), "constraints": len(proto.constraints)},
        candidates=len(tables.layouts),
    )
    return Solution(scenario=scenario, plan=plan, tables=tables, evidence=evidence)


def _canonical_plan(scenario: Scenario, tables: Tables, c: int) -> Plan:
    split = best_split(scenario=scenario, table=tables.cost, memory=tables.memory, c=c)
    if split is None:  # CP-SAT found a split, so the exact search must too
        raise OptimizerError(f"internal error: CP-SAT chose layout {tables.layouts[c]} but no split fits it")
    notes = (DENSE_FIRST_NOTE,) if leading_dense_layers(scenario) and len(split) > 1 else ()
    return Plan(layout=tables.layouts[c], layers_per_stage=split, batch_per_replica=tables.cost.batch[c], notes=notes)


def plan_objective(scenario: Scenario, tables: Tables, plan: Plan, c: int) -> int:
    """``primary_ns x C + c`` of a concrete plan, from the same integer tables the solver used."""
    w = scenario.workload
    est = estimate(table=tables.cost, i=c, kinds=layer_kinds(model=scenario.model, layers_per_stage=plan.layers_per_stage),
                   concurrent_sequences=w.concurrent_sequences, output_tokens=w.output_tokens)
    primary = primary_ns(scenario.search.objective, ttft_ns=est.ttft_ns, tpot_ns=est.tpot_ns, request_latency_ns=est.request_latency_ns)
    return primary * len(tables.layouts) + c


def _confirm_objective(scenario: Scenario, tables: Tables, plan: Plan, c: int, optimal: int | None) -> None:
    if optimal is not None and plan_objective(scenario, tables, plan, c) != optimal:
        raise OptimizerError(
            f"internal error: the canonical split's objective {plan_objective(scenario, tables, plan, c)} "
            f"differs from CP-SAT's optimum {optimal}"
        )


def explain_infeasible(scenario: Scenario, tables: Tables, rules: tuple[Rule, ...]) -> list[str]:
    """A minimal set of rules that together admit no plan: CP-SAT's assumption core, then deletion
    (drop one rule, re-solve; keep it out if still infeasible). One worker, so the core is reproducible."""
    view, literals = build_model(scenario, tables, rules)
    by_index = {lit.index: name for name, lit in literals.items()}
    solver = _solver(time_limit_s=None, seed=0, workers=1)
    view.model.add_assumptions(list(literals.values()))
    if solver.solve(view.model) != cp_model.INFEASIBLE:
        return ["the rules admit a plan when checked one by one (internal inconsistency)"]
    core = [by_index[i] for i in solver.sufficient_assumptions_for_infeasibility()]
    needed = list(core)
    for name in core:
        trial = [r for r in needed if r != name]
        view.model.clear_assumptions()
        view.model.add_assumptions([literals[r] for r in trial])
        if solver.solve(view.model) == cp_model.INFEASIBLE:
            needed = trial
    if not needed:
        return ["the search space itself admits no plan (" + DENSE_FIRST_NOTE + ")"]
    order = [r.name for r in rules]
    return [f"{name}: {next(r.formula for r in rules if r.name == name)}" for name in sorted(needed, key=order.index)]
