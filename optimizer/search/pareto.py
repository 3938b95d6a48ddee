"""The latency / throughput trade-off of one scenario: every feasible (layout, batch) candidate as a point
(output tokens/s per user against output tokens/s per GPU), the Pareto front of those points, a CSV and a
PNG with the plan ``optimize`` picks marked.

A point is one candidate of the chosen-batch grid (every layout of the cluster times the batch ladder up
to ``engine.max_num_seqs``) with its best layer split, judged by every rule except the service targets
(TTFT, TPOT, throughput): the front shows what the hardware can do, and the CSV says which points also
meet the scenario's targets. Per user: ``1 / TPOT``; per GPU: ``DP x batch x OSL / request latency / GPUs``
(the same integer tables as the solver). This is the plot NVIDIA's aiconfigurator and vLLM's benchmark
sweeps draw, computed here from the cost model, not measured.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, replace
from pathlib import Path

from optimizer.errors import Infeasible
from optimizer.search.exhaustive import feasible_plans
from optimizer.search.result import build_tables
from optimizer.search.rules import TARGET_RULES
from optimizer.inputs.scenario import Objective, Scenario, Search
from optimizer.search.solve import optimize
from optimizer.search.verify import certify


@dataclass(frozen=True)
class Point:
    """One feasible candidate: its plan and the two axes, with the targets it meets."""

    tp: int
    pp: int
    dp: int
    ep: int
    etp: int
    batch_per_replica: int
    layers_per_stage: tuple[int, ...]
    ttft_s: float
    tpot_s: float
    tokens_per_s_per_user: float
    tokens_per_s_per_gpu: float
    meets_targets: bool
    pareto: bool = False
    chosen: bool = False


def _chosen_batch(scenario: Scenario) -> Scenario:
    search = Search(**{**scenario.search.model_dump(), "objective": Objective.THROUGHPUT_PER_GPU})
    return scenario.model_copy(update={"search": search})


def pareto_points(scenario: Scenario) -> list[Point]:
    """Every feasible candidate (service targets aside) as a ``Point``, front and chosen plan marked.

    The chosen plan is ``optimize(scenario)``'s (the scenario's own objective and targets); when that is
    infeasible no point is marked. Sorted by tokens/s per user, then per GPU (deterministic).
    """
    free = _chosen_batch(scenario)
    tables = build_tables(free)
    points = [_point(scenario, plan, ctx.estimate, meets_targets=not failing)
              for plan, ctx, failing in feasible_plans(free, tables, skip=TARGET_RULES)]
    try:
        solution = optimize(scenario)
    except Infeasible:
        solution = None
    key = None
    if solution is not None:
        chosen = solution.plan
        key = _key(chosen.layout.tp, chosen.layout.pp, chosen.layout.dp, chosen.layout.ep, chosen.layout.etp, chosen.batch_per_replica)
        if not any(_key(p.tp, p.pp, p.dp, p.ep, p.etp, p.batch_per_replica) == key for p in points):
            # a fixed batch (ceil(B / DP)) off the ladder: add the chosen plan as its own point
            points.append(_point(scenario, chosen, certify(scenario, chosen, solution.tables).estimate, meets_targets=True))
    front = _front(points)
    marked = [replace(p, pareto=i in front, chosen=_key(p.tp, p.pp, p.dp, p.ep, p.etp, p.batch_per_replica) == key)
              for i, p in enumerate(points)]
    return sorted(marked, key=lambda p: (p.tokens_per_s_per_user, p.tokens_per_s_per_gpu, p.tp, p.pp, p.dp, p.ep, p.etp,
                                         p.batch_per_replica))


def _key(*values: int) -> tuple[int, ...]:
    return values


def _point(scenario: Scenario, plan, est, *, meets_targets: bool) -> Point:
    """The two axes of one plan: ``1 / TPOT`` per user, ``DP x batch x OSL / latency / GPUs`` per GPU."""
    sequences = plan.layout.dp * plan.batch_per_replica
    latency = est.request_latency_ns
    per_gpu = sequences * scenario.workload.output_tokens * 1e9 / latency / scenario.cluster.num_gpus if latency else 0.0
    lay = plan.layout
    return Point(tp=lay.tp, pp=lay.pp, dp=lay.dp, ep=lay.ep, etp=lay.etp, batch_per_replica=plan.batch_per_replica,
                 layers_per_stage=plan.layers_per_stage, ttft_s=est.ttft_ns / 1e9, tpot_s=est.tpot_ns / 1e9,
                 tokens_per_s_per_user=1e9 / est.tpot_ns if est.tpot_ns else 0.0, tokens_per_s_per_gpu=per_gpu,
                 meets_targets=meets_targets)


def _front(points: list[Point]) -> set[int]:
    """Indices of the points no other point beats: none has at least as much of both and more of one
    (points on the very same spot are all kept)."""
    order = sorted(range(len(points)), key=lambda i: (-points[i].tokens_per_s_per_user, -points[i].tokens_per_s_per_gpu))
    front: set[int] = set()
    best_gpu, last = float("-inf"), None
    for i in order:
        p = points[i]
        same_spot = last is not None and (p.tokens_per_s_per_user, p.tokens_per_s_per_gpu) == last
        if p.tokens_per_s_per_gpu > best_gpu or same_spot:
            front.add(i)
            best_gpu, last = max(best_gpu, p.tokens_per_s_per_gpu), (p.tokens_per_s_per_user, p.tokens_per_s_per_gpu)
    return front


COLUMNS = ("tp", "pp", "dp", "ep", "etp", "batch_per_replica", "layers_per_stage", "ttft_s", "tpot_s", "tokens_per_s_per_user",
           "tokens_per_s_per_gpu", "meets_targets", "pareto", "chosen")


def points_csv(points: list[Point]) -> str:
    """The points as CSV text (floats to 6 significant digits, so the file is byte-stable)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for p in points:
        row = []
        for col in COLUMNS:
            value = getattr(p, col)
            if isinstance(value, float):
                value = f"{value:.6g}"
            elif isinstance(value, tuple):
                value = " ".join(str(v) for v in value)
            elif isinstance(value, bool):
                value = "yes" if value else "no"
            row.append(value)
        writer.writerow(row)
    return out.getvalue()


