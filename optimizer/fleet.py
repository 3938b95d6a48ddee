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

from optimizer.disagg import MAX_INSTANCE_GPUS, _kv_transfer_ns
from optimizer.engines import instances as engine_instances
from optimizer.errors import Infeasible, OptimizerError, SolveIncomplete
from optimizer.candidates import CandidateValues
from optimizer.fleet_input import Bucket, Fleet, FleetObjective, Pool, Service
from optimizer.parallel import Layout, Plan
from optimizer.result import build_tables
from optimizer.rules import build_rules
from optimizer.split import best_split
from optimizer.scenario import Objective, Scenario, Search, Targets, Workload
from optimizer.solve import SOLVER_NAME, Deadline, FleetIntegers, solve_fleet, structural_tables
from optimizer.verify import certify, plan_context

MRPS_PER_RPS = 1000  # rates in milli-requests per second
SLOT_SCALE = MRPS_PER_RPS * 10**9  # mrps x ns -> slots x 10^12
MICRO_DOLLARS = 10**6
ORACLE_LIMIT = 200_000  # count vectors the exhaustive oracle enumerates at most before it declines

ROLES = ("aggregated", "prefill", "decode")


def floor_ns(seconds: Fraction) -> int:
    """A target in seconds as integer ns, rounded down (a time within it is within the target)."""
    value = seconds * 10**9
    return value.numerator // value.denominator


