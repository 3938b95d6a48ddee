"""CP-SAT for the single-scenario search: the chosen candidate linked to its exact cost, a certificate
checked without CP-SAT, a second formulation for the double check, and the conflict search.

**The optimisation model** (``optimize``). Every candidate (a layout and a batch per replica) is
evaluated first, exactly and for the whole grid at once (``candidates.CandidateValues``): the rules that
reject it, and the smallest slowest decode stage over its layer splits, from which TTFT, TPOT, request
latency and the primary objective follow (each grows with that one stage time). The model is one boolean
per admissible candidate, exactly one true, and the linear objective ``sum((primary_c x C + c) x x_c)``
(C candidates; the tie-break rank ``c`` inside the objective, so one solve gives the unique optimum),
shifted by the smallest primary. Where the weights' sum would still leave 62 bits, two solves: the
primary's dense rank among its distinct values first, then the tie-break rank at the optimum.

Why this formulation (measured, see ``scripts/bench.py`` and the closing note of issue 12): the former
model kept the layer split and the latency as variables bounded below through ``only_enforce_if``, so its
linear relaxation was empty; the bound stayed at 0 until booleans were fixed and the search improved in
nanosecond steps (Llama-3.1-70B on 8 H100 ran for 12 minutes; 14,057 improving plans in 30 s on 16). It
also met a CP-SAT 9.15 presolve fault that returned OPTIMAL 42% above the optimum. With each candidate's
exact cost on its boolean, the relaxation's optimum is the optimum: CP-SAT proves it at the root, and
the whole build + solve costs less than the enumeration oracle's own per-candidate plan checks.

**Never on CP-SAT's word alone.** A plan is called proved when CP-SAT says OPTIMAL with the objective
equal to its exact bound *and* the optimality certificate (``certify.py``: for every candidate the rule
that rejects it or a lower bound above the optimum) re-checks in exact integers without CP-SAT. The
chosen candidate's value is also recomputed from its concrete split (``split.best_split`` and
``cost.estimate``, another code path). When the certificate fails, the solve is marked a solver fault,
the enumeration oracle's plan (checked rule by rule) is kept, and the disagreement is reported.

**The double check** (``--double-check``) builds a fresh model of another formulation, the layer split
as variables (``build_model``, the former formulation), with presolve off, and asks for any plan better than the claimed one in
``(primary, rank)`` order: INFEASIBLE confirms the claim.

**Infeasible**: candidates with the same set of rejecting rules are interchangeable, so the conflict model
holds one boolean per distinct set (a few dozen); each relaxable rule's literal forbids the sets it is in.
CP-SAT's assumption core, shrunk by deletion, is a minimal conflict. Relaxing the memory cap, the even
split or a balance target changes a candidate's best split, so each candidate appears once per variant
of those rules.

**One budget**: ``time_limit_s`` bounds the whole call (solve, conflict search); when it runs out before a
proof, the best plan found is returned, marked not proved, with its gap.

Reference: OR-Tools CP-SAT Python API (``CpModel.add_exactly_one``, ``minimize``, ``add_assumptions``,
``CpSolver.sufficient_assumptions_for_infeasibility``; parameter ``cp_model_presolve``),
developers.google.com/optimization; the presolve fault: issue 12 of this project (fuzz-368).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ortools
from ortools.sat.python import cp_model

import optimizer.search.certify as optimality  # the module (the package also exports a function named certify)
from optimizer.search.candidates import CandidateValues, Variant, variant_for
from optimizer.model.cost import estimate
from optimizer.errors import Infeasible, OptimizerError, SolveIncomplete
from optimizer.model.memory import layer_kinds
from optimizer.model.parallel import Layout, Plan
from optimizer.search.result import Evidence, Solution, Tables, build_tables, candidate_grid, primary_ns
from optimizer.search.rules import ComputeBalance, EvenLayers, LayoutRule, MemoryBalance, MemoryCap, Rule, SizeArrays, build_rules
from optimizer.inputs.scenario import Objective, Scenario
from optimizer.search.split import DENSE_FIRST_NOTE, best_split, leading_dense_layers
from optimizer.units import DEFAULT_BUDGET_S, NS_PER_S  # noqa: F401 (DEFAULT_BUDGET_S: re-exported, the budget of every search)

SOLVER_NAME = f"cp-sat {ortools.__version__}"
_INT_LIMIT = 1 << 62


# --- the split formulation: the layer split and the latencies as variables (the double check only) ----------

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
    l_middle_min: Any
    l_last: Any
    tpot_ns: Any
    request_latency_ns: Any
    ttft_ns: Any
    primary: Any  # the scenario objective's variable (ns)
    rank: Any  # sum(c x x[c]): the chosen layout's tie-break rank


def _bounds(scenario: Scenario, tables: Tables) -> tuple[int, int, int]:
    """Upper bounds (ns) for TTFT, TPOT and request latency over the grid; raises if they could overflow."""
    cost = tables.cost
    n = len(tables.layouts)
    ttft_ub = max((cost.ttft_ns(c) for c in range(n)), default=0)
    tpot_ub = max((cost.microbatches[c] * (cost.phase_total_ns(cost.decode, c) + cost.decode.stage_fixed_ns(c, cost.layouts[c].pp))
                   + cost.prefill_share_ns[c] for c in range(n)), default=0)
    latency_ub = ttft_ub + max(scenario.workload.output_tokens - 1, 0) * tpot_ub
    if latency_ub + 1 >= _INT_LIMIT:
        raise OptimizerError(
            f"estimated latencies up to {latency_ub / 1e9:.3g} s over {n} layouts exceed the solver's 62-bit range; "
            "the scenario is far outside what the cost model is meant for"
        )
    return ttft_ub, tpot_ub, latency_ub


def enforced_model(scenario: Scenario, tables: Tables, rules: tuple[Rule, ...]) -> _View:
    """``build_model`` with every rule's literal fixed to true: the model every solve but the conflict
    search works on."""
    view, literals = build_model(scenario, tables, rules)
    for lit in literals.values():
        view.model.add(lit == 1)
    return view


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
        l_middle_min=m.new_int_var(0, total, "l_middle_min"),
        l_last=m.new_int_var(0, total, "l_last"), tpot_ns=m.new_int_var(0, tpot_ub, "tpot_ns"),
        request_latency_ns=m.new_int_var(0, latency_ub, "request_latency_ns"),
        ttft_ns=m.new_int_var(0, ttft_ub, "ttft_ns"), primary=None, rank=sum(tables.rank(c) * xc for c, xc in enumerate(x)),
    )
    _add_costs(view, tpot_ub)
    literals = {}
    for rule in rules:
        lit = m.new_bool_var(f"enforce[{rule.name}]")
        rule.add_to_model(view, lit)
        literals[rule.name] = lit
    if scenario.search.objective is Objective.THROUGHPUT_PER_GPU:
        view.primary = _gpu_ns_per_request(view, latency_ub)
    else:
        view.primary = {
            Objective.TTFT: view.ttft_ns,
            Objective.TPOT: view.tpot_ns,
        }.get(scenario.search.objective, view.request_latency_ns)
    problem = m.validate()  # CP-SAT's own check, overflow included, before any solve
    if problem:
        raise OptimizerError(f"the scenario's numbers do not fit the solver's 64-bit model ({problem.strip()}); "
                             "check the byte counts and sizes for values far outside real hardware and models")
    return view, literals


def _gpu_ns_per_request(view: _View, latency_ub: int) -> Any:
    """``P = ceil(request_latency x GPUs / (DP x batch))`` of the chosen candidate (``result.primary_ns``).

    Where the ranges allow, one linear constraint per candidate, ``P x S_c >= latency x GPUs`` if chosen
    (minimising P makes it the ceiling exactly; CP-SAT propagates these well). On grids where ``P x S_c``
    could leave 62 bits, one integer division ``P = (latency x GPUs + S - 1) // S`` with ``S = sum(S_c
    x_c)`` instead: exact too, slower to prove."""
    m = view.model
    gpus = {layout.gpus for layout in view.layouts}
    if len(gpus) != 1:
        raise OptimizerError("internal error: throughput per GPU needs every candidate on the same GPU count")
    [g] = gpus
    sequences = [layout.dp * view.table.batch[c] for c, layout in enumerate(view.layouts)]
    top = latency_ub * g + max(sequences)
    if top >= _INT_LIMIT:
        raise OptimizerError(f"GPU-time per request up to {latency_ub * g / 1e9:.3g} GPU-s leaves the solver's 62-bit range")
    ub = max(-(-latency_ub * g // s) for s in sequences)
    primary = m.new_int_var(0, ub, "gpu_ns_per_request")
    if ub * max(sequences) < _INT_LIMIT:
        for xc, s in zip(view.x, sequences):
            m.add(primary * s >= view.request_latency_ns * g).only_enforce_if(xc)
        return primary
    seq = m.new_int_var(min(sequences), max(sequences), "sequences_in_flight")
    m.add(seq == sum(s * xc for s, xc in zip(sequences, view.x)))
    numerator = m.new_int_var(0, top, "latency_x_gpus_plus_s_minus_1")
    m.add(numerator == view.request_latency_ns * g + seq - 1)
    m.add_division_equality(primary, numerator, seq)
    return primary


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
        # cost.CostTable.decode_cycle_ns: every micro-batch pays each stage's fixed cost (its step overhead, a hop)
        m.add(view.tpot_ns >= cost.microbatches[c] * (slowest + dec.stage_fixed_ns(c, layout.pp)) + share).only_enforce_if(on)
        if layout.pp == 1:
            m.add(slowest >= all_stages - dec.stage_fixed_ns(c, 1)).only_enforce_if(on)  # the layers; its overhead is added above
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


class Deadline:
    """One wall-clock budget for a whole command: ``remaining()`` seconds (None: unbounded)."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.end = None if seconds is None else time.perf_counter() + seconds

    def remaining(self) -> float | None:
        return None if self.end is None else max(self.end - time.perf_counter(), 0.0)

    def expired(self) -> bool:
        return self.end is not None and time.perf_counter() >= self.end