def plot(points: list[Point], path: Path, *, title: str) -> Path:
    """The PNG: every feasible point, those meeting the targets darker, the front as a line, the chosen
    plan as a star. Written through a temp file and a rename."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for meets, colour, label in ((False, "#c8c8c8", "misses a target"), (True, "#4a7fb5", "meets the targets")):
        chosen = [p for p in points if p.meets_targets == meets]
        if chosen:
            ax.scatter([p.tokens_per_s_per_user for p in chosen], [p.tokens_per_s_per_gpu for p in chosen], s=12, c=colour, label=label)
    front = sorted((p for p in points if p.pareto), key=lambda p: p.tokens_per_s_per_user)
    if front:
        ax.plot([p.tokens_per_s_per_user for p in front], [p.tokens_per_s_per_gpu for p in front], color="#d0542c", lw=1.5,
                label="Pareto front")
    for p in points:
        if p.chosen:
            ax.scatter([p.tokens_per_s_per_user], [p.tokens_per_s_per_gpu], marker="*", s=220, c="#f2b01e", edgecolors="black",
                       zorder=5, label=f"optimize: TP{p.tp} PP{p.pp} DP{p.dp} EP{p.ep} batch {p.batch_per_replica}")
    ax.set_xlabel("output tokens/s per user (1 / TPOT)")
    ax.set_ylabel("output tokens/s per GPU")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100, metadata={"Software": None})
    os.replace(tmp, path)
    plt.close(fig)
    return path
