"""Regenerate tests/golden/<scenario>.json from the shipped scenarios. Run after a reviewed change to the
cost model or the rules, and explain the diff in the commit message.

    python scripts/update_golden.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from optimizer.search.diagnose import diagnose  # noqa: E402
from optimizer.errors import Infeasible  # noqa: E402
from optimizer.inputs.loader import load_scenario, shipped_scenarios  # noqa: E402
from optimizer.search.solve import optimize  # noqa: E402
from optimizer.search.verify import certify  # noqa: E402


def golden(name: str) -> dict:
    """The frozen facts of one shipped scenario's result: plan, integer estimate, objective; or the
    rules that make it infeasible and the confirmed changes that would admit one."""
    scenario = load_scenario(name)
    try:
        solution = optimize(scenario)
    except Infeasible as exc:
        diagnosis = diagnose(scenario, exc.conflicts)
        return {"scenario": name, "infeasible": exc.reasons, "conflicts": [list(c) for c in exc.conflicts],
                "changes": {c.field: c.proposed if isinstance(c.proposed, int) else round(c.proposed, 6) for c in diagnosis.changes}}
    est = certify(scenario, solution.plan, solution.tables).estimate
    return {
        "scenario": name,
        "plan": {**solution.plan.layout.as_dict(), "layers_per_stage": list(solution.plan.layers_per_stage),
                 "batch_per_replica": solution.plan.batch_per_replica},
        "estimate_ns": {"ttft": est.ttft_ns, "tpot": est.tpot_ns, "request_latency": est.request_latency_ns},
        "objective": solution.evidence.objective,
        "status": solution.evidence.status,
    }


def main() -> None:
    out = ROOT / "tests" / "golden"
    out.mkdir(parents=True, exist_ok=True)
    for name in shipped_scenarios():
        (out / f"{name}.json").write_text(json.dumps(golden(name), indent=2, sort_keys=True) + "\n")
        print(f"wrote tests/golden/{name}.json")


if __name__ == "__main__":
    main()