def _solver(*, time_limit_s: float | None, seed: int, workers: int, presolve: bool = True) -> cp_model.CpSolver:
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = workers
    solver.parameters.random_seed = seed
    if not presolve:
        solver.parameters.cp_model_presolve = False
    if time_limit_s is not None:
        solver.parameters.max_time_in_seconds = max(time_limit_s, 0.01)
    return solver


def _codes(scenario: Scenario, values: CandidateValues, rules: tuple[Rule, ...]) -> tuple[Variant, list[str | None]]:
    """Per candidate, the first reason that rules out every plan of it, in certificate order (``certify``):
    layout rules, more stages than layers, an uneven split where even ones are required, the dense-first
    search space, memory, targets; None when it is admissible."""
    variant = variant_for(rules)
    codes: list[str | None] = [None] * values.n
    order: list[tuple[str, Any]] = []
    for rule in rules:
        if isinstance(rule, LayoutRule):
            order.append((rule.name, values.layout_fails(rule)))
    order += list(values.split_shape_fails(variant.even).items())
    if variant.memory:
        order.append(("memory_cap", ~values.exists(variant.unbalanced)))
    if variant.compute_balance:  # cumulative, in certificate order: no split within memory and balanced
        order.append(("compute_balance", ~values.exists(Variant(memory=variant.memory, even=variant.even, compute_balance=True))))
    if variant.memory_balance:
        order.append(("memory_balance", ~values.exists(variant)))
    for rule in rules:
        if rule.name in optimality.TARGET_CODES:
            order.append((rule.name, values.rejects(rule, variant)))
    for name, mask in order:
        for c in np.asarray(mask, dtype=bool).nonzero()[0]:
            if codes[c] is None:
                codes[c] = name
    return variant, codes


