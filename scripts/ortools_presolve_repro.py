"""A reproduction of a CP-SAT presolve fault, for the OR-Tools issue tracker (issue 12 of this project).

The former formulation of the search (kept in ``solve.py`` as ``build_model``/``enforced_model`` for the double
check: the layer split and the latencies as variables, bounded through ``only_enforce_if``) on the
scenario ``fuzz-368`` below: minimising ``primary`` with presolve on returns OPTIMAL 17,248,813,669 with
an equal bound; with ``cp_model_presolve=False`` it returns 9,974,309,342, which the enumeration oracle
confirms (PP 27, batch 64). Measured with OR-Tools 9.15.6755 with 1 and 8 workers.

Prints both solves and writes the model as a text proto (``--out``), which reproduces it without this
project: ``solver.solve(model)`` on the loaded proto with ``cp_model_presolve`` true and false.

    python scripts/ortools_presolve_repro.py [--out fuzz-368.pb.txt]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import ortools  # noqa: E402
from ortools.sat.python import cp_model  # noqa: E402

from optimizer.search.exhaustive import optimize_exhaustive  # noqa: E402
from optimizer.inputs.loader import load_scenario  # noqa: E402
from optimizer.search.result import build_tables  # noqa: E402
from optimizer.search.rules import build_rules  # noqa: E402
from optimizer.search.solve import enforced_model  # noqa: E402

FUZZ_368 = ROOT / "tests" / "data" / "core" / "fuzz-368.yaml"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None, help="write the model as a text proto here")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    scenario = load_scenario(str(FUZZ_368))
    tables = build_tables(scenario)
    oracle = optimize_exhaustive(scenario, tables=tables)
    print(f"OR-Tools {ortools.__version__}; oracle primary {oracle.evidence.objective // len(tables.layouts):,} "
          f"({oracle.plan.layout}, batch {oracle.plan.batch_per_replica})")
    for presolve in (True, False):
        view = enforced_model(scenario, tables, build_rules(scenario))
        view.model.minimize(view.primary)
        if args.out and presolve:
            view.model.export_to_file(args.out)
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = args.workers
        solver.parameters.cp_model_presolve = presolve
        status = solver.solve(view.model)
        print(f"cp_model_presolve={presolve}: {solver.status_name(status)} objective {solver.objective_value:,.0f} "
              f"bound {solver.best_objective_bound:,.0f}")


if __name__ == "__main__":
    main()
