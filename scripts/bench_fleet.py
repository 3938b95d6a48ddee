"""Fleet planning at scale (issue 15): fleets of 2, 4 and 8 services over 2, 3 and 4 pools up to 1,024
GPUs, built from the shipped ``fleets/mixed-8x4.yaml`` (its first N services, M of its pools, the GPUs
split evenly), plus the shipped fleets. Per case: instance types evaluated and after pruning, routes, the
evaluation, CP-SAT build and solve seconds, proved or the gap, the cost per hour, the best single pool
and the saving against it, and the greedy rule (cheapest cover per bucket) with its excess.

    python scripts/bench_fleet.py            # every case
    python scripts/bench_fleet.py --quick    # the small cases only
    python scripts/bench_fleet.py --disaggregated   # also 8 x 4 with two services split into prefill/decode

Times are wall seconds on this machine, one CP-SAT worker; the figures (types, costs) are deterministic.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from optimizer.search.fleet import MICRO_DOLLARS, plan_fleet  # noqa: E402
from optimizer.inputs.fleet import fleet_from_dict, load_fleet, shipped_fleets  # noqa: E402
from optimizer.inputs.loader import read_mapping  # noqa: E402

POOL_SETS = {2: ("h100", "l40s"), 3: ("h100", "a100", "l40s"), 4: ("h100", "h200", "a100", "l40s")}
CASES = [(2, 2, 128), (2, 3, 256), (4, 2, 256), (4, 3, 512), (4, 4, 512), (8, 3, 768), (8, 4, 1024)]


def synthetic(services: int, pools: int, gpus: int, disaggregated: tuple[str, ...] = ()):
    """The first ``services`` services of mixed-8x4 over ``pools`` of its pools, ``gpus`` GPUs in all;
    the services named in ``disaggregated`` also get prefill/decode instances."""
    data = read_mapping(shipped_fleets()["mixed-8x4"])
    names = POOL_SETS[pools]
    chosen = [p for p in data["pools"] if p["name"] in names]
    for p in chosen:
        p["num_nodes"] = max(gpus // pools // 8, 1)
    kept = []
    for s in data["services"][:services]:
        if s["name"] in disaggregated:
            s["disaggregated"] = True
        if "pools" in s:
            s["pools"] = [p for p in s["pools"] if p in names] or None
            if s["pools"] is None:
                del s["pools"]
        kept.append(s)
    suffix = "-disagg" if disaggregated else ""
    data.update(name=f"{services}svc-{pools}pools-{gpus}gpu{suffix}", pools=chosen, services=kept)
    return fleet_from_dict(data, source="<bench>")


def row(name: str, fleet, time_limit_s: float) -> str:
    start = time.perf_counter()
    plan = plan_fleet(fleet, time_limit_s=time_limit_s, oracle=False)
    wall = time.perf_counter() - start
    gpus = sum(p.num_gpus for p in fleet.pools)
    best = min((v for v in plan.baseline.values() if v is not None), default=None)
    pool = next((k for k, v in plan.baseline.items() if v == best), "-")
    saving = f"{(1 - plan.objective / best) * 100:.1f}%" if best else "-"
    greedy = "fails" if plan.greedy is None else f"{plan.greedy / MICRO_DOLLARS:,.2f} (+{(plan.greedy / plan.objective - 1) * 100:.1f}%)"
    proof = "proved" if plan.proved_optimal else f"gap {plan.objective - plan.best_bound}"
    best_text = "-" if best is None else f"{best / MICRO_DOLLARS:,.2f} ({pool})"
    return (f"| {name} | {len(fleet.services)} | {len(fleet.pools)} | {gpus:,} | {plan.types.before:,} -> {len(plan.types.types)} | "
            f"{len(plan.types.routes)} | {plan.types.evaluate_s:.2f} | {plan.build_s:.3f} | {plan.solve_s:.2f} | {proof} | "
            f"{plan.objective / MICRO_DOLLARS:,.2f} | {best_text} | {saving} | {greedy} | {wall:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the cases up to 256 GPUs")
    parser.add_argument("--time-limit", type=float, default=60.0, help="budget per case (s)")
    parser.add_argument("--disaggregated", action="store_true",
                        help="also the 8 x 4 case with chat-8b and rag-70b allowed prefill/decode instances")
    args = parser.parse_args()
    print("| case | services | pools | GPUs | instance types (pruned) | routes | evaluate s | CP-SAT build s | CP-SAT solve s | "
          "proof | $/h | best single pool $/h | saving | greedy $/h | wall s |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---|---:|---|---:|")
    for name in shipped_fleets():
        if args.quick and name == "mixed-8x4":
            continue
        print(row(name, load_fleet(name), args.time_limit), flush=True)
    for services, pools, gpus in CASES:
        if args.quick and gpus > 256:
            continue
        fleet = synthetic(services, pools, gpus)
        print(row(fleet.name, fleet, args.time_limit), flush=True)
    if args.disaggregated:
        fleet = synthetic(8, 4, 1024, disaggregated=("chat-8b", "rag-70b"))
        print(row(fleet.name, fleet, args.time_limit), flush=True)


if __name__ == "__main__":
    main()