def optimize(
    scenario: Scenario,
    *,
    time_limit_s: float | None = None,
    seed: int = 0,
    workers: int = 1,
    tables: Tables | None = None,
    rules: tuple[Rule, ...] | None = None,
    double_check: bool = False,
    exclude: frozenset[Layout] = frozenset(),
    deadline: Deadline | None = None,
) -> Solution:
    """Find the plan that minimises the scenario's objective, proved by CP-SAT and by a certificate
    checked without it (see the module docstring).

    One worker and a fixed seed by default: the objective includes the layout's rank, so it has one
    minimiser, hence the same plan and the same JSON for any worker count.

    Args:
        time_limit_s: the budget of the whole call (solve and, when infeasible, the conflict search); if it
            stops the solve, the best plan found is returned with ``proved_optimal=False`` and its gap.
        rules: the rules to enforce (default: every rule of the scenario).
        double_check: after a proof, search the split formulation (fresh model, presolve off) for a better
            plan and record the status, which must be INFEASIBLE (else ``OptimizerError``).
        exclude: layouts the plan may not use.
        deadline: a budget shared with the caller (overrides ``time_limit_s``).

    Raises:
        Infeasible: no plan satisfies the rules; ``reasons`` names minimal conflicting sets of rules.
        SolveIncomplete: the budget ran out before a plan was found or infeasibility proved.
        OptimizerError: the scenario's numbers leave the solver's 62-bit range, or CP-SAT rejects the
            selection model. (A disagreement between the search's two evaluations of the chosen plan, or
            a certificate that fails, is not raised: ``evidence.solver_fault`` says it and the
            enumeration oracle's plan is returned.)
    """
    start = time.perf_counter()
    deadline = deadline or Deadline(time_limit_s)
    rules = build_rules(scenario) if rules is None else rules
    if tables is None:
        tables, grid_codes = structural_tables(scenario, rules)
    elif tables.ranks is not None:  # part of the grid (a caller's structural tables): the rest is rejected by layout rules
        grid_codes = _layout_codes(scenario, rules)[2]
    else:
        grid_codes = [None] * tables.candidates
    values = CandidateValues(scenario, tables)
    variant, codes = _codes(scenario, values, rules)
    n, rank = tables.candidates, tables.rank
    primary = values.metrics(variant)[3]
    admissible = [c for c in range(len(tables.layouts)) if codes[c] is None and tables.layouts[c] not in exclude]
    if not admissible:
        if exclude and any(codes[c] is None for c in range(len(tables.layouts))):
            raise Infeasible(["every layout that admits a plan is among the excluded ones"])
        if tables.ranks is not None:  # a relaxed layout rule may be part of a conflict: every candidate, then
            tables = build_tables(scenario)
            values = CandidateValues(scenario, tables)
        conflicts = disjoint_conflicts(scenario, tables, rules, deadline=deadline, values=values)
        raise Infeasible([" + ".join(describe_conflict(c, rules)) for c in conflicts], conflicts=conflicts)
    status, c, p_found, bound, solve_wall_s, size, stages = _minimise_table(
        admissible, primary, tables, deadline=deadline, seed=seed, workers=workers)
    if c is None:
        budget = "no budget" if deadline.seconds is None else f"budget {deadline.seconds:g} s"
        raise SolveIncomplete(f"CP-SAT stopped with status {status} after {solve_wall_s:.2f} s ({budget}) without a plan; "
                              "allow more time")
    plan = _canonical_plan(scenario, tables, c)
    objective = plan_objective(scenario, tables, plan, c)
    fault, certificate, check = None, None, None
    if objective != p_found * n + rank(c):
        fault = (f"search fault: candidate {rank(c)}'s objective is {objective} from its split and {p_found * n + rank(c)} "
                 "from the grid-wide evaluation; the enumeration oracle's plan is kept")
    cp_proved = fault is None and status == "OPTIMAL" and objective == bound
    if cp_proved:
        slowest = values.min_slowest_ns(variant)
        full_slowest: list[int | None] = [None] * n
        for row in range(len(tables.layouts)):
            grid_codes[rank(row)] = ("optimum" if row == c else codes[row]
                                     or ("excluded" if tables.layouts[row] in exclude else "bound"))
            full_slowest[rank(row)] = None if int(slowest[row]) < 0 else int(slowest[row])
        certificate = optimality.build(scenario, tables, chosen=rank(c), optimum=objective, codes=grid_codes,
                                       slowest_ns=full_slowest, excluded=exclude)
        check = optimality.check_optimality(scenario, plan, certificate, tables, excluded=exclude)
        if not check.holds:
            fault = (f"solver fault: CP-SAT's optimum {objective} over the search's exact values failed the certificate check "
                     f"({check.failures[0]}); the enumeration oracle's plan is kept")
    if fault is not None:
        from optimizer.search.exhaustive import optimize_exhaustive  # exhaustive does not import this module

        oracle = optimize_exhaustive(scenario, tables=tables, exclude=exclude)
        plan, objective, bound, certificate = oracle.plan, oracle.evidence.objective, oracle.evidence.objective, None
        status = "OPTIMAL"
    checked = None
    proved = (cp_proved and check is not None and check.holds) or fault is not None
    if double_check and proved:
        checked = _double_check(scenario, tables, rules, objective, deadline=deadline, seed=seed, workers=workers, exclude=exclude)
    evidence = Evidence(
        status=status,
        objective=objective,
        best_bound=bound,
        proved_optimal=proved,
        solver=SOLVER_NAME if fault is None else f"{SOLVER_NAME} (fault) + exhaustive",
        wall_s=time.perf_counter() - start,
        parameters={"random_seed": seed, "max_time_in_seconds": time_limit_s, "stages": stages},
        model_size=size,
        candidates=n,
        double_check=checked,
        workers=workers,
        solve_wall_s=solve_wall_s,
        certificate=certificate,
        certificate_check=None if check is None else check.summary(),
        solver_fault=fault,
    )
    return Solution(scenario=scenario, plan=plan, tables=tables, evidence=evidence)


def _minimise_table(admissible: list[int], primary: list[int], tables: Tables, *, deadline: Deadline, seed: int, workers: int):
    """Minimise ``primary[c] x C + rank(c)`` over the admissible rows with CP-SAT. Returns (status name,
    chosen row or None, its primary, the proved bound of the encoded objective, wall s, model size,
    stages).

    The weights are shifted by the smallest primary (the minimiser does not change; the bound is shifted
    back), and CP-SAT requires the sum of the objective's weights to stay in 64 bits: one solve when that
    sum is below 2^62; else the primary's dense rank among its distinct values first (an order-preserving
    relabelling, small whatever the magnitudes), then the tie-break rank at the optimum."""
    m = cp_model.CpModel()
    x = [m.new_bool_var(f"x[{c}]") for c in admissible]
    m.add_exactly_one(x)
    size = {"variables": len(x), "constraints": 1}
    wall = [0.0]

    def solve(weights: list[int]) -> tuple[str, int | None, int]:
        """Minimise ``sum(weights x x)``: (status, chosen row, exact bound)."""
        m.minimize(sum(w * xc for w, xc in zip(weights, x)))
        solver = _solver(time_limit_s=deadline.remaining(), seed=seed, workers=workers)
        status = solver.solve(m)
        wall[0] += solver.wall_time
        if status == cp_model.MODEL_INVALID:
            raise OptimizerError(f"internal error: CP-SAT rejected the selection model ({m.validate().strip()})")
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return solver.status_name(status), None, 0
        c = next(c for c, xc in zip(admissible, x) if solver.value(xc))
        return solver.status_name(status), c, int(solver.response_proto.inner_objective_lower_bound)

    n, rank = tables.candidates, tables.rank
    low = min(primary[c] for c in admissible)
    weights = [(primary[c] - low) * n + rank(c) for c in admissible]
    if sum(weights) < _INT_LIMIT:
        status, c, bound = solve(weights)
        return status, c, 0 if c is None else primary[c], bound + low * n, wall[0], size, "primary_ns x C + rank"
    stages = "dense rank of primary_ns, then rank"
    levels = sorted({primary[c] for c in admissible})
    level = {value: i for i, value in enumerate(levels)}
    status, c, level_bound = solve([level[primary[c]] for c in admissible])
    p_bound = levels[min(level_bound, len(levels) - 1)] if level_bound >= 0 else low
    if c is None or status != "OPTIMAL" or primary[c] != p_bound:
        return status, c, 0 if c is None else primary[c], p_bound * n, wall[0], size, stages
    p_found = primary[c]
    m.add(sum(xa for a, xa in zip(admissible, x) if primary[a] == p_found) == 1)
    status, c2, rank_bound = solve([rank(c) for c in admissible])
    if c2 is None:  # stage 1's plan is still a plan, not proved
        return "FEASIBLE", c, p_found, p_bound * n, wall[0], size, stages
    return status, c2, p_found, p_bound * n + rank_bound, wall[0], size, stages


