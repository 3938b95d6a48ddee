"""Benchmark: for every shipped scenario, the candidate layouts, CP-SAT time (tables + model + solve, and
the solve alone), the exhaustive oracle's time, and the whole-process time of `optimize --scenario NAME`.
Prints a Markdown table. Median of --repeat runs.

    python scripts/bench.py [--repeat 3]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("| scenario | layouts | CP-SAT total (s) | CP-SAT solve (s) | exhaustive (s) | process (s) | result |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for name in shipped_scenarios():
        scenario = load_scenario(name)
        cp, ex, proc, solve_only = [], [], [], []
        result = None
        for _ in range(args.repeat):
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
