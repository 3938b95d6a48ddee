"""Sweep throughput: wall time of `optimize sweep` for grids of 10, 100 and 1000 scenarios on this
machine, with the process pool (all cores) and fresh output folders, so every scenario is solved.

    python scripts/bench_sweep.py [--sizes 10,100,1000] [--workers N]

The grid crosses shipped scenarios (dense and MoE, vLLM and Megatron) with GPU counts, GPU kinds, ISL
and OSL; N jobs spread evenly over it are run. Prints a Markdown table: scenarios, seconds, scenarios/s, and
the time per scenario, which should stay flat if the sweep scales linearly.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from optimizer.outputs.sweep import expand_jobs, run_sweep  # noqa: E402

BASES = ["llama-3.1-70b-8xh100", "qwen3-30b-a3b-8xh100", "mixtral-8x7b-8xh100", "gpt-oss-120b-8xh100",
         "16gpu-30b", "3gpu-32gb", "qwen3-235b-a22b-16xh100"]


def grid(size: int) -> list:
    jobs = expand_jobs([str(ROOT / "scenarios" / f"{b}.yaml") for b in BASES], gpus=[8, 16, 32, 64, 128],
                       gpu_names=["h100-sxm", "h200-sxm", "b200"], isl=[512, 1024, 2048, 4096, 8192], osl=[128, 256, 512, 1024])
    if len(jobs) < size:
        raise SystemExit(f"the grid has only {len(jobs)} scenarios")
    return [jobs[i * len(jobs) // size] for i in range(size)]  # spread over every base scenario


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    print(f"cores: {os.cpu_count()}, workers: {args.workers or os.cpu_count()}")
    print("| scenarios | wall (s) | scenarios/s | s per scenario | optimal | infeasible | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for size in (int(s) for s in args.sizes.split(",")):
        jobs = grid(size)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = run_sweep(jobs, Path(tmp) / "out", workers=args.workers)
            wall = time.perf_counter() - start
        print(f"| {size} | {wall:.1f} | {size / wall:.1f} | {wall / size:.3f} | {result.count('optimal')} "
              f"| {result.count('infeasible')} | {result.count('error')} |", flush=True)


if __name__ == "__main__":
    main()
