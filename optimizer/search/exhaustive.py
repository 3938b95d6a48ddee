"""The enumeration oracle: every grid layout, every rule, no CP-SAT. Tests compare its optimum with
CP-SAT's; ``optimize --solver exhaustive`` runs it on the same rules and integer tables.

For each layout it takes the split with the smallest slowest decode stage (``split.best_split``; among
the balanced splits where the scenario sets a balance target): every
objective and every service target is monotone in that stage time, so if that split fails a rule, every
split of the layout does. The layout's plan is then checked with every rule's own ``check``.
"""

from __future__ import annotations

import time

from optimizer.errors import Infeasible
from optimizer.model.parallel import Layout, Plan
from optimizer.search.result import Evidence, Solution, Tables, build_tables, primary_ns
from optimizer.search.rules import BALANCE_RULES, LayoutRule, Rule, build_rules
from optimizer.inputs.scenario import Scenario
from optimizer.search.split import DENSE_FIRST_NOTE, best_split, leading_dense_layers
from optimizer.search.verify import plan_context

SOLVER_NAME = "exhaustive"


def feasible_plans(scenario: Scenario, tables: Tables, *, exclude: frozenset[Layout] = frozenset(),
                   skip: tuple[type[Rule], ...] = (), rejected: dict[str, int] | None = None):
    """Every candidate with a fitting split, as ``(plan, context, failing)``: its canonical plan, the plan's
    cost and memory context, and the names of the rules of ``skip``'s types that it fails (the others all
    hold). Candidates failing any other rule are left out and counted in ``rejected`` by the first rule
    that rejects them, in certificate order."""
    rules = build_rules(scenario)
    layout_rules = [r for r in rules if isinstance(r, LayoutRule)]
    rejected = {} if rejected is None else rejected
    for c, layout in enumerate(tables.layouts):
        if layout in exclude:
            continue
        failed = [r.name for r in layout_rules if not r.evaluate(scenario, layout).holds]
        split = None if failed else best_split(scenario=scenario, table=tables.cost, memory=tables.memory, c=c)
        if not failed and split is None:
            failed = [" or ".join(["layer_split", "memory_cap", *(r.name for r in rules if isinstance(r, BALANCE_RULES))])]
        if failed:
            rejected[failed[0]] = rejected.get(failed[0], 0) + 1
            continue
        plan = Plan(layout=layout, layers_per_stage=split, batch_per_replica=tables.cost.batch[c],
                    notes=(DENSE_FIRST_NOTE,) if leading_dense_layers(scenario) and len(split) > 1 else ())
        ctx = plan_context(scenario, plan, tables)
        failed = [chk.name for r in rules for chk in r.check(ctx) if not chk.holds and not isinstance(r, skip)]
        if failed:
            rejected[failed[0]] = rejected.get(failed[0], 0) + 1
            continue
        yield plan, ctx, [chk.name for r in rules if isinstance(r, skip) for chk in r.check(ctx) if not chk.holds]


def plan_value(scenario: Scenario, tables: Tables, plan: Plan, ctx) -> int:
    """``primary_ns x C + c``: the objective encoding CP-SAT's evidence uses, for a concrete plan."""
    est = ctx.estimate
    return primary_ns(scenario.search.objective, ttft_ns=est.ttft_ns, tpot_ns=est.tpot_ns, request_latency_ns=est.request_latency_ns,
                      gpus=plan.layout.gpus, sequences=plan.layout.dp * plan.batch_per_replica) * tables.candidates + tables.rank(ctx.index)


def optimize_exhaustive(scenario: Scenario, *, tables: Tables | None = None, exclude: frozenset[Layout] = frozenset()) -> Solution:
    """The optimum by enumeration, with the same objective encoding as CP-SAT (``primary x C + rank``),
    over the grid less the ``exclude``d layouts.

    Raises:
        Infeasible: no layout passes; ``reasons`` lists each rule with how many layouts it rejects.
    """
    start = time.perf_counter()
    tables = tables or build_tables(scenario)
    n = tables.candidates
    rejected: dict[str, int] = {}
    best: tuple[int, Plan] | None = None
    for plan, ctx, _ in feasible_plans(scenario, tables, exclude=exclude, rejected=rejected):
        value = plan_value(scenario, tables, plan, ctx)
        if best is None or value < best[0]:
            best = (value, plan)
    if best is None:
        raise Infeasible([f"{name}: rejects {count} of {n} layouts" for name, count in rejected.items()])
    evidence = Evidence(
        status="OPTIMAL", objective=best[0], best_bound=best[0], proved_optimal=True, solver=SOLVER_NAME,
        wall_s=time.perf_counter() - start, parameters={}, model_size={}, candidates=n,
    )
    return Solution(scenario=scenario, plan=best[1], tables=tables, evidence=evidence)


def top_plans(solution: Solution, k: int) -> list[tuple[int, Plan]]:
    """The ``k`` best plans on distinct layouts (each layout with its best batch), best first, as
    ``(objective, plan)`` in the evidence's encoding; the first is ``solution``'s own. By enumeration over
    the solver's tables (the CP-SAT model with earlier optima excluded is slow to prove, see
    ``runner_up``)."""
    scenario, tables = solution.scenario, solution.tables
    best: dict[Layout, tuple[int, Plan]] = {}
    for plan, ctx, _ in feasible_plans(scenario, tables):
        value = plan_value(scenario, tables, plan, ctx)
        if plan.layout not in best or value < best[plan.layout][0]:
            best[plan.layout] = (value, plan)
    return sorted(best.values(), key=lambda vp: vp[0])[:k]


def runner_up(solution: Solution) -> Solution | None:
    """The best plan on any other layout than ``solution``'s, by enumeration over the same tables (exact,
    and fast where CP-SAT is slow: with the optimum's layout excluded, its per-layout model can take
    seconds to close the gap), or None when no other layout is feasible. The review report compares the
    two."""
    try:
        return optimize_exhaustive(solution.scenario, tables=solution.tables, exclude=frozenset({solution.plan.layout}))
    except Infeasible:
        return None
