"""Renderings of a fleet plan: the JSON document (the contract: ``services[].instances[]``, ``totals``,
``baseline``, ``evidence``, ``certificate``), a table per service for the terminal, Markdown for review,
and per instance type the engines' command lines (``launch.launch_commands`` on a single-instance plan
document embedded in each instance entry). Pure functions; the CLI writes and prints.

Figures for people (``request_rate_per_s``, ``cost_per_hour``) are floats from exact integers: mrps / 1000
and micro-dollars / 10^6; the integers are beside them (``*_mrps``, ``*_micro_dollars``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from optimizer.errors import PlanError
from optimizer.search.fleet import SOLVER_NAME, FleetPlan, weight
from optimizer.search.fleet_check import placement
from optimizer.search.fleet_types import MICRO_DOLLARS, MRPS_PER_RPS, floor_ns, service_scenario
from optimizer.inputs.fleet import FleetObjective
from optimizer.outputs.launch import LaunchPlan, launch_commands

FLEET_SCHEMA_VERSION = "fleet-1.0"


def _money(fp: FleetPlan, value: int | None) -> float | None:
    """The objective as dollars per hour (cost) or GPUs."""
    if value is None:
        return None
    return value / MICRO_DOLLARS if fp.fleet.objective is FleetObjective.COST else value


def _instance_document(fp: FleetPlan, t: int, count: int, spots: list | None) -> dict[str, Any]:
    fleet, typ = fp.fleet, fp.types.types[t]
    service, pool = fleet.services[typ.service], fleet.pools[typ.pool]
    routes = []
    for route, rate in zip(fp.types.routes, fp.allocation.route_rates):
        if rate and t in route.types:
            times = typ.times[route.bucket]
            ttft_ns, paired = times.ttft_ns, [i for i in route.types if i != t]
            if len(route.types) == 2:  # the pair's TTFT: prefill + max(KV send, KV receive)
                legs = [fp.types.types[i].times[route.bucket] for i in route.types]
                ttft_ns = max(leg.work_ns for leg, i in zip(legs, route.types) if fp.types.types[i].role == "prefill") \
                    + max(leg.kv_ns for leg in legs)
            elif route.side:  # a half: the worst pairing of its level
                ttft_ns, paired = _level(fp, route, t)
            routes.append({"bucket": service.buckets[route.bucket].name, "rate_mrps": rate, "request_rate_per_s": rate / MRPS_PER_RPS,
                           "ttft_s": ttft_ns / 1e9, "paired_with": paired,
                           "tpot_s": times.tpot_ns / 1e9 if typ.role != "prefill" else None,
                           "kv_transfer_s": times.kv_ns / 1e9 if typ.role != "aggregated" else None,
                           "capacity_per_instance_mrps": typ.capacity_mrps(route.bucket)})
    longest = max((b for b, times in enumerate(typ.times) if times is not None),
                  key=lambda b: (service.buckets[b].input_tokens + service.buckets[b].output_tokens, -b))
    sub = service_scenario(service, pool, service.buckets[longest], typ.gpus, typ.role)
    return {
        "type": t, "pool": pool.name, "gpu": pool.gpu.name, "count": count, "role": typ.role,
        "layout": typ.layout.as_dict(), "batch": typ.batch_per_replica, "gpus_per_instance": typ.gpus,
        "engine_instances_per_instance": typ.engine_instances, "layers_per_stage": list(typ.layers_per_stage),
        "request_rate_per_s": sum(r["rate_mrps"] for r in routes) / MRPS_PER_RPS, "routes": routes,
        "placement": None if spots is None else [{"nodes": list(nodes), "gpus": list(gpus)} for nodes, gpus in spots],
        "launch": {"scenario": sub.model_dump(mode="json"),
                   "plan": {**typ.layout.as_dict(), "instances": typ.engine_instances, "batch_per_replica": typ.batch_per_replica,
                            "layers_per_stage": list(typ.layers_per_stage), "engine": service.engine.name.value}},
    }


def _level(fp: FleetPlan, route: Any, t: int) -> tuple[int, list[int]]:
    """A disaggregated half's worst TTFT (ns) over the pairings its bucket's used halves allow, and the
    types on the other side."""
    ft = fp.types
    b = route.bucket
    ttft = floor_ns(fp.fleet.services[route.service].targets.ttft_s)
    used = {r.types[0] for r, rate in zip(ft.routes, fp.allocation.route_rates)
            if rate and r.side and r.service == route.service and r.bucket == b}
    me = ft.types[t]
    others = sorted(i for i in used if ft.types[i].role != me.role)
    worst = 0
    for o in others:
        p, d = (me, ft.types[o]) if me.role == "prefill" else (ft.types[o], me)
        value = p.times[b].work_ns + max(p.times[b].kv_ns, d.times[b].kv_ns)
        if value <= ttft:
            worst = max(worst, value)
    return worst, others


def fleet_document(fp: FleetPlan) -> dict[str, Any]:
    """The fleet plan as a JSON-ready mapping (``FLEET_SCHEMA_VERSION``); no timings (byte-identical runs)."""
    fleet, ft = fp.fleet, fp.types
    spots = placement(fleet, ft, fp.allocation.counts) or {}
    services = []
    for s, service in enumerate(fleet.services):
        instances = [_instance_document(fp, t, c, spots.get(t)) for t, c in enumerate(fp.allocation.counts)
                     if c and ft.types[t].service == s]
        services.append({
            "name": service.name, "model": service.model.name, "engine": service.engine.name.value,
            "targets": {"ttft_s": float(service.targets.ttft_s), "tpot_s": float(service.targets.tpot_s)},
            "buckets": [{"name": b.name, "input_tokens": b.input_tokens, "output_tokens": b.output_tokens,
                         "request_rate_per_s": float(b.request_rate_per_s)} for b in service.buckets],
            "instances": instances,
        })
    gpus_by_pool = {p.name: 0 for p in fleet.pools}
    for t, c in enumerate(fp.allocation.counts):
        gpus_by_pool[fleet.pools[ft.types[t].pool].name] += c * ft.types[t].gpus
    cost = None
    if all(p.cost_per_gpu_hour is not None for p in fleet.pools):
        exact = sum(fleet.pools[ft.types[t].pool].cost_per_gpu_hour * ft.types[t].gpus * c for t, c in enumerate(fp.allocation.counts))
        cost = float(exact)
    best_pool = min((k for k, v in fp.baseline.items() if v is not None), key=lambda k: (fp.baseline[k], k), default=None)
    best = None if best_pool is None else fp.baseline[best_pool]
    return {
        "kind": "fleet", "schema_version": FLEET_SCHEMA_VERSION, "fleet": fleet.name, "objective": fleet.objective.value,
        "units": {"rate": "mrps = milli-requests per second (exact integers; request_rate_per_s = mrps / 1000)",
                  "objective": "micro-dollars per hour" if fleet.objective is FleetObjective.COST else "GPUs",
                  "ttft_s, tpot_s": "at the type's full batch, the cost model's estimate: an upper bound at any lower load"},
        "headroom": float(fleet.headroom),
        "services": services,
        "totals": {"gpus_by_pool": gpus_by_pool, "gpus": sum(gpus_by_pool.values()), "cost_per_hour": cost,
                   "objective": fp.objective},
        "baseline": {"best_single_pool": best_pool, "best_single_pool_objective": best,
                     "best_single_pool_cost_per_hour": _money(fp, best) if fleet.objective is FleetObjective.COST else None,
                     "by_pool": dict(fp.baseline), "by_pool_proved": dict(fp.baseline_proved),
                     "saving_fraction": None if not best else round(1 - fp.objective / best, 6),
                     "greedy_objective": fp.greedy,
                     "rule": "every service on one pool's GPU kind, up to as many GPUs as the whole fleet has; greedy: "
                             "per bucket the cheapest cover by one aggregated type"},
        "evidence": {"status": fp.status, "objective": fp.objective, "best_bound": fp.best_bound,
                     "proved_optimal": fp.proved_optimal, "solver_optimal": fp.solver_optimal, "solver": _solver_name(fp),
                     "oracle": fp.oracle, "solver_fault": fp.solver_fault,
                     "instance_types": {"before_pruning": ft.before, "after_pruning": len(ft.types)}, "routes": len(ft.routes),
                     "model_size": fp.model_size,
                     "rule": "proved only when CP-SAT says OPTIMAL at its bound, the solver-free check holds, and the "
                             "exhaustive oracle (where it applies) agrees"},
        "certificate": {"holds": fp.check_holds,
                        "checks": [{"name": c.name, "lhs": c.lhs, "op": c.op, "rhs": c.rhs, "holds": c.holds, "detail": c.detail}
                                   for c in fp.checks]},
        "why": why_the_mix(fp),
    }


def _solver_name(fp: FleetPlan) -> str:
    return SOLVER_NAME + (", checked by the exhaustive oracle" if isinstance(fp.oracle, int) else "")


def why_the_mix(fp: FleetPlan) -> list[str]:
    """Which bucket went where, and the cheapest single-bucket alternative per bucket (what the mix saves)."""
    fleet, ft = fp.fleet, fp.types
    lines = []
    for s, service in enumerate(fleet.services):
        for b, bucket in enumerate(service.buckets):
            placed: dict[str, int] = {}
            for route, rate in zip(ft.routes, fp.allocation.route_rates):
                if rate and route.service == s and route.bucket == b:
                    where = "+".join(f"{ft.types[t].role}@{fleet.pools[ft.types[t].pool].name}" for t in route.types)
                    placed[where] = placed.get(where, 0) + rate
            parts = ", ".join(f"{rate / MRPS_PER_RPS:g} req/s on {where}" for where, rate in sorted(placed.items()))
            unit = "$/h" if fleet.objective is FleetObjective.COST else "GPUs"
            scale = MICRO_DOLLARS if fleet.objective is FleetObjective.COST else 1
            best = {}
            for typ in ft.types:
                if typ.service == s and typ.role == "aggregated" and typ.capacity_mrps(b):
                    per = weight(fleet, fleet.pools[typ.pool], typ.gpus) * MRPS_PER_RPS / typ.capacity_mrps(b) / scale
                    name = fleet.pools[typ.pool].name
                    best[name] = min(best.get(name, per), per)
            costs = "; ".join(f"{name} {value:.4g}" for name, value in sorted(best.items(), key=lambda kv: kv[1]))
            lines.append(f"{service.name}/{bucket.name} (ISL {bucket.input_tokens}, OSL {bucket.output_tokens}): {parts}"
                         + (f" [aggregated {unit} per req/s at full load: {costs}]" if costs else ""))
    return lines


def render_fleet(document: Mapping[str, Any]) -> str:
    """The terminal table: per service its instances, then totals, the baselines and the proof."""
    cost_objective = document["objective"] == "cost"
    lines = [f"Fleet {document['fleet']}: objective {document['objective']}, headroom {document['headroom']:g}"]
    for service in document["services"]:
        t = service["targets"]
        lines.append(f"\n{service['name']} ({service['model']}, {service['engine']}; TTFT <= {t['ttft_s']:g} s, TPOT <= {t['tpot_s']:g} s)")
        lines.append(f"  {'pool':<10} {'gpu':<14} {'role':<10} {'count':>5} {'layout':<22} {'batch':>5} {'req/s':>9}  per bucket: rate, TTFT, TPOT")
        for inst in service["instances"]:
            lay = inst["layout"]
            sizes = f"TP{lay['tp']} PP{lay['pp']} DP{lay['dp']} EP{lay['ep']}"
            per = "; ".join(f"{r['bucket']} {r['request_rate_per_s']:g}" + (f", TTFT {r['ttft_s'] * 1e3:.0f} ms" if r["ttft_s"] is not None else "")
                            + (f", TPOT {r['tpot_s'] * 1e3:.1f} ms" if r["tpot_s"] is not None else "")
                            + (f", KV {r['kv_transfer_s'] * 1e3:.2f} ms" if r["kv_transfer_s"] is not None else "") for r in inst["routes"])
            lines.append(f"  {inst['pool']:<10} {inst['gpu']:<14} {inst['role']:<10} {inst['count']:>5} {sizes:<22} {inst['batch']:>5} "
                         f"{inst['request_rate_per_s']:>9.3f}  {per}")
    totals, base, ev = document["totals"], document["baseline"], document["evidence"]
    pools = ", ".join(f"{name} {gpus}" for name, gpus in totals["gpus_by_pool"].items())
    lines.append(f"\nGPUs by pool: {pools} (total {totals['gpus']})")
    if cost_objective:
        lines.append(f"Cost: ${totals['cost_per_hour']:,.2f} per hour")
        if base["best_single_pool"] is not None:
            unproved = "" if base["by_pool_proved"].get(base["best_single_pool"]) else " (not proved: an upper bound)"
            lines.append(f"Best single pool: {base['best_single_pool']} at ${base['best_single_pool_cost_per_hour']:,.2f} per hour{unproved}; "
                         f"the mix saves {base['saving_fraction'] * 100:.1f}%")
        else:
            lines.append("Best single pool: no single pool's GPU kind carries every service within its targets")
        greedy = base["greedy_objective"]
        lines.append("Greedy (cheapest cover per bucket, in file order): "
                     + (f"${greedy / MICRO_DOLLARS:,.2f} per hour" if greedy is not None else "runs out of GPUs"))
    else:
        lines.append(f"GPUs: {totals['gpus']}; best single pool: {base['best_single_pool']} with {base['best_single_pool_objective']} GPUs; "
                     f"greedy: {base['greedy_objective']}")
    lines.append("Where each bucket went:")
    lines += [f"  {line}" for line in document["why"]]
    it = ev["instance_types"]
    lines.append(f"Instance types: {it['before_pruning']} evaluated, {it['after_pruning']} after pruning dominated ones; "
                 f"{ev['routes']} routes")
    cert = document["certificate"]
    proof = "PROVED OPTIMAL" if ev["proved_optimal"] else "NOT proved optimal"
    lines.append(f"Proof: {proof} (CP-SAT {ev['status']}, objective {ev['objective']}, bound {ev['best_bound']}; solver-free check "
                 f"{'holds' if cert['holds'] else 'FAILS'} on {len(cert['checks'])} constraints; oracle: {ev['oracle']})")
    if ev["solver_fault"]:
        lines.append(f"SOLVER FAULT: {ev['solver_fault']}")
    for c in cert["checks"]:
        if not c["holds"]:
            lines.append(f"  FAILS: {c['name']}: {c['lhs']} {c['op']} {c['rhs']} ({c['detail']})")
    return "\n".join(lines) + "\n"


def render_fleet_markdown(document: Mapping[str, Any]) -> str:
    """The same for review, as Markdown tables."""
    out = [f"# Fleet {document['fleet']}", ""]
    for service in document["services"]:
        out += [f"## {service['name']} ({service['model']})", "",
                "| pool | gpu | role | count | TP | PP | DP | EP | ETP | EDP | batch | req/s |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for inst in service["instances"]:
            lay = inst["layout"]
            out.append(f"| {inst['pool']} | {inst['gpu']} | {inst['role']} | {inst['count']} | {lay['tp']} | {lay['pp']} | {lay['dp']} | "
                       f"{lay['ep']} | {lay['etp']} | {lay['edp']} | {inst['batch']} | {inst['request_rate_per_s']:g} |")
        out.append("")
    out += ["## Totals, baseline, proof", "", "```", render_fleet(document).rstrip(), "```", ""]
    return "\n".join(out)


def fleet_launch(document: Mapping[str, Any], *, engine: str, node_addresses: list[str] | None = None) -> list[tuple[str, LaunchPlan]]:
    """Per instance type of a fleet plan: a heading (service, pool, role, count, and where each copy sits:
    pool nodes and GPUs from the plan's placement) and its engine commands (``launch.launch_commands`` on
    the embedded single-instance plan; run them once per copy, on that copy's node and GPUs, e.g. with
    ``CUDA_VISIBLE_DEVICES``).

    Raises:
        PlanError: not a fleet plan document. ``NotExpressible`` passes through from ``launch``.
    """
    if not isinstance(document, Mapping) or document.get("kind") != "fleet" or not isinstance(document.get("services"), list):
        raise PlanError("not a fleet plan document (kind: fleet with services)", source="<plan document>", field="kind")
    out = []
    for s, service in enumerate(document["services"]):
        for i, inst in enumerate(service.get("instances") or []):
            if not isinstance(inst, Mapping) or not isinstance(inst.get("launch"), Mapping):
                raise PlanError("instance without its launch plan", source="<plan document>", field=f"services.{s}.instances.{i}.launch")
            heading = (f"{service.get('name')}: {inst.get('count')} x {inst.get('role')} on pool {inst.get('pool')} ({inst.get('gpu')}), "
                       f"{inst.get('gpus_per_instance')} GPUs each")
            spots = inst.get("placement") or []
            if spots:
                heading += "; copies at " + ", ".join(
                    f"node {'+'.join(map(str, spot.get('nodes', [])))} GPUs {','.join(map(str, spot.get('gpus', [])))}" for spot in spots)
            out.append((heading, launch_commands(inst["launch"], engine=engine, node_addresses=node_addresses)))
    return out


def is_fleet_document(document: Any) -> bool:
    return isinstance(document, Mapping) and document.get("kind") == "fleet"


__all__ = ["fleet_document", "render_fleet", "render_fleet_markdown", "fleet_launch", "is_fleet_document"]
