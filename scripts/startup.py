"""Start-up time of the command line (issue 14 item 15): the whole process of a few commands against the
bare import of the packages they need, median of N runs each, in fresh interpreters.

    python scripts/startup.py [--runs 7]

Prints a Markdown table: command, median wall s, and the ratio to the dependency import floor (`python -c
"import ortools.sat.python.cp_model, pydantic, numpy, click, yaml"`), plus the interpreter alone.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = [
    ("python -c pass (the interpreter)", [sys.executable, "-c", "pass"]),
    ("import floor: ortools, pydantic, numpy, click, yaml",
     [sys.executable, "-c", "import ortools.sat.python.cp_model, pydantic, numpy, click, yaml"]),
    ("optimize --help", [sys.executable, "-m", "optimizer.cli", "--help"]),
    ("optimize verify --scenario 16gpu-30b --tp 1 --dp 16 --ep 4 --etp 4",
     [sys.executable, "-m", "optimizer.cli", "verify", "--scenario", "16gpu-30b", "--tp", "1", "--dp", "16", "--ep", "4", "--etp", "4"]),
    ("optimize --scenario 16gpu-30b", [sys.executable, "-m", "optimizer.cli", "--scenario", "16gpu-30b"]),
]


def wall_s(command: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    results = [(name, wall_s(command, args.runs)) for name, command in CASES]
    floor = results[1][1]
    print(f"| command | median wall s ({args.runs} runs) | x import floor |")
    print("|---|---:|---:|")
    for name, seconds in results:
        print(f"| `{name}` | {seconds:.3f} | {seconds / floor:.2f} |")


if __name__ == "__main__":
    main()