def confirm_optimum(scenario: Scenario, tables: Tables, objective: int, *, time_limit_s: float | None = None,
                    deadline: Deadline | None = None) -> str:
    """Double-check a claimed optimum (from either solver) on the split formulation, fresh and without
    presolve; returns the status name, INFEASIBLE when the claim holds.

    Raises:
        OptimizerError: a plan with a smaller objective exists (the claim is wrong).
    """
    return _double_check(scenario, tables, build_rules(scenario), objective, deadline=deadline or Deadline(time_limit_s), seed=0,
                         workers=1)


def _double_check(scenario: Scenario, tables: Tables, rules: tuple[Rule, ...], objective: int, *, deadline: Deadline,
                  seed: int, workers: int, exclude: frozenset[Layout] = frozenset()) -> str:
    """Search the split formulation (a fresh model: the layer split and the latencies as variables, no
    presolve, nothing shared with the solve it checks) for a plan with ``(primary, rank) < (p, c)``,
    ``objective = p x C + c``; returns the status name, which must be INFEASIBLE (UNKNOWN if the budget
    ran out first). Always on the whole grid, so that the layout rules are re-applied by this model too."""
    if tables.ranks is not None:
        tables = build_tables(scenario)
    n = tables.candidates
    p, c = divmod(objective, n)
    view = enforced_model(scenario, tables, rules)
    for row, layout in enumerate(tables.layouts):
        if layout in exclude:
            view.model.add(view.x[row] == 0)
    better_primary = view.model.new_bool_var("double_check_better_primary")
    view.model.add(view.primary <= p - 1).only_enforce_if(better_primary)
    view.model.add(view.primary == p).only_enforce_if(better_primary.Not())
    view.model.add(view.rank <= c - 1).only_enforce_if(better_primary.Not())
    solver = _solver(time_limit_s=deadline.remaining(), seed=seed, workers=workers, presolve=False)
    status = solver.solve(view.model)
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        found = int(solver.value(view.primary)) * n + int(solver.value(view.rank))
        raise OptimizerError(f"internal error: the double check found objective {found} below the proved optimum {objective}")
    return solver.status_name(status)


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
    primary = primary_ns(scenario.search.objective, ttft_ns=est.ttft_ns, tpot_ns=est.tpot_ns, request_latency_ns=est.request_latency_ns,
                         gpus=plan.layout.gpus, sequences=plan.layout.dp * plan.batch_per_replica)
    return primary * tables.candidates + tables.rank(c)


def is_feasible(scenario: Scenario, *, tables: Tables | None = None, rules: tuple[Rule, ...] | None = None) -> bool:
    """Does any plan satisfy ``rules`` (default: all of the scenario's)? Every candidate evaluated against
    them, as the optimisation model is built (``candidates.CandidateValues.admissible``).

    Raises:
        OptimizerError: the scenario's numbers would overflow the solver's integers.
    """
    rules = build_rules(scenario) if rules is None else rules
    tables = tables or structural_tables(scenario, rules)[0]
    if not tables.layouts:
        return False
    _, ok = CandidateValues(scenario, tables).admissible(rules)
    return bool(ok.any())


def _layout_codes(scenario: Scenario, rules: tuple[Rule, ...]) -> tuple[tuple[Layout, ...], tuple[int, ...] | None, list[str | None]]:
    """The candidate grid (layouts, batches) and, per candidate, the first layout rule of ``rules`` that
    rejects it (``holds_grid``), None where none does."""
    grid, batches = candidate_grid(scenario)
    arrays = SizeArrays.of(grid)
    codes: list[str | None] = [None] * len(grid)
    for rule in rules:
        if isinstance(rule, LayoutRule):
            for c in (~np.asarray(rule.holds_grid(scenario, arrays), dtype=bool)).nonzero()[0]:
                if codes[c] is None:
                    codes[c] = rule.name
    return grid, batches, codes


def structural_tables(scenario: Scenario, rules: tuple[Rule, ...]) -> tuple[Tables, list[str | None]]:
    """Tables of only the candidates whose layout passes every layout rule of ``rules`` (the grid-wide
    ``holds_grid``; ``Tables.ranks`` keeps their grid positions), and for every candidate of the grid the
    first layout rule that rejects it (None for those kept). The memory tables of the rest are never
    built: at 5,040 GPUs 22,400 of 171,500 candidates remain."""
    grid, batches, codes = _layout_codes(scenario, rules)
    kept = tuple(c for c, code in enumerate(codes) if code is None)
    tables = build_tables(scenario, tuple(grid[c] for c in kept), None if batches is None else tuple(batches[c] for c in kept),
                          ranks=kept, grid_size=len(grid))
    return tables, codes


def best_primary_ns(scenario: Scenario, *, rules: tuple[Rule, ...] | None = None) -> int | None:
    """The proved optimum of the scenario's primary objective (ns) under ``rules``, or None if none admit
    a plan. ``rules`` may leave out any rule (the diagnosis lifts memory or targets to see how far they
    must move): a lifted memory cap or even split lets each candidate take its best split without it.

    Raises:
        SolveIncomplete: CP-SAT did not prove the optimum (never expected: the model proves at the root).
        OptimizerError: the scenario's numbers would overflow the solver's integers.
    """
    rules = build_rules(scenario) if rules is None else rules
    tables = structural_tables(scenario, rules)[0]
    if not tables.layouts:
        return None
    values = CandidateValues(scenario, tables)
    variant, ok = values.admissible(rules)
    admissible = [int(c) for c in ok.nonzero()[0]]
    if not admissible:
        return None
    primary = values.metrics(variant)[3]
    status, c, found, bound, *_ = _minimise_table(admissible, primary, tables, deadline=Deadline(None), seed=0, workers=1)
    if status != "OPTIMAL" or c is None or found * tables.candidates + tables.rank(c) != bound:
        raise SolveIncomplete(f"CP-SAT returned {status} without a proof")
    return found


