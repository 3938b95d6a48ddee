"""Fleet planning: several services over several GPU pools, the cheapest allocation that meets every
service's targets, proved by CP-SAT and re-checked in exact integers without it.

**Instance types.** For each service, pool and instance size (powers of two that fit one node or tile
whole nodes, at most ``disagg.MAX_INSTANCE_GPUS``), every layout and batch the single-instance search
admits (``CandidateValues.admissible``: structure and memory rules, the same tables and best-split
evaluation as ``optimize``) is evaluated on every bucket's ISL/OSL. A type is ``(service, pool, role,
layout, batch)`` with its layer split:
- ``aggregated``: a request holds one of ``DP x batch`` slots for the request latency; it carries a bucket
  when TTFT <= target and TPOT <= target at that batch (the ``capacity`` command's model).
- ``prefill`` / ``decode`` (services with ``disaggregated: true``): the prefill instance holds one of DP
  slots for the prefill time, the decode instance one of ``DP x batch`` slots for ``(OSL - 1)`` decode
  steps; a pair carries a bucket when prefill + max(KV send, KV receive) <= TTFT (each side's inter-node
  link: the pools may differ, as in Helix, Mei et al., ASPLOS 2025) and the step <= TPOT (``disagg.py``'s
  model). Prefill on one GPU kind and decode on another is allowed like any other pairing; the model
  routes prefill and decode halves per bucket and pairs them through Hall's condition (``Route``).
A type is dropped when ``k = its GPUs // the other's`` instances of another type of the same service,
pool and role carry at least its rate on every bucket it carries (and, for disaggregated roles, no
slower per prompt and KV; with ``max_instances``, no more engine instances), so any of its instances can
be swapped for them; the counts before and after are reported.

**Units, exact.** Rates in milli-requests per second (mrps; a bucket's rate x (1 + headroom) rounded up,
conservatively); times in integer ns from the cost model (its floats are rounded up once, there).
Little's law in integers: ``sum over routes of rate_mrps x work_ns <= count x slots x 10^12`` per type
(requests in flight = rate x time). A type's capacity on one bucket, ``floor(slots x 10^12 / work_ns)``
mrps, is printed and used by the greedy baseline; the model itself needs no division. Instances serving
a mix of buckets share their slots in proportion (Mélange's assumption, Griggs et al., 2024,
arXiv 2404.14527, section 5: the ILP over request-size slices).

**The model** (``solve.solve_fleet``): integer counts per type, integer rates per route, each bucket's
rate routed exactly, pool GPUs, per-service instance limits and pool pins; minimise micro-dollars per
hour (``cost_per_gpu_hour`` exact decimal x 10^6 x GPUs) or GPUs; then, the optimum fixed, the fewest
GPUs and the fewest routes in use, each within a deterministic CP-SAT budget (same input, same plan).
Packing: sizes that divide a node are powers of two, so any set of them whose GPUs fit the pool's free
nodes packs into them (first-fit decreasing; the checker builds the placement), and whole-node instances
take whole nodes: the pool's GPU count is the only packing constraint, and the check shows a placement.

**The proof** (``check_allocation``): every used type's plan is re-certified on every bucket it carries
(``verify.certify``: every structural and memory rule, fresh tables), its times re-derived from that
certificate's estimate (not from the tables the model was built on), the targets compared as integers,
each type's load, each bucket's coverage, each pool's GPUs, pins and instance limits re-summed, and a
node placement built. ``proved_optimal`` needs CP-SAT's OPTIMAL at its bound *and* that check; for small
fleets the exhaustive oracle (``exhaustive_fleet``) must agree too.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from optimizer.search.candidates import CandidateValues
from optimizer.model.engines import instances as engine_instances
from optimizer.errors import Infeasible, OptimizerError, SolveIncomplete
from optimizer.search.fleet_check import Allocation, CheckEntry, _entry, check_allocation, exhaustive_fleet, objective_value
from optimizer.inputs.fleet import Fleet, FleetObjective, Pool, Service
from optimizer.search.fleet_types import (MICRO_DOLLARS, ROLES, SLOT_SCALE, FleetTypes, InstanceType, Route, bucket_times,
                                   carried_mrps, floor_ns, instance_sizes, service_scenario)
from optimizer.model.parallel import Layout
from optimizer.search.result import build_tables
from optimizer.search.rules import build_rules
from optimizer.search.solve import SOLVER_NAME, Deadline, FleetIntegers, solve_fleet, structural_tables
from optimizer.search.split import best_split


def _evaluate(service_index: int, service: Service, pool_index: int, pool: Pool, role: str) -> list[InstanceType]:
    """Every (layout, batch) of every size on every bucket, judged for the whole grid at once as the
    single-scenario search judges it (``solve.structural_tables``, ``CandidateValues.admissible`` and
    ``metrics``: every structural and memory rule, the best layer split's TTFT, TPOT and latency). One type
    per (layout, batch); a PP > 1 aggregated type's split is resolved once it is used (``resolve_splits``);
    the disaggregated roles take the split of their first bucket (their KV transfer depends on it)."""
    found: dict[tuple[Layout, int], dict[str, Any]] = {}
    order: list[tuple[Layout, int]] = []
    total_layers = service.model.num_hidden_layers
    for g in instance_sizes(pool):
        for b, bucket in enumerate(service.buckets):
            sub = service_scenario(service, pool, bucket, g, role)
            rules = build_rules(sub)
            tables = structural_tables(sub, rules)[0]
            if not tables.layouts:
                continue
            values = CandidateValues(sub, tables)
            variant, ok = values.admissible(rules)
            ttft, tpot, latency, _ = values.metrics(variant)
            for c in ok.nonzero()[0]:
                layout, batch = tables.layouts[c], tables.cost.batch[c]
                key = (layout, batch)
                entry = found.get(key)
                if entry is None:
                    split = (total_layers,) if layout.pp == 1 else None
                    if split is None and role != "aggregated":
                        split = best_split(scenario=sub, table=tables.cost, memory=tables.memory, c=c)
                    entry = found[key] = {"split": split, "times": [None] * len(service.buckets),
                                          "instances": engine_instances(sub, layout)}
                    order.append(key)
                entry["times"][b] = bucket_times(role, service, bucket, sub, ttft_ns=ttft[c], tpot_ns=tpot[c], latency_ns=latency[c],
                                                  prefill_share_ns=tables.cost.prefill_share_ns[c], layout=layout,
                                                  split=entry["split"])
    return [InstanceType(service_index, pool_index, role, layout, batch, found[(layout, batch)]["split"],
                         tuple(found[(layout, batch)]["times"]), found[(layout, batch)]["instances"])
            for layout, batch in order if any(found[(layout, batch)]["times"])]


def resolve_splits(fleet: Fleet, ft: FleetTypes, counts: tuple[int, ...]) -> None:
    """Give every used aggregated PP > 1 type a layer split: the best split (``split.best_split``) of the
    first bucket it can carry. The check re-derives its times with that split on every bucket it carries,
    so a split that serves one bucket worse than the model assumed shows as a failing check, never as a
    silent claim."""
    for t, (typ, count) in enumerate(zip(ft.types, counts)):
        if not count or typ.layers_per_stage is not None:
            continue
        b = next(b for b, times in enumerate(typ.times) if times is not None)
        service, pool = fleet.services[typ.service], fleet.pools[typ.pool]
        sub = service_scenario(service, pool, service.buckets[b], typ.gpus, typ.role)
        tables = build_tables(sub, (typ.layout,), (typ.batch_per_replica,))
        split = best_split(scenario=sub, table=tables.cost, memory=tables.memory, c=0)
        if split is None:
            raise OptimizerError(f"internal error: type {t} has no layer split on bucket {service.buckets[b].name}")
        ft.types[t] = replace(typ, layers_per_stage=split)


def _dominates(a: InstanceType, b: InstanceType, *, limited: bool) -> bool:
    """``k = b.gpus // a.gpus`` instances of ``a`` can replace one of ``b`` (same service, pool, role): no
    more GPUs, at least its rate on every bucket it carries, no slower KV transfer (and, for prefill, no
    slower prompt), and, when the service limits its instances (``limited``), no more engine instances."""
    if a.gpus > b.gpus:
        return False
    k = b.gpus // a.gpus
    if limited and k * a.engine_instances > b.engine_instances:
        return False
    for ta, tb in zip(a.times, b.times):
        if tb is None:
            continue
        if ta is None or ta.work_ns * b.slots > tb.work_ns * a.slots * k or ta.kv_ns > tb.kv_ns:
            return False
        if a.role == "prefill" and ta.work_ns > tb.work_ns:
            return False
    return True


def prune(types: list[InstanceType], limited: set[int] = frozenset()) -> list[InstanceType]:
    """Drop dominated types, keeping the first of equals (input order: deterministic). ``limited``: the
    services with ``max_instances``.

    Dominance is transitive (sizes are powers of two, so ``k`` multiplies along a chain), so a type is
    dominated exactly when an undominated type dominates it: the first pass compares each type, in order
    of GPUs, with the survivors so far only; the second settles survivors of equal size among themselves."""
    order = sorted(range(len(types)), key=lambda i: (types[i].service, types[i].pool, types[i].role, types[i].gpus, i))
    frontier: dict[tuple[int, int, str], list[int]] = {}
    for i in order:
        t = types[i]
        group = frontier.setdefault((t.service, t.pool, t.role), [])
        lim = t.service in limited
        if not any(_dominates(types[j], t, limited=lim) for j in group):
            group.append(i)
    kept = []
    for group in frontier.values():
        for i in group:
            t, lim = types[i], types[i].service in limited
            if not any(j != i and _dominates(types[j], t, limited=lim) and (j < i or not _dominates(t, types[j], limited=lim))
                       for j in group):
                kept.append(i)
    return [types[i] for i in sorted(kept)]


def enumerate_types(fleet: Fleet, *, pools: tuple[int, ...] | None = None, cache: dict | None = None) -> FleetTypes:
    """Instance types of every service on every allowed pool (``pools``: only these, pins ignored; the
    single-kind baseline), pruned, and the routes over them. ``cache`` keeps evaluations between calls
    (keyed by service, pool, role and the pool's instance sizes)."""
    start = time.perf_counter()
    cache = {} if cache is None else cache
    raw: list[InstanceType] = []
    for s, service in enumerate(fleet.services):
        for k, pool in enumerate(fleet.pools):
            allowed = k in pools if pools is not None else (service.pools is None or pool.name in service.pools)
            if not allowed:
                continue
            for role in ROLES if service.disaggregated else ROLES[:1]:
                key = (s, k, role, instance_sizes(pool))
                if key not in cache:
                    cache[key] = _evaluate(s, service, k, pool, role)
                raw.extend(cache[key])
    types = prune(raw, {s for s, service in enumerate(fleet.services) if service.max_instances is not None})
    routes: list[Route] = []
    levels: list[tuple[int, int, int]] = []
    for s, service in enumerate(fleet.services):
        ttft = floor_ns(service.targets.ttft_s)
        for b in range(len(service.buckets)):
            mine = [(i, t) for i, t in enumerate(types) if t.service == s and t.times[b] is not None]
            routes += [Route(s, b, (i,)) for i, t in mine if t.role == "aggregated"]
            prefill = [(i, t.times[b]) for i, t in mine if t.role == "prefill"]
            decode = [(j, t.times[b]) for j, t in mine if t.role == "decode"]
            base = len(levels)
            kvs = sorted({times.kv_ns for _, times in decode})
            levels += [(s, b, k) for k in kvs]
            for j, td in decode:
                routes.append(Route(s, b, (j,), 1, base + kvs.index(td.kv_ns)))
            for i, tp in prefill:
                reach = [n for n, k in enumerate(kvs) if tp.work_ns + max(tp.kv_ns, k) <= ttft]
                if reach:
                    routes.append(Route(s, b, (i,), -1, base + max(reach)))
    return FleetTypes(types, routes, len(raw), time.perf_counter() - start, levels)


def weight(fleet: Fleet, pool: Pool, gpus: int) -> int:
    """Objective units per instance: micro-dollars per hour (exact) or GPUs."""
    if fleet.objective is FleetObjective.GPUS:
        return gpus
    value = pool.cost_per_gpu_hour * MICRO_DOLLARS * gpus
    if value.denominator != 1:
        raise OptimizerError(f"pool {pool.name}: cost_per_gpu_hour {pool.cost_per_gpu_hour} is finer than a micro-dollar")
    return int(value)


def integers(fleet: Fleet, ft: FleetTypes, *, pool_gpus: tuple[int, ...] | None = None) -> FleetIntegers:
    """The integer problem CP-SAT solves (``solve.FleetIntegers``)."""
    buckets = [(s, b) for s, service in enumerate(fleet.services) for b in range(len(service.buckets))]
    index = {key: i for i, key in enumerate(buckets)}
    types = ft.types
    return FleetIntegers(
        pool_gpus=pool_gpus or tuple(p.num_gpus for p in fleet.pools),
        type_pool=tuple(t.pool for t in types), type_gpus=tuple(t.gpus for t in types),
        type_weight=tuple(weight(fleet, fleet.pools[t.pool], t.gpus) for t in types),
        type_slots=tuple(t.slots * SLOT_SCALE for t in types), type_group=tuple(t.service for t in types),
        type_instances=tuple(t.engine_instances for t in types),
        group_max=tuple(s.max_instances for s in fleet.services),
        bucket_rate=tuple(carried_mrps(fleet.services[s].buckets[b], fleet.headroom) for s, b in buckets),
        routes=tuple((index[(r.service, r.bucket)], tuple((t, types[t].times[r.bucket].work_ns) for t in r.types))
                     for r in ft.routes),
        route_side=tuple(r.side for r in ft.routes), route_level=tuple(r.level for r in ft.routes),
        level_group=tuple(index[(s, b)] for s, b, _ in ft.levels),
    )


# --- the plan -----------------------------------------------------------------------------------------


@dataclass
class FleetPlan:
    """The allocation with its evidence, the single-kind baselines and the greedy rule's answer."""

    fleet: Fleet
    types: FleetTypes
    allocation: Allocation
    objective: int
    best_bound: int
    status: str
    solver_optimal: bool
    checks: list[CheckEntry]
    proved_optimal: bool
    oracle: int | None | str
    build_s: float
    solve_s: float
    model_size: dict[str, int]
    baseline: dict[str, int | None] = field(default_factory=dict)  # pool name -> best single-kind objective
    baseline_proved: dict[str, bool] = field(default_factory=dict)  # pool name -> that objective proved optimal
    greedy: int | None = None
    solver_fault: str | None = None

    @property
    def check_holds(self) -> bool:
        return all(c.holds for c in self.checks)


def plan_fleet(fleet: Fleet, *, time_limit_s: float | None = 60.0, baselines: bool = True, oracle: bool = True,
               workers: int = 1) -> FleetPlan:
    """The cheapest allocation of ``fleet`` with its proof (module docstring), the best single-kind
    allocation per pool and the greedy rule beside it.

    Raises:
        Infeasible: no allocation carries every bucket within the pools (proved by CP-SAT).
        SolveIncomplete: the time limit stopped CP-SAT before any allocation.
    """
    deadline = Deadline(time_limit_s)  # one budget for the whole call: the plan first, then the baselines
    cache: dict = {}
    ft = enumerate_types(fleet, cache=cache)
    uncovered = [f"{service.name}/{bucket.name}: no instance type on its pools meets TTFT <= {float(service.targets.ttft_s):g} s "
                 f"and TPOT <= {float(service.targets.tpot_s):g} s (memory, structure or targets)"
                 for s, service in enumerate(fleet.services) for b, bucket in enumerate(service.buckets)
                 if not any(r.service == s and r.bucket == b and r.side >= 0 for r in ft.routes)]
    if uncovered:
        raise Infeasible(uncovered)
    problem = integers(fleet, ft)
    opt = solve_fleet(problem, time_limit_s=deadline.remaining(), workers=workers)
    if opt is None:
        raise Infeasible([f"no allocation of {len(ft.types)} instance types carries every bucket within the pools "
                          "(CP-SAT: INFEASIBLE)"])
    alloc = Allocation(opt.counts, opt.route_rates)
    resolve_splits(fleet, ft, opt.counts)
    checks = check_allocation(fleet, ft, alloc)
    recomputed = objective_value(fleet, ft, opt.counts)
    checks.append(_entry("objective recomputed from the prices", recomputed, "==", opt.objective))
    checks.append(_entry("objective >= CP-SAT bound", opt.objective, ">=", opt.best_bound))
    oracle_value = exhaustive_fleet(problem) if oracle else "not run"
    fault = None
    if isinstance(oracle_value, int) and oracle_value != opt.objective and opt.solver_optimal:
        fault = f"solver fault: CP-SAT proved {opt.objective}, the exhaustive oracle finds {oracle_value}"
    holds = all(c.holds for c in checks)
    plan = FleetPlan(fleet=fleet, types=ft, allocation=alloc, objective=opt.objective, best_bound=opt.best_bound,
                     status=opt.status, solver_optimal=opt.solver_optimal, checks=checks,
                     proved_optimal=opt.solver_optimal and holds and fault is None, oracle=oracle_value,
                     build_s=opt.build_s, solve_s=opt.solve_s, model_size=opt.model_size, solver_fault=fault)
    if baselines:
        plan.baseline, plan.baseline_proved = single_pool_baselines(fleet, deadline=deadline, cache=cache)
        plan.greedy = greedy(fleet, ft)
    return plan


def single_pool_baselines(fleet: Fleet, *, deadline: Deadline | None = None,
                          cache: dict | None = None) -> tuple[dict[str, int | None], dict[str, bool]]:
    """Per pool: the optimum with every service on that pool's GPU kind alone (pins ignored), with as
    many of its GPUs as the whole fleet has (Mélange's "best single GPU type"), None when none carries
    every bucket or the budget ran out first; and whether each is proved (a value the budget left
    unproved is still an allocation's cost: an upper bound on that pool's optimum)."""
    deadline = deadline or Deadline(None)
    total = sum(p.num_gpus for p in fleet.pools)
    values: dict[str, int | None] = {}
    proved: dict[str, bool] = {}
    for k, pool in enumerate(fleet.pools):
        wide = fleet.model_copy(update={"pools": tuple(p.model_copy(update={"num_nodes": max(total // p.gpus_per_node, 1)})
                                                       if i == k else p for i, p in enumerate(fleet.pools))})
        ft = enumerate_types(wide, pools=(k,), cache=cache)
        opt = None
        if not deadline.expired():
            try:
                opt = solve_fleet(integers(wide, ft), time_limit_s=deadline.remaining())
            except SolveIncomplete:
                opt = None
        values[pool.name] = None if opt is None else opt.objective
        proved[pool.name] = opt is not None and opt.solver_optimal
    return values, proved


def greedy(fleet: Fleet, ft: FleetTypes) -> int | None:
    """The rule a person would use: bucket by bucket (services and buckets in file order), the aggregated
    type whose instances carry the bucket for the least cost (cheapest GPU per request first; ties: lower
    cost per unit of capacity) that still fits its pool, each instance serving that bucket alone. The objective,
    or None when the rule runs out of GPUs."""
    free = [p.num_gpus for p in fleet.pools]
    used_instances = [0] * len(fleet.services)
    total = 0
    for s, service in enumerate(fleet.services):
        for b, bucket in enumerate(service.buckets):
            need = carried_mrps(bucket, fleet.headroom)
            options = []
            for t in ft.types:
                if t.service != s or t.role != "aggregated" or t.times[b] is None:
                    continue
                cap = t.capacity_mrps(b)
                if cap == 0:
                    continue
                w = weight(fleet, fleet.pools[t.pool], t.gpus)
                n = -(-need // cap)
                options.append((n * w, Fraction(w, cap), ft.types.index(t), t, n, w))
            placed = False
            for _, _, _, t, n, w in sorted(options, key=lambda o: o[:3]):
                limit = service.max_instances
                engines = n * t.engine_instances
                if n * t.gpus <= free[t.pool] and (limit is None or used_instances[s] + engines <= limit):
                    free[t.pool] -= n * t.gpus
                    used_instances[s] += engines
                    total += n * w
                    placed = True
                    break
            if not placed:
                return None
    return total


__all__ = ["FleetPlan", "plan_fleet", "enumerate_types", "check_allocation", "exhaustive_fleet", "SOLVER_NAME"]
