"""Benchmark: the single-scenario search, CP-SAT against the enumeration oracle on the same tables, and
the disaggregated search. Prints Markdown tables; median of --repeat runs.

Per case (every shipped scenario; the cases of issue 12; Qwen3-235B-A22B on 720, 5,040 and 65,536 H100s),
each in its own process so that its peak memory is its own: candidates, tables s (the cost and memory
tables of the whole grid), CP-SAT s (grid-wide evaluation + model + solve + the certificate built and
checked) and enumeration s (``optimize_exhaustive``) on those same tables, their ratio; end to end, each
search building the tables it needs (CP-SAT only those of candidates no layout rule rejects); the whole process of
``optimize --scenario`` (import floor included; ``python -c "import optimizer.cli"`` is printed as the
floor), and peak MiB of the case's process.

Then the disaggregated search (``optimize disagg``) on Qwen3-235B-A22B over 64, 256, 1024 and 4096 H100s:
CP-SAT with proof against the enumeration oracle on the very same candidate lists, raw and pruned.

    python scripts/bench.py [--repeat 3] [--only shipped|issue|large|disagg] [--case PATH_OR_NAME]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from optimizer.errors import Infeasible  # noqa: E402
from optimizer.search.exhaustive import optimize_exhaustive  # noqa: E402
from optimizer.inputs.loader import load_scenario, shipped_scenarios  # noqa: E402
from optimizer.search.result import build_tables  # noqa: E402
from optimizer.search.solve import optimize  # noqa: E402

QWEN = {"cluster": {"gpu": "h100-sxm", "gpus_per_node": 8}, "model": "Qwen3-235B-A22B",
        "workload": {"concurrent_sequences": 256, "input_tokens": 2048, "output_tokens": 512},
        "targets": {"ttft_s": 3, "tpot_s": 0.1}, "engine": {"name": "vllm", "enable_expert_parallel": True},
        "search": {"objective": "request_latency", "gpu_memory_utilization": 0.9}}
CASES_DIR = ROOT / "tests" / "data" / "core"  # the cases of issue 12: fuzz-368, the throughput questions, an infeasible one
LARGE_CASES = {f"qwen3-235b-{g}xh100": {**QWEN, "cluster": {**QWEN["cluster"], "num_nodes": g // 8}} for g in (720, 5040, 65536)}


def case_files(only: str | None, folder: Path) -> list[tuple[str, str]]:
    """(label, scenario path or shipped name) for every case of the selection."""
    out = []
    if only in (None, "shipped"):
        out += [(name, name) for name in shipped_scenarios()]
    if only in (None, "issue"):
        out += [(path.stem, str(path)) for path in sorted(CASES_DIR.glob("*.yaml"))]
    if only in (None, "large"):
        for name, data in LARGE_CASES.items():
            path = folder / f"{name}.yaml"
            path.write_text(yaml.safe_dump({"name": name, **data}))
            out.append((name, str(path)))
    return out


def run_case(target: str, repeat: int) -> dict:
    """Timings of one case in this process (called with --case)."""
    scenario = load_scenario(target)
    start = time.perf_counter()
    tables = build_tables(scenario)
    tables_s = time.perf_counter() - start
    cp_t, ex_t, cp, ex = [], [], None, None
    for _ in range(repeat):
        t, cp = timed(lambda: optimize(scenario, tables=tables))
        cp_t.append(t)
        t, ex = timed(lambda: optimize_exhaustive(scenario, tables=tables))
        ex_t.append(t)
    if isinstance(cp, Infeasible) != isinstance(ex, Infeasible):
        same = "NO"
    elif isinstance(cp, Infeasible):
        same = "both infeasible"
    else:
        same = "yes" if cp.evidence.objective == ex.evidence.objective and cp.plan == ex.plan and cp.evidence.proved_optimal else "NO"
    cp_own = timed(lambda: optimize(scenario))[0]  # each search building only the tables it needs
    ex_own = timed(lambda: optimize_exhaustive(scenario))[0]
    return {"candidates": len(tables.layouts), "tables_s": tables_s, "cp_s": statistics.median(cp_t),
            "cp_own_s": cp_own, "ex_own_s": ex_own,
            "ex_s": statistics.median(ex_t), "same": same,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "certificate": getattr(getattr(cp, "evidence", None), "certificate_check", None)}


def bench_cases(only: str | None, repeat: int) -> None:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import optimizer.cli"], check=True)
    floor = time.perf_counter() - start
    print(f"Import floor (python -c 'import optimizer.cli'): {floor:.2f} s\n")
    print("| case | candidates | tables (s) | CP-SAT (s) | enumeration (s) | CP-SAT / enumeration | end to end: CP-SAT / enumeration (s) "
          "| process (s) | peak MiB | same optimum |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---|")
    worst = 0.0
    with tempfile.TemporaryDirectory() as folder:
        for label, target in case_files(only, Path(folder)):
            proc = subprocess.run([sys.executable, __file__, "--case", target, "--repeat", str(repeat)], capture_output=True,
                                  text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "optimizer.cli", "--scenario", target], capture_output=True, check=False)
            whole = time.perf_counter() - start
            ratio = r["cp_s"] / r["ex_s"] if r["ex_s"] else float("inf")
            worst = max(worst, ratio)
            print(f"| {label} | {r['candidates']:,} | {r['tables_s']:.3f} | {r['cp_s']:.3f} | {r['ex_s']:.3f} | {ratio:.2f} "
                  f"| {r['cp_own_s']:.3f} / {r['ex_own_s']:.3f} | {whole:.2f} | {r['peak_mib']:.0f} | {r['same']} |")
    print(f"\nWorst CP-SAT / enumeration ratio: {worst:.2f}")


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

    from optimizer.search import disagg
    from optimizer.inputs.loader import scenario_from_dict

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
                t, cp = timed(lambda: disagg.solve_disaggregated(scenario, pools, check=False))  # the solver alone
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
    parser.add_argument("--only", choices=["shipped", "issue", "large", "disagg"], default=None)
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # one case, in a child process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.repeat)))
        return
    if args.only != "disagg":
        bench_cases(args.only, args.repeat)
    if args.only in (None, "disagg"):
        bench_disaggregated(args.repeat)


if __name__ == "__main__":
    main()