def _conflict_model(values: CandidateValues, rules: tuple[Rule, ...]) -> tuple[Any, dict[str, Any]]:
    """The feasibility model over rejection signatures (see the module docstring): one boolean per distinct
    set of relaxable rules that reject some (candidate, variant), exactly one true, and each rule's
    literal forbidding the sets it belongs to. Returns the model and ``{rule name: literal}``."""
    fixed = [r for r in rules if not r.relaxable]
    relaxable = [r for r in rules if r.relaxable]
    has_memory = any(isinstance(r, MemoryCap) for r in relaxable)
    has_even = any(isinstance(r, EvenLayers) for r in relaxable)
    has_compute = any(isinstance(r, ComputeBalance) for r in relaxable)
    has_bytes = any(isinstance(r, MemoryBalance) for r in relaxable)
    base = None
    for rule in fixed:
        if isinstance(rule, LayoutRule):
            bad = values.layout_fails(rule)
            base = ~bad if base is None else base & ~bad
    signatures: set[tuple[int, ...]] = set()
    both = (True, False)
    for memory, even, compute, bytes_ in itertools.product(both if has_memory else (False,), both if has_even else (False,),
                                                           both if has_compute else (False,), both if has_bytes else (False,)):
        variant = Variant(memory=memory, even=even, compute_balance=compute, memory_balance=bytes_)
        alive = values.exists(variant) if base is None else values.exists(variant) & base
        if not alive.any():
            continue
        masks = [values.rejects(r, variant) for r in relaxable]
        for c in alive.nonzero()[0]:
            signatures.add(tuple(i for i, mask in enumerate(masks) if mask[c]))
    m = cp_model.CpModel()
    literals = {r.name: m.new_bool_var(f"enforce[{r.name}]") for r in relaxable}
    chosen = {sig: m.new_bool_var(f"signature{list(sig)}") for sig in sorted(signatures)}
    if chosen:
        m.add_exactly_one(list(chosen.values()))
    else:
        m.add_bool_or([])  # no candidate at all: infeasible whatever is relaxed
    for i, rule in enumerate(relaxable):
        members = [var for sig, var in chosen.items() if i in sig]
        if members:
            m.add(sum(members) == 0).only_enforce_if(literals[rule.name])
    return m, literals


def minimal_conflict(scenario: Scenario, tables: Tables, rules: tuple[Rule, ...], *,
                     time_limit_s: float | None = None, deadline: Deadline | None = None,
                     values: CandidateValues | None = None) -> tuple[str, ...]:
    """A minimal set of rule names that together admit no plan: CP-SAT's assumption core, then deletion
    (drop one rule, re-solve; keep it out if still infeasible). One worker, so the core is reproducible.
    Rules that are not ``relaxable`` (they define what a plan is) are always enforced and never named.
    Empty when those alone admit no plan, in rule order otherwise. Within the budget: a step that runs
    out keeps its rule (the set still conflicts, it may just not be minimal), and a first solve that runs
    out names every relaxable rule.

    Raises:
        OptimizerError: the rules admit a plan (there is no conflict to explain).
    """
    deadline = deadline or Deadline(time_limit_s)
    values = values or CandidateValues(scenario, tables)
    model, literals = _conflict_model(values, rules)
    by_index = {lit.index: name for name, lit in literals.items()}
    order = [r.name for r in rules]
    model.add_assumptions(list(literals.values()))
    solver = _solver(time_limit_s=deadline.remaining(), seed=0, workers=1)
    first = solver.solve(model)
    if first in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise OptimizerError("the rules admit a plan: there is no conflict to explain")
    if first != cp_model.INFEASIBLE:  # out of time: every relaxable rule together is still a conflict
        return tuple(sorted(literals, key=order.index))
    core = [by_index[i] for i in solver.sufficient_assumptions_for_infeasibility()]
    needed = list(core)
    for name in core:
        if deadline.expired():
            break
        trial = [r for r in needed if r != name]
        model.clear_assumptions()
        model.add_assumptions([literals[r] for r in trial])
        solver = _solver(time_limit_s=deadline.remaining(), seed=0, workers=1)
        if solver.solve(model) == cp_model.INFEASIBLE:
            needed = trial
    return tuple(sorted(needed, key=order.index))


def disjoint_conflicts(scenario: Scenario, tables: Tables, rules: tuple[Rule, ...], *,
                       time_limit_s: float | None = None, deadline: Deadline | None = None,
                       values: CandidateValues | None = None) -> tuple[tuple[str, ...], ...]:
    """Minimal conflicts with no rule in common: find one, set its rules aside, look again among the
    rest, until the rest admit a plan. A plan needs at least one rule of every conflict relaxed, so this
    names every independent reason (e.g. the weights do not fit *and*, separately, TPOT is out of reach)."""
    deadline = deadline or Deadline(time_limit_s)
    values = values or CandidateValues(scenario, tables)
    conflicts: list[tuple[str, ...]] = []
    remaining = rules
    while True:
        try:
            conflict = minimal_conflict(scenario, tables, remaining, deadline=deadline, values=values)
        except OptimizerError:
            break
        conflicts.append(conflict)
        if not conflict or deadline.expired():
            break
        remaining = tuple(r for r in remaining if r.name not in conflict)
    return tuple(conflicts)


def describe_conflict(conflict: tuple[str, ...], rules: tuple[Rule, ...]) -> list[str]:
    """One line per rule of a conflict: its name and formula."""
    if not conflict:
        return ["the search space itself admits no plan (" + DENSE_FIRST_NOTE + ")"]
    formulas = {r.name: r.formula for r in rules}
    return [f"{name}: {formulas[name]}" for name in conflict]


@dataclass(frozen=True)
class DisaggregatedOptimum:
    """CP-SAT's answer for the disaggregated search (``disagg.py`` holds the meaning): indices into the
    prefill and decode candidate lists, the instance counts, the primary objective and its proof."""

    prefill: int
    decode: int
    prefill_instances: int
    decode_instances: int
    primary: int
    bound: int
    status: str
    proved_optimal: bool
    wall_s: float
    model_size: dict[str, int]


