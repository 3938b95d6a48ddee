"""Benchmark: for every shipped scenario, the candidate layouts, CP-SAT time (tables + model + solve, and
the solve alone), the exhaustive oracle's time, and the whole-process time of `optimize --scenario NAME`.
Then the disaggregated search (``optimize disagg``) on Qwen3-235B-A22B over 64, 256, 1024 and 4096 H100s:
CP-SAT with proof against the enumeration oracle on the very same candidate lists, both on the raw lists
and on the lists after dominance pruning (what ``optimize disagg`` solves). Prints Markdown tables.
Median of --repeat runs.

    python scripts/bench.py [--repeat 3] [--only disagg]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from optimizer.errors import Infeasible  # noqa: E402
from optimizer.exhaustive import optimize_exhaustive  # noqa: E402
from optimizer.loader import load_scenario, shipped_scenarios  # noqa: E402
from optimizer.solve import optimize  # noqa: E402


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    try:
        result = fn()
    except Infeasible as exc:
        result = exc
    return time.perf_counter() - start, result


def bench_disaggregated(repeat: int) -> None:
    """CP-SAT vs enumeration for the disaggregated pool split, at growing cluster sizes."""
    import yaml

    from optimizer import disagg
    from optimizer.loader import scenario_from_dict

    base = yaml.safe_load((ROOT / "scenarios" / "qwen3-235b-a22b-16xh100.yaml").read_text())
    print("\n| GPUs | candidates (prefill / decode) | pruned | build (s) | CP-SAT proved (s) | exhaustive (s) | speed-up | same optimum |")
    print("|---:|---|---|---:|---:|---:|---:|---|")
    for gpus in (64, 256, 1024, 4096):
        data = {**base, "cluster": {**base["cluster"], "num_nodes": gpus // 8, "gpus_per_node": 8}}
        scenario = scenario_from_dict(data)
        original = disagg._undominated
        disagg._undominated = lambda pool: pool  # the raw lists
        try:
            build, raw = timed(lambda: disagg.candidates(scenario))
        finally:
            disagg._undominated = original
        pruned = (original(raw[0]), original(raw[1]))
        for label, pools in (("no", raw), ("yes", pruned)):
            cp_t, ex_t, cp, ex = [], [], None, None
            for _ in range(repeat):
                t, cp = timed(lambda: disagg.solve_disaggregated(scenario, pools))
                cp_t.append(t)
                t, ex = timed(lambda: disagg.solve_disaggregated(scenario, pools, solver="exhaustive"))
                ex_t.append(t)
            same = cp is not None and ex is not None and cp.primary == ex.primary and cp.proved_optimal
            c, e = statistics.median(cp_t), statistics.median(ex_t)
            print(f"| {gpus} | {len(pools[0])} / {len(pools[1])} | {label} | {build:.1f} | {c:.3f} | {e:.3f} | {e / c:.1f}x | "
                  f"{'yes' if same else 'NO'} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", choices=["shipped", "disagg"], default=None)
    args = parser.parse_args()
    if args.only != "disagg":
        bench_shipped(args.repeat)
    if args.only != "shipped":
        bench_disaggregated(args.repeat)


def bench_shipped(repeat: int) -> None:
    print("| scenario | layouts | CP-SAT total (s) | CP-SAT solve (s) | exhaustive (s) | process (s) | result |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in shipped_scenarios():
        scenario = load_scenario(name)
        cp, ex, proc, solve_only = [], [], [], []
        result = None
        for _ in range(repeat):
            t, result = timed(lambda: optimize(scenario))
            cp.append(t)
            if not isinstance(result, Infeasible):
                solve_only.append(result.evidence.solve_wall_s)
            ex.append(timed(lambda: optimize_exhaustive(scenario))[0])
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "optimizer.cli", "--scenario", name], capture_output=True, check=False)
            proc.append(time.perf_counter() - start)
        if isinstance(result, Infeasible):
            outcome, layouts = "infeasible: " + ", ".join(r.split(":")[0] for r in result.reasons), "-"
        else:
            lay = result.plan.layout
            outcome = f"{result.evidence.status} TP{lay.tp} PP{lay.pp} DP{lay.dp} EP{lay.ep} ETP{lay.etp}"
            layouts = str(result.evidence.candidates)
        solve = f"{statistics.median(solve_only):.3f}" if solve_only else "-"
        print(f"| {name} | {layouts} | {statistics.median(cp):.3f} | {solve} | {statistics.median(ex):.3f} "
              f"| {statistics.median(proc):.2f} | {outcome} |")


if __name__ == "__main__":
    main()
