"""Offline check of the CP-SAT core against the enumeration oracle on random scenarios (issue 12).

Draws scenarios with the two generators the tests use, derandomised: ``valid_scenarios`` of
``tests/test_fuzz.py`` (catalog and inline GPUs and models, 1..64 GPUs, prime and 1-GPU nodes, every
engine and objective) and ``scenarios(large=True)`` of ``tests/test_differential.py`` (small random
models, 1..30 GPUs and now and then 720). For each: the tables once, then CP-SAT (``optimize`` with the
command's budget, its certificate checked) and the oracle on them, and, when infeasible, the diagnosis
within what is left of the budget, as ``optimize`` runs it. Prints the counts (agree, disagree,
infeasible, over budget), the worst CP-SAT / enumeration time ratio and the slowest cases.

    python scripts/fuzz_core.py [--fuzz 600] [--differential 400] [--budget 60]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402

from optimizer.search.diagnose import diagnose  # noqa: E402
from optimizer.errors import Infeasible, OptimizerError, ScenarioError  # noqa: E402
from optimizer.search.exhaustive import optimize_exhaustive  # noqa: E402
from optimizer.inputs.loader import scenario_from_dict  # noqa: E402
from optimizer.search.result import build_tables  # noqa: E402
from optimizer.inputs.scenario import Objective  # noqa: E402
from optimizer.search.solve import Deadline, optimize  # noqa: E402


class Tally:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def run(self, scenario, budget: float, source: str) -> None:
        if scenario.search.objective is Objective.FEWEST_GPUS:  # answered by `optimize capacity`, not this core
            return
        row = {"name": scenario.name, "source": source, "gpus": scenario.cluster.num_gpus, "index": len(self.rows),
               "objective": scenario.search.objective.value}
        start = time.perf_counter()
        deadline = Deadline(budget)
        try:
            tables = build_tables(scenario)
        except OptimizerError as exc:  # the scenario's numbers leave the cost model's range: bad input, exit 2
            row.update(outcome="bad input", error=str(exc)[:80])
            self.rows.append(row)
            return
        row["candidates"] = len(tables.layouts)
        row["tables_s"] = time.perf_counter() - start
        t = time.perf_counter()
        try:
            cp = optimize(scenario, tables=tables, deadline=deadline)
        except Infeasible as exc:
            cp = exc
        except OptimizerError as exc:
            cp = exc
        row["cp_s"] = time.perf_counter() - t
        t = time.perf_counter()
        try:
            ex = optimize_exhaustive(scenario, tables=tables)
        except Infeasible as exc:
            ex = exc
        row["ex_s"] = time.perf_counter() - t
        command_s = row["tables_s"] + row["cp_s"]
        if isinstance(cp, Infeasible):
            t = time.perf_counter()
            diagnose(scenario, cp.conflicts, deadline=deadline)
            command_s += time.perf_counter() - t
        row["command_s"] = command_s
        if isinstance(cp, OptimizerError) and not isinstance(cp, Infeasible):
            row["outcome"] = f"DISAGREE: CP-SAT raised {cp}"
        elif isinstance(cp, Infeasible) or isinstance(ex, Infeasible):
            both = isinstance(cp, Infeasible) and isinstance(ex, Infeasible)
            row["outcome"] = "infeasible" if both else "DISAGREE: one infeasible"
        elif cp.evidence.objective != ex.evidence.objective or cp.plan != ex.plan:
            row["outcome"] = f"DISAGREE: {cp.evidence.objective} vs {ex.evidence.objective}"
        elif not cp.evidence.proved_optimal or cp.evidence.solver_fault:
            row["outcome"] = f"not proved ({cp.evidence.status}, {cp.evidence.solver_fault})"
        else:
            row["outcome"] = "agree"
        row["over_budget"] = command_s > budget
        self.rows.append(row)

    def report(self, budget: float) -> None:
        rows = [r for r in self.rows if "cp_s" in r]
        count = lambda f: sum(1 for r in rows if f(r))  # noqa: E731
        print(f"scenarios: {len(self.rows)} drawn, {len(rows)} solved ({len(self.rows) - len(rows)} bad input)")
        print(f"agree (proved, certified, same plan as the oracle): {count(lambda r: r['outcome'] == 'agree')}")
        print(f"both infeasible: {count(lambda r: r['outcome'] == 'infeasible')}")
        print(f"disagreements: {count(lambda r: r['outcome'].startswith('DISAGREE'))}")
        print(f"not proved: {count(lambda r: r['outcome'].startswith('not proved'))}")
        print(f"over the {budget:g} s budget (tables + solve + diagnosis): {count(lambda r: r['over_budget'])}")
        for label, keep in (("feasible (solve + certificate vs enumeration)", "agree"),
                            ("infeasible (proof + minimal conflicts vs enumeration's rejection counts)", "infeasible")):
            ratios = [(r["cp_s"] / r["ex_s"], r) for r in rows if r["ex_s"] > 0 and r["outcome"] == keep]
            if not ratios:
                continue
            worst = max(ratios, key=lambda x: x[0])
            print(f"{label}: worst CP-SAT / enumeration time ratio {worst[0]:.2f} ({worst[1]['candidates']} candidates, "
                  f"{worst[1]['gpus']} GPUs, {worst[1]['source']} #{worst[1]['index']}, "
                  f"CP-SAT {worst[1]['cp_s'] * 1e3:.1f} ms, enumeration {worst[1]['ex_s'] * 1e3:.1f} ms); "
                  f"over 1.5x: {sum(1 for q, _ in ratios if q > 1.5)} of {len(ratios)}, of which enumeration under 5 ms: "
                  f"{sum(1 for q, r in ratios if q > 1.5 and r['ex_s'] < 0.005)}")
            big = [x for x in ratios if x[1]["ex_s"] >= 0.01]
            if big:
                wb = max(big, key=lambda x: x[0])
                print(f"  where enumeration takes >= 10 ms ({len(big)} cases): worst {wb[0]:.2f} ({wb[1]['candidates']} candidates)")
        print("slowest commands:")
        for r in sorted(rows, key=lambda r: -r["command_s"])[:5]:
            print(f"  {r['command_s']:.2f} s  {r['outcome']:<12} {r['candidates']:>7} candidates  {r['gpus']} GPUs  {r['source']}")
        for r in rows:
            if r["outcome"].startswith(("DISAGREE", "not proved")):
                print("  !!", r)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--fuzz", type=int, default=600)
    parser.add_argument("--differential", type=int, default=400)
    parser.add_argument("--budget", type=float, default=60.0)
    args = parser.parse_args()
    from test_differential import scenarios  # noqa: E402  (tests/ on the path above)
    from test_fuzz import valid_scenarios  # noqa: E402

    from conftest import make_scenario  # noqa: E402

    optimize(make_scenario())  # warm up: the first solve of a process pays the libraries' one-time start-up
    optimize_exhaustive(make_scenario())
    tally = Tally()
    common = dict(derandomize=True, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck))

    @settings(max_examples=max(args.fuzz, 1), **common)
    @given(valid_scenarios())
    def fuzz(doc):
        try:
            scenario = scenario_from_dict(doc)
        except ScenarioError:
            return
        tally.run(scenario, args.budget, "fuzz")

    @settings(max_examples=max(args.differential, 1), **common)
    @given(scenarios(large=True))
    def differential(scenario):
        tally.run(scenario, args.budget, "differential")

    if args.fuzz:
        fuzz()
    if args.differential:
        differential()
    tally.report(args.budget)


if __name__ == "__main__":
    main()
