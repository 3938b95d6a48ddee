"""The fleet allocation re-checked in exact integers without the solver and without the code that built
the model (``fleet``): every used type's plan re-certified and its times re-derived from the cost model
(``verify.certify`` on fresh tables of that one candidate), the targets, each type's load (Little's law),
each bucket's coverage, the prefill/decode pairing (Hall's condition on re-derived KV times), pool GPUs,
a node placement, pins and instance limits, and the objective from the prices. Also the exhaustive
oracle for small fleets (enumeration, no solver).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

from optimizer.inputs.fleet import Fleet, FleetObjective, Pool, Service
from optimizer.search.fleet_types import (MICRO_DOLLARS, SLOT_SCALE, BucketTimes, FleetTypes, InstanceType, bucket_times,
                                   carried_mrps, floor_ns, service_scenario)
from optimizer.search.result import build_tables
from optimizer.search.verify import certify, plan_context

if TYPE_CHECKING:  # the oracle reads the integer problem; it never runs the solver
    from optimizer.search.solve import FleetIntegers

ORACLE_LIMIT = 200_000  # count vectors the exhaustive oracle enumerates at most before it declines


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
    return bucket_times(t.role, service, bucket, sub, ttft_ns=est.ttft_ns, tpot_ns=est.tpot_ns, latency_ns=est.request_latency_ns,
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