def minimise_disaggregated(*, num_gpus: int, prefill: list[tuple[int, int, int, int]], decode: list[tuple[int, int, int, int]],
                           decode_steps: int, ttft_bound_ns: int | None, time_limit_s: float | None = None, seed: int = 0,
                           workers: int = 1) -> DisaggregatedOptimum | None:
    """The disaggregated pool split with the fewest GPU-ns per request, proved.

    ``prefill[i] = (gpus, prefill_ns, kv_send_ns, replicas)`` per instance candidate, ``decode[j] = (gpus,
    step_ns, kv_receive_ns, sequences)``. Choose one of each, ``r_p`` and ``r_d`` instances with
    ``r_p g_p + r_d g_d <= N``; the request rate is ``min(r_p R / prefill_ns, r_d S / (steps x step_ns))``
    (R prompts prefilled at once, one per DP replica), so the GPU-time per request is
    ``P = max(ceil(N prefill_ns / (r_p R)), ceil(N steps step_ns / (r_d S)))``, written exactly as
    ``(P r_p) R >= N prefill_ns`` and ``(P r_d) S >= N steps step_ns`` (products of two
    integer variables by ``AddMultiplicationEquality``). TTFT ``= prefill_ns + max(send, receive) <=
    ttft_bound_ns``. Then, with P fixed, the tie-break: smallest prefill index, decode index, ``r_p``,
    then largest ``r_d``. None when no split is feasible.

    Raises:
        OptimizerError: the products would leave the solver's 62-bit range.
    """
    start = time.perf_counter()
    n = num_gpus
    m = cp_model.CpModel()
    x = [m.new_bool_var(f"prefill[{i}]") for i in range(len(prefill))]
    y = [m.new_bool_var(f"decode[{j}]") for j in range(len(decode))]
    if not x or not y:
        return None
    m.add_exactly_one(x)
    m.add_exactly_one(y)
    r_p = m.new_int_var(1, n, "prefill_instances")
    r_d = m.new_int_var(1, n, "decode_instances")
    g_p = m.new_int_var(1, n, "prefill_instance_gpus")
    g_d = m.new_int_var(1, n, "decode_instance_gpus")
    m.add(g_p == sum(g * xi for (g, _, _, _), xi in zip(prefill, x)))
    m.add(g_d == sum(g * yj for (g, _, _, _), yj in zip(decode, y)))
    pool_p, pool_d = m.new_int_var(1, n, "prefill_gpus"), m.new_int_var(1, n, "decode_gpus")
    m.add_multiplication_equality(pool_p, [r_p, g_p])
    m.add_multiplication_equality(pool_d, [r_d, g_d])
    m.add(pool_p + pool_d <= n)
    # An upper bound on the optimum: the best single-instance pair that fits (r_p = r_d = 1). Its value
    # max(A_p, B_d) grows with B_d, so each prefill candidate needs only the first fitting decode
    # candidate in B order (exact, and not the P x D scan that cost as much as the solve).
    by_b = sorted((-(-n * decode_steps * st // seqs), g_dj, recv) for g_dj, st, recv, seqs in decode)
    ub = None
    for g_pi, pf, send, reps in prefill:
        if ttft_bound_ns is not None and pf + send > ttft_bound_ns:
            continue
        a = -(-n * pf // reps)
        if ub is not None and a >= ub:
            continue
        for b, g_dj, recv in by_b:
            if ub is not None and b >= ub:
                break
            if g_pi + g_dj <= n and (ttft_bound_ns is None or pf + recv <= ttft_bound_ns):
                ub = max(a, b) if ub is None else min(ub, max(a, b))
                break
    if ub is None:
        return None
    widest = max(max(s for *_, s in decode), max(r for *_, r in prefill))
    if widest * ub * n >= _INT_LIMIT:
        raise OptimizerError(f"GPU-time per request up to {ub / 1e9:.3g} GPU-s on {n} GPUs leaves the solver's 62-bit range")
    primary = m.new_int_var(0, ub, "gpu_ns_per_request")
    q_p, q_d = m.new_int_var(0, ub * n, "p_times_rp"), m.new_int_var(0, ub * n, "p_times_rd")
    m.add_multiplication_equality(q_p, [primary, r_p])
    m.add_multiplication_equality(q_d, [primary, r_d])
    for (_, pf, _, replicas), xi in zip(prefill, x):
        m.add(q_p * replicas >= n * pf).only_enforce_if(xi)
    for (_, st, _, s), yj in zip(decode, y):
        m.add(q_d * s >= n * decode_steps * st).only_enforce_if(yj)
    if ttft_bound_ns is not None:
        pf_var = m.new_int_var(0, max(pf for _, pf, _, _ in prefill), "prefill_ns")
        m.add(pf_var == sum(pf * xi for (_, pf, _, _), xi in zip(prefill, x)))
        for (_, pf, send, _), xi in zip(prefill, x):
            m.add(pf + send <= ttft_bound_ns).only_enforce_if(xi)
        for (_, _, recv, _), yj in zip(decode, y):
            m.add(pf_var + recv <= ttft_bound_ns).only_enforce_if(yj)
    size = {"variables": len(m.proto.variables), "constraints": len(m.proto.constraints)}
    problem = m.validate()
    if problem:
        raise OptimizerError(f"the disaggregated model does not fit the solver's 64-bit range ({problem.strip()})")
    m.minimize(primary)
    solver = _solver(time_limit_s=time_limit_s, seed=seed, workers=workers)
    status = solver.solve(m)
    if status == cp_model.INFEASIBLE:
        return None
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise SolveIncomplete(f"CP-SAT stopped ({solver.status_name(status)}) before finding a disaggregated split")
    found, bound = int(solver.value(primary)), int(solver.response_proto.inner_objective_lower_bound)
    proved = status == cp_model.OPTIMAL and found == bound
    first_status = solver.status_name(status)
    if proved:  # the tie-break, with the optimum fixed
        m.add(primary == found)
        idx_p = sum(i * xi for i, xi in enumerate(x))
        idx_d = sum(j * yj for j, yj in enumerate(y))
        k2 = (n + 1) ** 2
        m.minimize(idx_p * (len(decode) * k2) + idx_d * k2 + r_p * (n + 1) + (n - r_d))
        status = solver.solve(m)
        if status != cp_model.OPTIMAL:
            raise SolveIncomplete(f"CP-SAT did not close the disaggregated tie-break ({solver.status_name(status)})")
    return DisaggregatedOptimum(
        prefill=next(i for i, xi in enumerate(x) if solver.value(xi)), decode=next(j for j, yj in enumerate(y) if solver.value(yj)),
        prefill_instances=int(solver.value(r_p)), decode_instances=int(solver.value(r_d)), primary=found, bound=bound,
        status=first_status, proved_optimal=proved, wall_s=time.perf_counter() - start, model_size=size,
    )


@dataclass(frozen=True)
class CapacityOptimum:
    """CP-SAT's fewest-GPU answer: chosen candidate indices, instance counts, GPUs, proof."""

    choice: tuple[int, ...]
    instances: tuple[int, ...]
    gpus: int
    proved_optimal: bool
    wall_s: float


def minimise_gpus_for_rate(*, num_gpus: int, rate_num: int, rate_den: int, pools: list[list[tuple[int, int, int]]],
                           ttft: tuple[int, list[int], list[int], list[int]] | None = None,
                           time_limit_s: float | None = None) -> CapacityOptimum | None:
    """The fewest GPUs that carry ``rate_num / rate_den`` requests per second, proved.

    ``pools`` is one list per pool (aggregated: one pool; disaggregated: prefill then decode) of
    candidates ``(gpus, work_ns, in_flight)``: an instance completes ``in_flight`` requests every
    ``work_ns`` (aggregated: request latency; prefill: one prompt per DP replica; decode: ``(OSL - 1)``
    steps). Each pool picks one candidate and ``r`` instances with ``r x in_flight x 1e9 x den >= num x
    work_ns`` (the pool keeps up with the rate, exactly), and ``sum r x gpus <= N``; minimise that sum,
    then the candidate indices and counts (deterministic). ``ttft = (bound, prefill_ns, send_ns,
    receive_ns)`` couples a prefill and a decode choice: ``prefill_ns + max(send, receive) <= bound``.
    None when no choice fits in N GPUs.
    """
    start = time.perf_counter()
    n = num_gpus
    m = cp_model.CpModel()
    xs, rs, used = [], [], []
    for k, pool in enumerate(pools):
        if not pool:
            return None
        x = [m.new_bool_var(f"pool{k}[{i}]") for i in range(len(pool))]
        m.add_exactly_one(x)
        r = m.new_int_var(1, n, f"instances{k}")
        g = m.new_int_var(1, n, f"instance_gpus{k}")
        m.add(g == sum(gi * xi for (gi, _, _), xi in zip(pool, x)))
        total = m.new_int_var(1, n, f"pool_gpus{k}")
        m.add_multiplication_equality(total, [r, g])
        for (_, work, inflight), xi in zip(pool, x):
            lhs, rhs = inflight * NS_PER_S * rate_den, rate_num * work
            if lhs * n >= _INT_LIMIT or rhs >= _INT_LIMIT:
                raise OptimizerError("the request rate and step times leave the solver's 62-bit range")
            m.add(r * lhs >= rhs).only_enforce_if(xi)
        xs.append(x)
        rs.append(r)
        used.append(total)
    if ttft is not None:
        bound, prefill_ns, send_ns, receive_ns = ttft
        pf = m.new_int_var(0, max(prefill_ns), "prefill_ns")
        m.add(pf == sum(v * xi for v, xi in zip(prefill_ns, xs[0])))
        for v, s, xi in zip(prefill_ns, send_ns, xs[0]):
            m.add(v + s <= bound).only_enforce_if(xi)
        for v, yj in zip(receive_ns, xs[1]):
            m.add(pf + v <= bound).only_enforce_if(yj)
    gpus = sum(used)
    m.add(gpus <= n)
    m.minimize(gpus)
    solver = _solver(time_limit_s=time_limit_s, seed=0, workers=1)
    status = solver.solve(m)
    if status == cp_model.INFEASIBLE:
        return None
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise SolveIncomplete(f"CP-SAT stopped ({solver.status_name(status)}) before a capacity plan")
    best = int(solver.value(gpus))
    proved = status == cp_model.OPTIMAL and best == int(solver.response_proto.inner_objective_lower_bound)
    if proved:  # tie-break with the optimum fixed: earliest candidates, then fewest instances
        m.add(gpus == best)
        rank, weight = 0, 1
        for x, r in reversed(list(zip(xs, rs))):
            rank += weight * r
            weight *= n + 1
            rank += weight * sum(i * xi for i, xi in enumerate(x))
            weight *= len(x) + 1
        m.minimize(rank)
        status = solver.solve(m)
        if status != cp_model.OPTIMAL:
            raise SolveIncomplete(f"CP-SAT did not close the capacity tie-break ({solver.status_name(status)})")
    return CapacityOptimum(choice=tuple(next(i for i, xi in enumerate(x) if solver.value(xi)) for x in xs),
                           instances=tuple(int(solver.value(r)) for r in rs), gpus=best, proved_optimal=proved,
                           wall_s=time.perf_counter() - start)


# --- fleets: several services over several GPU pools ----------------------------------------------------


@dataclass(frozen=True)
class FleetIntegers:
    """The fleet problem in integers only (``fleet.py`` builds it and holds the meaning).

    - ``type_*``: per instance type, its pool, GPUs per instance, objective weight per instance (micro-dollars
      per hour or GPUs), service (``group``), and ``slots`` = request slots per instance x 10^12, the
      right-hand side of Little's law in the units below; ``instances``: engine instances per type (what
      ``group_max`` bounds).
    - ``bucket_rate``: per bucket the rate to carry in milli-requests per second (headroom included).
    - ``routes``: ``(bucket, ((type, work_ns), ...))``: a way to carry a bucket's requests: one aggregated
      type, or a prefill type and a decode type; a request of the bucket holds one slot of each for
      ``work_ns``. ``route_side``: 0 for such a whole route; for disaggregated traffic split in halves,
      +1 a decode half (it counts towards the bucket) and -1 a prefill half. ``route_level``: a decode
      half's KV-receive level, a prefill half's highest level it may pair with; ``level_group`` the
      (service, bucket) of each level, levels of a group consecutive and ascending. Per group the halves'
      rates are equal, and for every level ``l`` the decode rate at levels >= l is at most the prefill
      rate that may serve level l or above (Hall's condition for nested sets: then a pairing of the rates
      exists in integers, every pair within the TTFT). Load of a type: ``sum over routes of rate_mrps x work_ns <= count x slots``, exactly
      (rate x time = slots busy: Little's law, scaled by 10^3 x 10^9).
    - ``pool_gpus``, ``group_max`` (None: no limit).
    """

    pool_gpus: tuple[int, ...]
    type_pool: tuple[int, ...]
    type_gpus: tuple[int, ...]
    type_weight: tuple[int, ...]
    type_slots: tuple[int, ...]
    type_group: tuple[int, ...]
    type_instances: tuple[int, ...]
    group_max: tuple[int | None, ...]
    bucket_rate: tuple[int, ...]
    routes: tuple[tuple[int, tuple[tuple[int, int], ...]], ...]
    route_side: tuple[int, ...] = ()
    route_level: tuple[int, ...] = ()
    level_group: tuple[int, ...] = ()

    def side(self, r: int) -> int:
        return self.route_side[r] if self.route_side else 0


@dataclass(frozen=True)
class FleetOptimum:
    """CP-SAT's answer: instances per type, rate per route (mrps), the objective and its bound, and the
    status of the primary solve (the tie-break solve keeps the objective fixed)."""

    counts: tuple[int, ...]
    route_rates: tuple[int, ...]
    status: str
    objective: int
    best_bound: int
    solver_optimal: bool
    build_s: float
    solve_s: float
    model_size: dict[str, int]


TIE_BREAK_DETERMINISTIC_S = 1.0  # CP-SAT deterministic-time budget of each fleet tie-break solve


def solve_fleet(problem: FleetIntegers, *, time_limit_s: float | None = None, seed: int = 0,
                workers: int = 1) -> FleetOptimum | None:
    """The cheapest integer allocation: instance counts per type and routed rates per route, every bucket
    carried, every type within its slots, every pool within its GPUs, every service within its instances;
    minimise ``sum weight x count``, then (with the optimum fixed, each within a deterministic budget) the
    GPUs, then the routes in use. None when CP-SAT proves that no allocation exists.

    ``solver_optimal`` is CP-SAT's OPTIMAL with objective == bound; it is never the proof on its own
    (``fleet.check_allocation`` re-checks the allocation without CP-SAT).

    Raises:
        OptimizerError: a product leaves the solver's 62-bit range.
        SolveIncomplete: the time limit stopped the search before any allocation.
    """
    start = time.perf_counter()
    m = cp_model.CpModel()
    p = problem
    n_types = len(p.type_pool)
    need: list[int] = [0] * n_types  # most slot-ns any allocation could need per type: bounds the counts
    for bucket, legs in p.routes:
        for t, work in legs:
            need[t] += p.bucket_rate[bucket] * work
    counts = []
    for t in range(n_types):
        ub = min(p.pool_gpus[p.type_pool[t]] // p.type_gpus[t], -(-need[t] // p.type_slots[t]))
        if ub * p.type_slots[t] >= _INT_LIMIT or need[t] >= _INT_LIMIT:
            raise OptimizerError(f"instance type {t}: rates x times leave the solver's 62-bit range")
        counts.append(m.new_int_var(0, ub, f"count[{t}]"))
    rates = [m.new_int_var(0, p.bucket_rate[b], f"route[{r}]") for r, (b, _) in enumerate(p.routes)]
    for b, rate in enumerate(p.bucket_rate):
        members = [rates[r] for r, (rb, _) in enumerate(p.routes) if rb == b and p.side(r) >= 0]
        if not members:
            return None
        m.add(sum(members) == rate)
    halves = [r for r in range(len(p.routes)) if p.side(r)]
    for group in sorted(set(p.level_group)):
        mine = [r for r in halves if p.level_group[p.route_level[r]] == group]
        m.add(sum(p.side(r) * rates[r] for r in mine) == 0)
        for level in (lv for lv, g in enumerate(p.level_group) if g == group):
            decode = [rates[r] for r in mine if p.side(r) > 0 and p.route_level[r] >= level]
            prefill = [rates[r] for r in mine if p.side(r) < 0 and p.route_level[r] >= level]
            if decode:
                m.add(sum(decode) <= sum(prefill))
    load: list[list[Any]] = [[] for _ in range(n_types)]
    for r, (_, legs) in enumerate(p.routes):
        for t, work in legs:
            load[t].append(work * rates[r])
    for t in range(n_types):
        if load[t]:
            m.add(sum(load[t]) <= p.type_slots[t] * counts[t])
        else:
            m.add(counts[t] == 0)
    for k, gpus in enumerate(p.pool_gpus):
        members = [p.type_gpus[t] * counts[t] for t in range(n_types) if p.type_pool[t] == k]
        if members:
            m.add(sum(members) <= gpus)
    for g, limit in enumerate(p.group_max):
        members = [p.type_instances[t] * counts[t] for t in range(n_types) if p.type_group[t] == g]
        if limit is not None and members:
            m.add(sum(members) <= limit)
    objective = sum(w * c for w, c in zip(p.type_weight, counts))
    m.minimize(objective)
    problem_text = m.validate()
    if problem_text:
        raise OptimizerError(f"the fleet model does not fit the solver's 64-bit range ({problem_text.strip()})")
    size = {"variables": len(m.proto.variables), "constraints": len(m.proto.constraints)}
    build_s = time.perf_counter() - start
    deadline = Deadline(time_limit_s)
    solver = _solver(time_limit_s=deadline.remaining(), seed=seed, workers=workers)
    status = solver.solve(m)
    if status == cp_model.INFEASIBLE:
        return None
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        raise SolveIncomplete(f"CP-SAT stopped ({solver.status_name(status)}) before any fleet allocation")
    values = ([int(solver.value(c)) for c in counts], [int(solver.value(r)) for r in rates])
    found = sum(w * c for w, c in zip(p.type_weight, values[0]))  # exact, from the values, not the float objective
    bound = int(solver.response_proto.inner_objective_lower_bound)
    first_status = solver.status_name(status)
    optimal = status == cp_model.OPTIMAL and found == bound
    if optimal and not deadline.expired():
        # The tie-break, with the optimum fixed: fewest GPUs, then fewest routes in use (no bucket spread
        # thinly over spare slots). Each within a deterministic budget (CP-SAT's ``max_deterministic_time``,
        # not wall time), so the same input gives the same allocation on any machine.
        m.add(objective == found)
        m.minimize(sum(g * c for g, c in zip(p.type_gpus, counts)))
        solver = _solver(time_limit_s=deadline.remaining(), seed=seed, workers=workers)
        solver.parameters.max_deterministic_time = TIE_BREAK_DETERMINISTIC_S
        if solver.solve(m) in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            values = ([int(solver.value(c)) for c in counts], [int(solver.value(r)) for r in rates])
            for c, v in zip(counts, values[0]):
                m.add(c == v)
            used = [m.new_bool_var(f"used[{r}]") for r in range(len(rates))]
            for r, (b, _) in enumerate(p.routes):
                m.add(rates[r] <= p.bucket_rate[b] * used[r])
            m.minimize(sum(used))
            solver = _solver(time_limit_s=deadline.remaining(), seed=seed, workers=workers)
            solver.parameters.max_deterministic_time = TIE_BREAK_DETERMINISTIC_S
            if not deadline.expired() and solver.solve(m) in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                values = (values[0], [int(solver.value(r)) for r in rates])
    return FleetOptimum(counts=tuple(values[0]), route_rates=tuple(values[1]), status=first_status, objective=found,
                        best_bound=bound, solver_optimal=optimal, build_s=build_s, solve_s=time.perf_counter() - start - build_s,
                        model_size=size)
