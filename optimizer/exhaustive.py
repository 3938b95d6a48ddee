"""The enumeration oracle: every grid layout, every rule, no CP-SAT. Tests compare its optimum with
CP-SAT's; ``optimize --solver exhaustive`` runs it on the same rules and integer tables.

For each layout it takes the split with the smallest slowest decode stage (``split.best_split``): every
objective and every service target is monotone in that stage time, so if that split fails a rule, every
split of the layout does. The layout's plan is then checked with every rule's own ``check``.
"""

from __future__ import annotations

import time

from optimizer.errors import Infeasible
from optimizer.parallel import Layout, Plan
from optimizer.result import Evidence, Solution, Tables, build_tables, primary_ns
from optimizer.rules import LayoutRule, build_rules
from optimizer.scenario import Scenario
from optimizer.split import DENSE_FIRST_NOTE, best_split, leading_dense_layers
from optimizer.verify import plan_context

SOLVER_NAME = "exhaustive"


def optimize_exhaustive(scenario: Scenario, *, tables: Tables | None = None, exclude: frozenset[Layout] = frozenset()) -> Solution:
    """The optimum by enumeration, with the same objective encoding as CP-SAT (``primary x C + rank``),
    over the grid less the ``exclude``d layouts.

    Raises:
        Infeasible: no layout passes; ``reasons`` lists each rule with how many layouts it rejects.
    """
    start = time.perf_counter()
    tables = tables or build_tables(scenario)
    rules = build_rules(scenario)
    layout_rules = [r for r in rules if isinstance(r, LayoutRule)]
    n = len(tables.layouts)
    best: tuple[int, Plan] | None = None
    rejected: dict[str, int] = {}
    for c, layout in enumerate(tables.layouts):
        if layout in exclude:
            continue
        failed = [r.name for r in layout_rules if not r.evaluate(scenario, layout).holds]
        split = None if failed else best_split(scenario=scenario, table=tables.cost, memory=tables.memory, c=c)
        if not failed and split is None:
            failed = ["layer_split or memory_cap"]
        if not failed:
            plan = Plan(layout=layout, layers_per_stage=split, batch_per_replica=tables.cost.batch[c],
                        notes=(DENSE_FIRST_NOTE,) if leading_dense_layers(scenario) and len(split) > 1 else ())
            ctx = plan_context(scenario, plan, tables)
            failed = [chk.name for r in rules for chk in r.check(ctx) if not chk.holds]
            if not failed:
                est = ctx.estimate
                value = primary_ns(scenario.search.objective, ttft_ns=est.ttft_ns, tpot_ns=est.tpot_ns,
                                   request_latency_ns=est.request_latency_ns, gpus=layout.gpus,
                                   sequences=layout.dp * plan.batch_per_replica) * n + c
                if best is None or value < best[0]:
                    best = (value, plan)
        for name in failed[:1]:  # the first rule that rejects the layout, in certificate order
            rejected[name] = rejected.get(name, 0) + 1
    if best is None:
        raise Infeasible([f"{name}: rejects {count} of {n} layouts" for name, count in rejected.items()])
    evidence = Evidence(
        status="OPTIMAL", objective=best[0], best_bound=best[0], proved_optimal=True, solver=SOLVER_NAME,
        wall_s=time.perf_counter() - start, parameters={}, model_size={}, candidates=n,
    )
    return Solution(scenario=scenario, plan=best[1], tables=tables, evidence=evidence)




def runner_up(solution: Solution) -> Solution | None:
    """The best plan on any other layout than ``solution``'s, by enumeration over the same tables (exact,
    and fast where CP-SAT is slow: with the optimum's layout excluded, its per-layout model can take
    seconds to close the gap), or None when no other layout is feasible. The review report compares the
    two."""
    try:
        return optimize_exhaustive(solution.scenario, tables=solution.tables, exclude=frozenset({solution.plan.layout}))
    except Infeasible:
        return None