def carried_mrps(bucket: Bucket, headroom: Fraction) -> int:
    """The rate a bucket must be carried at, with headroom, in mrps, rounded up (conservative)."""
    value = bucket.request_rate_per_s * (1 + headroom) * MRPS_PER_RPS
    return -(-value.numerator // value.denominator)


def instance_sizes(pool: Pool) -> tuple[int, ...]:
    """Powers of two up to ``MAX_INSTANCE_GPUS`` and the pool's size that fit inside one node or tile whole
    nodes (an instance never shares a node partially with itself)."""
    sizes, g = [], 1
    while g <= min(pool.num_gpus, MAX_INSTANCE_GPUS):
        if (g <= pool.gpus_per_node and pool.gpus_per_node % g == 0) or g % pool.gpus_per_node == 0:
            sizes.append(g)
        g *= 2
    return tuple(sizes)


def service_scenario(service: Service, pool: Pool, bucket: Bucket, gpus: int, role: str) -> Scenario:
    """The single-instance scenario one type is judged on: ``gpus`` GPUs of ``pool``, the bucket's ISL and
    OSL, no targets (the fleet compares them itself), the batch chosen (aggregated, decode) or one prompt
    per replica (prefill)."""
    objective = Objective.TTFT if role == "prefill" else Objective.THROUGHPUT_PER_GPU
    return Scenario(
        name=f"{service.name}@{pool.name}.{bucket.name}.{gpus}gpu.{role}",
        cluster=pool.cluster(gpus), model=service.model, engine=service.engine, targets=Targets(),
        workload=Workload(concurrent_sequences=1 if role == "prefill" else service.engine.max_num_seqs,
                          input_tokens=bucket.input_tokens, output_tokens=bucket.output_tokens,
                          weight_dtype=service.weight_dtype, kv_cache_dtype=service.kv_cache_dtype),
        search=Search(objective=objective, gpu_memory_utilization=service.gpu_memory_utilization),
    )


@dataclass(frozen=True)
class BucketTimes:
    """One type on one bucket, integer ns: ``work_ns`` a request holds a slot (aggregated: request
    latency; prefill: prefill time; decode: (OSL - 1) steps), TTFT and TPOT at full load, KV transfer."""

    work_ns: int
    ttft_ns: int
    tpot_ns: int
    kv_ns: int = 0


@dataclass(frozen=True)
class InstanceType:
    """One kind of engine instance a service can run on a pool, with its times per bucket it can carry."""

    service: int
    pool: int
    role: str
    layout: Layout
    batch_per_replica: int
    layers_per_stage: tuple[int, ...] | None  # None until resolved (aggregated PP > 1: ``resolve_splits``)
    times: tuple[BucketTimes | None, ...]  # per bucket of the service; None: not carried
    engine_instances: int = 1  # engine processes it launches as (engines.instances: DP replicas of a dense model)

    @property
    def gpus(self) -> int:
        return self.layout.gpus

    @property
    def slots(self) -> int:
        """Requests one instance holds at once: DP prompts (prefill) or DP x batch sequences."""
        return self.layout.dp * (1 if self.role == "prefill" else self.batch_per_replica)

    def capacity_mrps(self, b: int) -> int:
        """Requests per instance on bucket ``b`` alone, mrps, rounded down (0 when not carried)."""
        times = self.times[b]
        return 0 if times is None else self.slots * SLOT_SCALE // times.work_ns

    def plan(self) -> Plan:
        return Plan(layout=self.layout, layers_per_stage=self.layers_per_stage, batch_per_replica=self.batch_per_replica)


def _bucket_times(role: str, service: Service, bucket: Bucket, sub: Scenario, *, ttft_ns: int, tpot_ns: int, latency_ns: int,
                  prefill_share_ns: int, layout: Layout, split: tuple[int, ...] | None) -> BucketTimes | None:
    """One candidate's times on one bucket, None when the service's targets rule it out. ``split`` is needed
    for the KV transfer of the disaggregated roles (each GPU sends or receives its stage's layers)."""
    ttft, tpot = floor_ns(service.targets.ttft_s), floor_ns(service.targets.tpot_s)
    if role == "aggregated":
        if ttft_ns > ttft or tpot_ns > tpot:
            return None
        return BucketTimes(latency_ns, ttft_ns, tpot_ns)
    kv = _kv_transfer_ns(sub, layout, split)
    if role == "prefill":
        if ttft_ns + kv > ttft:
            return None
        return BucketTimes(ttft_ns, ttft_ns, 0, kv)
    step = tpot_ns - prefill_share_ns
    if step > tpot or kv > ttft:
        return None
    return BucketTimes((bucket.output_tokens - 1) * step, 0, step, kv)


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
                entry["times"][b] = _bucket_times(role, service, bucket, sub, ttft_ns=ttft[c], tpot_ns=tpot[c], latency_ns=latency[c],
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


@dataclass(frozen=True)
class Route:
    """A way to carry bucket ``bucket`` of service ``service``: one aggregated type (``side`` 0), or half
    of a disaggregated one: a decode type (``side`` +1, it carries the bucket) or a prefill type (``side``
    -1). Levels (``FleetTypes.levels``) are the bucket's distinct KV receive times ``K`` in ascending
    order: a decode half sits at its own; a prefill half at the highest ``K`` with ``prefill + max(KV
    send, K) <= TTFT`` (it may pair with any decode at that level or below). The model then needs
    ``P + D`` rate variables per bucket instead of ``P x D`` pairs, with Hall's condition per level
    (``solve.FleetIntegers``); ``check_allocation`` re-checks it on re-derived times."""

    service: int
    bucket: int
    types: tuple[int, ...]
    side: int = 0
    level: int = -1


@dataclass
class FleetTypes:
    """The instance types after pruning, the routes over them, and the counts before pruning."""

    types: list[InstanceType]
    routes: list[Route]
    before: int
    evaluate_s: float
    levels: list[tuple[int, int, int]] = field(default_factory=list)  # (service, bucket, K = KV receive ns), ascending per bucket


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


@dataclass(frozen=True)
class CheckEntry:
    """One re-checked constraint: ``lhs op rhs`` in integers."""

    name: str
    lhs: int
    op: str
    rhs: int
    holds: bool
    detail: str = ""


def _entry(name: str, lhs: int, op: str, rhs: int, detail: str = "") -> CheckEntry:
    holds = {"<=": lhs <= rhs, ">=": lhs >= rhs, "==": lhs == rhs}[op]
    return CheckEntry(name, lhs, op, rhs, holds, detail)


@dataclass
class Allocation:
    """Instances per type and mrps per route (indices into a ``FleetTypes``)."""

    counts: tuple[int, ...]
    route_rates: tuple[int, ...]


def place(pool: Pool, sizes: list[int]) -> list[tuple[tuple[int, ...], tuple[int, ...]]] | None:
    """A node placement: per instance (in the given order) the pool's node indices it occupies and its GPU
    indices on each (all of them for whole-node instances); instances of a node or less first-fit
    decreasing into nodes, whole-node instances on whole free nodes. None when they do not fit. With
    power-of-two sizes that divide the node, this fits whenever the GPUs do (module docstring)."""
    per = pool.gpus_per_node
    free = [per] * pool.num_nodes
    out: dict[int, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        g = sizes[i]
        if g >= per:
            nodes = [n for n, f in enumerate(free) if f == per][:g // per]
            if len(nodes) < g // per or g % per:
                return None
            for n in nodes:
                free[n] = 0
            out[i] = (tuple(nodes), tuple(range(per)))
        else:
            node = next((n for n, f in enumerate(free) if f >= g), None)
            if node is None:
                return None
            first = per - free[node]
            free[node] -= g
            out[i] = ((node,), tuple(range(first, first + g)))
    return [out[i] for i in range(len(sizes))]


def placement(fleet: Fleet, ft: FleetTypes, counts: tuple[int, ...]) -> dict[int, list[tuple[tuple[int, ...], tuple[int, ...]]]] | None:
    """Per used type, where each of its instances sits (``place`` per pool, types in order); None when a
    pool's instances do not fit."""
    out: dict[int, list] = {}
    for k, pool in enumerate(fleet.pools):
        owners = [t for t, typ in enumerate(ft.types) if typ.pool == k for _ in range(counts[t])]
        spots = place(pool, [ft.types[t].gpus for t in owners])
        if spots is None:
            return None
        for t, spot in zip(owners, spots):
            out.setdefault(t, []).append(spot)
    return out


def recheck_times(fleet: Fleet, t: InstanceType, b: int) -> tuple[BucketTimes | None, list[str]]:
    """Type ``t`` on bucket ``b`` re-derived from scratch: its plan certified on fresh tables (every
    structural and memory rule) and its times read from that certificate's estimate. Returns the times
    (None if the targets fail) and the names of failing rules."""
    service, pool = fleet.services[t.service], fleet.pools[t.pool]
    bucket = service.buckets[b]
    sub = service_scenario(service, pool, bucket, t.gpus, t.role)
    own = build_tables(sub, (t.layout,), (t.batch_per_replica,))  # fresh tables of this one candidate
    ctx = plan_context(sub, t.plan(), own)
    cert = certify(sub, t.plan(), own)
    failing = [c.name for c in cert.failing]
    if failing:
        return None, failing
    est = cert.estimate
    return _bucket_times(t.role, service, bucket, sub, ttft_ns=est.ttft_ns, tpot_ns=est.tpot_ns, latency_ns=est.request_latency_ns,
                         prefill_share_ns=ctx.table.prefill_share_ns[ctx.index], layout=t.layout, split=t.layers_per_stage), []


def check_allocation(fleet: Fleet, ft: FleetTypes, alloc: Allocation) -> list[CheckEntry]:
    """Every constraint of the allocation in exact integers, no solver, times re-derived (module docstring)."""
    checks: list[CheckEntry] = []
    times: dict[tuple[int, int], BucketTimes | None] = {}
    used_buckets = {(t, r.bucket) for r, rate in zip(ft.routes, alloc.route_rates) if rate for t in r.types}
    for t, b in sorted(used_buckets):
        typ = ft.types[t]
        got, failing = recheck_times(fleet, typ, b)
        name = f"{fleet.services[typ.service].name}/{fleet.pools[typ.pool].name}/{typ.role}[{t}] on {fleet.services[typ.service].buckets[b].name}"
        checks.append(_entry(f"rules {name}", len(failing), "==", 0, ", ".join(failing) or "every rule of verify.certify holds"))
        checks.append(_entry(f"targets {name}", 0 if got is not None else 1, "==", 0,
                             "TTFT and TPOT within the service's targets" if got else "a target fails"))
        times[(t, b)] = got
    required = {}
    for s, service in enumerate(fleet.services):
        for b, bucket in enumerate(service.buckets):
            required[(s, b)] = carried_mrps(bucket, fleet.headroom)
    carried: dict[tuple[int, int], int] = {key: 0 for key in required}
    load = [0] * len(ft.types)
    halves: dict[tuple[int, int], list[tuple[int, int, int]]] = {}  # (service, bucket) -> (side, type, rate)
    for route, rate in zip(ft.routes, alloc.route_rates):
        if rate < 0:
            checks.append(_entry("route rate >= 0", rate, ">=", 0))
        if not rate:
            continue
        legs = [ft.types[t] for t in route.types]
        roles = sorted(leg.role for leg in legs)
        shape = {0: (["aggregated"], ["decode", "prefill"]), 1: (["decode"],), -1: (["prefill"],)}.get(route.side, ())
        if any(leg.service != route.service for leg in legs) or roles not in shape:
            checks.append(_entry("route shape", 1, "==", 0, "one aggregated type, a prefill and a decode type, or a half of the named role"))
        if route.side >= 0:
            carried[(route.service, route.bucket)] += rate
        if route.side:
            halves.setdefault((route.service, route.bucket), []).append((route.side, route.types[0], rate))
        for t in route.types:
            got = times.get((t, route.bucket))
            load[t] += rate * (got.work_ns if got else 0)
        if len(legs) == 2 and all(times.get((t, route.bucket)) for t in route.types):
            p, d = sorted(route.types, key=lambda t: ft.types[t].role != "prefill")
            tp, td = times[(p, route.bucket)], times[(d, route.bucket)]
            checks.append(_entry(f"ttft with KV transfer, route {p}->{d}", tp.work_ns + max(tp.kv_ns, td.kv_ns), "<=",
                                 floor_ns(fleet.services[route.service].targets.ttft_s), "prefill + max(KV send, KV receive), ns"))
    for (s_, b_), members in sorted(halves.items()):
        checks += pairing_checks(fleet.services[s_], fleet.services[s_].buckets[b_].name, members, times, b_)
    for (s, b), need in required.items():
        checks.append(_entry(f"coverage {fleet.services[s].name}/{fleet.services[s].buckets[b].name}", carried[(s, b)], ">=", need,
                             "mrps routed >= rate x (1 + headroom), rounded up"))
    for t, typ in enumerate(ft.types):
        if alloc.counts[t] < 0:
            checks.append(_entry(f"count[{t}] >= 0", alloc.counts[t], ">=", 0))
        if load[t] or alloc.counts[t]:
            checks.append(_entry(f"load type {t}", load[t], "<=", alloc.counts[t] * typ.slots * SLOT_SCALE,
                                 "sum rate_mrps x work_ns <= count x slots x 10^12 (Little's law)"))
    for k, pool in enumerate(fleet.pools):
        sizes = [typ.gpus for t, typ in enumerate(ft.types) if typ.pool == k for _ in range(alloc.counts[t])]
        checks.append(_entry(f"pool {pool.name} GPUs", sum(sizes), "<=", pool.num_gpus))
        spots = place(pool, sizes)
        checks.append(_entry(f"pool {pool.name} placement", 0 if spots is not None else 1, "==", 0,
                             "every instance inside one node or on whole nodes, no GPU shared (first-fit decreasing)"))
    for s, service in enumerate(fleet.services):
        mine = [t for t, typ in enumerate(ft.types) if typ.service == s and alloc.counts[t]]
        if service.max_instances is not None:
            checks.append(_entry(f"instances {service.name}", sum(alloc.counts[t] * ft.types[t].engine_instances for t in mine), "<=",
                                 service.max_instances, "engine instances (a dense model's DP replicas each count)"))
        if service.pools is not None:
            off = [t for t in mine if fleet.pools[ft.types[t].pool].name not in service.pools]
            checks.append(_entry(f"pins {service.name}", len(off), "==", 0, f"pools {', '.join(service.pools)}"))
    return checks


def pairing_checks(service: Service, bucket: str, members: list[tuple[int, int, int]],
                   times: dict[tuple[int, int], BucketTimes | None], b: int) -> list[CheckEntry]:
    """The disaggregated halves of one bucket, on re-derived times and without the model's levels: equal
    prefill and decode rates, and Hall's condition for every KV receive time ``K`` of a used decode type
    (decode rate with receive >= K <= prefill rate whose ``prefill + max(send, K) <= TTFT``), which is
    exactly when the rates can be paired in integers with every pair within the TTFT."""
    ttft = floor_ns(service.targets.ttft_s)
    decode = [(times.get((t, b)), rate) for side, t, rate in members if side > 0]
    prefill = [(times.get((t, b)), rate) for side, t, rate in members if side < 0]
    out = [_entry(f"prefill = decode rate {service.name}/{bucket}", sum(r for _, r in prefill), "==", sum(r for _, r in decode),
                  "mrps of the prefill halves and of the decode halves")]
    if any(t is None for t, _ in decode + prefill):
        return out  # a failing target is reported by its own check
    for k in sorted({t.kv_ns for t, _ in decode}):
        need = sum(r for t, r in decode if t.kv_ns >= k)
        have = sum(r for t, r in prefill if t.work_ns + max(t.kv_ns, k) <= ttft)
        out.append(_entry(f"ttft with KV transfer {service.name}/{bucket}, receive {k} ns", need, "<=", have,
                          "decode mrps receiving in >= K ns <= prefill mrps with prefill + max(send, K) <= TTFT"))
    return out


def objective_value(fleet: Fleet, ft: FleetTypes, counts: tuple[int, ...]) -> int:
    """The objective of ``counts`` recomputed from the pools' prices as exact fractions (not from the
    solver's weights): micro-dollars per hour, or GPUs."""
    gpus = [0] * len(fleet.pools)
    for t, c in zip(ft.types, counts):
        gpus[t.pool] += c * t.gpus
    if fleet.objective is FleetObjective.GPUS:
        return sum(gpus)
    dollars = sum((p.cost_per_gpu_hour * n for p, n in zip(fleet.pools, gpus)), Fraction(0))
    micro = dollars * MICRO_DOLLARS
    return micro.numerator // micro.denominator if micro.denominator == 1 else -1  # -1: not whole, the check fails


# --- the exhaustive oracle (small fleets) -------------------------------------------------------------


def exhaustive_fleet(problem: FleetIntegers, *, limit: int = ORACLE_LIMIT) -> int | None | str:
    """The optimum by enumeration for fleets whose types each serve one single-type route (aggregated, one
    bucket per type): per bucket every minimal cover ``sum floor(count x slots / work) >= rate`` is listed,
    then covers are combined within the pool GPUs and instance limits. Returns the optimal objective, None
    when no allocation exists, or ``"not applicable"`` (a type in several routes, a two-type route, or
    more than ``limit`` covers)."""
    per_type: dict[int, tuple[int, int]] = {}
    for r, (b, legs) in enumerate(problem.routes):
        if len(legs) != 1 or legs[0][0] in per_type or problem.side(r):
            return "not applicable"
        per_type[legs[0][0]] = (b, legs[0][1])
    covers: list[list[tuple[int, tuple[int, ...], tuple[int, ...]]]] = []  # per bucket: (weight, pool gpus, group counts)
    n_pools, n_groups = len(problem.pool_gpus), len(problem.group_max)
    total = 0
    for b, rate in enumerate(problem.bucket_rate):
        mine = sorted(t for t, (tb, _) in per_type.items() if tb == b)
        options: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = []

        def walk(i: int, left: int, w: int, pools: list[int], groups: list[int]) -> None:
            nonlocal total
            if total > limit:
                return
            if left <= 0:
                options.append((w, tuple(pools), tuple(groups)))
                total += 1
                return
            if i == len(mine):
                return
            t = mine[i]
            cap = problem.type_slots[t] // per_type[t][1]
            k, g = problem.type_pool[t], problem.type_gpus[t]
            most = (problem.pool_gpus[k] - pools[k]) // g
            for c in range(0, most + 1):
                if c and cap * (c - 1) >= left:
                    break  # minimal covers only: one instance fewer already covers
                pools[k] += c * g
                groups[problem.type_group[t]] += c * problem.type_instances[t]
                walk(i + 1, left - c * cap, w + c * problem.type_weight[t], pools, groups)
                pools[k] -= c * g
                groups[problem.type_group[t]] -= c * problem.type_instances[t]

        walk(0, rate, 0, [0] * n_pools, [0] * n_groups)
        if total > limit:
            return "not applicable"
        if not options:
            return None
        covers.append(sorted(options))
    best: int | None = None

    def combine(b: int, w: int, pools: list[int], groups: list[int]) -> None:
        nonlocal best
        if best is not None and w >= best:
            return
        if b == len(covers):
            best = w
            return
        for ow, op, og in covers[b]:
            if best is not None and w + ow >= best:
                break
            np_ = [x + y for x, y in zip(pools, op)]
            ng = [x + y for x, y in zip(groups, og)]
            if all(x <= cap for x, cap in zip(np_, problem.pool_gpus)) and \
                    all(lim is None or x <= lim for x, lim in zip(ng, problem.group_max)):
                combine(b + 1, w + ow, np_, ng)

    combine(0, 0, [0] * n_pools, [0] * n_groups)
    return best


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
