"""Why no plan, and the smallest change that gives one.

When CP-SAT proves that no plan satisfies the rules, ``solve.disjoint_conflicts`` names minimal sets of
rules that conflict (disjoint: each is an independent reason). This module then asks, one input at a time, what the smallest change to the
scenario would be, and confirms every answer with a re-solve of the changed scenario (the same CP-SAT
model, ``solve.is_feasible``), so a suggestion is never a guess:

- **GPUs**: the fewest GPUs of this kind that admit a plan. Below one node, a single node with fewer GPUs;
  above, whole nodes. Counts below a memory lower bound are skipped: every parameter and every token's KV
  cache is stored at least once, so ``N x (cap - reserve) >= weights + KV cache`` is necessary.
- **Memory per GPU** (when ``memory_cap`` is in the conflict): the smallest whole number of GiB per GPU,
  found by bisection; feasibility only grows with memory, so the answer is exact to the GiB.
- **Batch and prompt length** (when memory or a latency target is in the conflict, and throughput is not):
  the largest ``concurrent_sequences`` and the largest ``input_tokens`` that admit a plan, by bisection;
  the answer is confirmed at the boundary (it works, one more does not).
- **Targets** in the conflict: the best TTFT, TPOT or throughput any plan reaches with that target lifted,
  i.e. how far the target must move.
- **Switches** in the conflict: ``tp_within_node`` -> ``cluster.allow_tp_across_nodes``, ``even_layers``
  -> ``search.allow_uneven_layers``, vLLM's ``engine_folding`` -> ``enable_expert_parallel`` or Megatron,
  ``compute_balance`` / ``memory_balance`` -> the target unset.

Every search is bounded (``max_checks``), deterministic (one CP-SAT worker, fixed seed) and says what it
tried when it finds nothing.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from optimizer.model.engines import weights_and_kv_room_bytes
from optimizer.errors import Infeasible, OptimizerError
from optimizer.model.memory import stage_memory
from optimizer.model.parallel import Layout, layout_grid
from optimizer.search.result import build_tables
from optimizer.search.rules import Rule, build_rules
from optimizer.inputs.scenario import EngineName, Objective, Scenario
from optimizer.search.solve import Deadline, best_primary_ns, describe_conflict, disjoint_conflicts, is_feasible
from optimizer.units import GIB

LATENCY_TARGETS = ("ttft_target", "tpot_target")
TARGETS = (*LATENCY_TARGETS, "throughput_target")
MAX_GPUS = 1 << 16


@dataclass(frozen=True)
class Change:
    """One change to the scenario that admits a plan, confirmed by a re-solve.

    ``field`` is the dotted scenario field; ``current`` and ``proposed`` its values as written in YAML;
    ``text`` is the line a person reads.
    """

    field: str
    current: Any
    proposed: Any
    text: str


@dataclass(frozen=True)
class Diagnosis:
    """Why no plan, and what would give one.

    ``conflicts``: minimal conflicting rule sets, pairwise disjoint (every one must be relaxed);
    ``reasons``: one line per conflict. ``changes``: single changes that admit a plan, each confirmed by
    a re-solve; a change whose ``text`` says "with ... set aside" fixes its own conflict only, and the
    others need a change too. ``notes``: searches that found nothing, so the user knows they were tried.
    """

    conflicts: tuple[tuple[str, ...], ...]
    reasons: tuple[str, ...]
    changes: tuple[Change, ...]
    notes: tuple[str, ...]


def _with(scenario: Scenario, section: str, **changes: Any) -> Scenario:
    """``scenario`` with fields of one section replaced, re-validated (a changed scenario is checked
    exactly like a loaded one)."""
    data = scenario.model_dump()
    data[section].update(changes)
    return Scenario.model_validate(data)


def _with_gpus(scenario: Scenario, num_gpus: int) -> Scenario:
    """The same GPUs, ``num_gpus`` of them: one node of ``num_gpus`` below a node, whole nodes above."""
    per_node = scenario.cluster.gpus_per_node
    if num_gpus < per_node:
        return _with(scenario, "cluster", num_nodes=1, gpus_per_node=num_gpus)
    return _with(scenario, "cluster", num_nodes=num_gpus // per_node)


def _rules(scenario: Scenario, lift: tuple[str, ...]) -> tuple[Rule, ...]:
    return tuple(r for r in build_rules(scenario) if r.name not in lift)


def _with_memory(scenario: Scenario, memory_bytes: int) -> Scenario:
    """``scenario`` with ``memory_bytes`` per GPU (an int > 0, so no re-validation is needed)."""
    gpu = scenario.cluster.gpu.model_copy(update={"memory_bytes": memory_bytes})
    return scenario.model_copy(update={"cluster": scenario.cluster.model_copy(update={"gpu": gpu})})


class _OutOfTime(Exception):
    """The command's budget ran out in the middle of a search."""


_DEADLINE: ContextVar[Deadline | None] = ContextVar("diagnosis_deadline", default=None)


def _check_time() -> None:
    deadline = _DEADLINE.get()
    if deadline is not None and deadline.expired():
        raise _OutOfTime


def _feasible(scenario: Scenario, lift: tuple[str, ...] = (), **kwargs: Any) -> bool:
    """Does ``scenario`` admit a plan with the rules named in ``lift`` set aside?"""
    _check_time()
    try:
        return is_feasible(scenario, rules=_rules(scenario, lift), **kwargs)
    except OptimizerError:  # a change so large the cost model leaves the solver's range: not a fix
        return False


def min_gpus_lower_bound(scenario: Scenario) -> int | None:
    """A count below which no plan fits in memory: ``ceil((weights + KV cache) / room)``, with weights and
    KV cache of the whole model and batch as one GPU would hold them and ``room`` the most of them one GPU
    can hold under the engine's limits (``engines.weights_and_kv_room_bytes``); None if that is nothing
    (the cap does not even hold the runtime's own memory: no count works)."""
    room = weights_and_kv_room_bytes(scenario)
    if room <= 0:
        return None
    one = Layout(tp=1, pp=1, dp=1, ep=1, etp=1, edp=1)
    (stage,) = stage_memory(scenario=scenario, layout=one, layers_per_stage=(scenario.model.num_hidden_layers,),
                            batch=scenario.workload.concurrent_sequences)
    return max(1, -(-(stage.weights_bytes + stage.kv_cache_bytes) // room))


COMMON_NODE_GPUS = 8  # the HGX / DGX node (8 GPUs on NVLink): tried as well when the scenario's nodes differ


def fewest_gpus(scenario: Scenario, *, max_checks: int = 40, max_layouts: int = 50_000) -> tuple[Change | None, str]:
    """The fewest GPUs of the scenario's kind that admit a plan, and a note on what was searched.

    First in nodes of the scenario's size (``_fewest_on_nodes``); then, when those are not nodes of 8,
    in nodes of 8 too (TP is bounded by the node, so 1-GPU nodes can need far more GPUs than an 8-GPU
    node, or admit no plan at all): the answer names the node shape it varied, and a node shape that
    needs fewer GPUs is proposed as ``cluster.gpus_per_node``."""
    per_node = scenario.cluster.gpus_per_node
    budget = [max_layouts, max_layouts]  # layouts left to solve (shared by both node shapes), and the whole budget
    change, note = _fewest_on_nodes(scenario, per_node, scenario.cluster.num_gpus, max_checks=max_checks, budget=budget)
    if per_node == COMMON_NODE_GPUS:
        return change, note
    if budget[0] <= 0:
        return change, note + (f"; nodes of {COMMON_NODE_GPUS} GPUs were not tried" if note else "")
    _check_time()
    eight = _with(scenario, "cluster", num_nodes=1, gpus_per_node=COMMON_NODE_GPUS)
    other, other_note = _fewest_on_nodes(eight, COMMON_NODE_GPUS, None, max_checks=max_checks, budget=budget)
    if other is not None and (change is None or other.proposed < change.proposed):
        text = (f"nodes of {COMMON_NODE_GPUS} GPUs instead of {per_node}: " + other.text
                + (f"; {note}" if change is None else f"; in nodes of {per_node}: {change.proposed}"))
        return Change("cluster.gpus_per_node", per_node, COMMON_NODE_GPUS, text), note
    return change, "; ".join(n for n in (note, other_note) if n)


def _fewest_on_nodes(scenario: Scenario, per_node: int, current: int | None, *, max_checks: int,
                     budget: list[int]) -> tuple[Change | None, str]:
    """The fewest GPUs in nodes of ``per_node`` that admit a plan (``current``, the scenario's own count,
    is not tried again). Candidates in increasing order: ``1..per_node - 1`` on one node, then whole
    nodes; every count is tried up to ``max_checks`` candidates, then node counts double (up to 65,536
    GPUs). The search stops when the grids it has solved use up ``budget[0]`` layouts (a deterministic
    stand-in for a time budget, shared by the node shapes tried: solve time grows with the grid). The note
    says whether the answer is exactly the fewest, only the fewest found, or where the search stopped."""
    lower = min_gpus_lower_bound(scenario)
    shape_of = f"in nodes of {per_node} GPU{'s' if per_node > 1 else ''}"
    if lower is None:
        return None, "no GPU count helps: the memory cap does not even hold the runtime's own memory (reserve, CUDA graphs, buffers)"
    counts = [n for n in range(lower, per_node)]
    nodes = max(1, -(-lower // per_node))
    exact_until = None
    while nodes * per_node <= MAX_GPUS:
        counts.append(nodes * per_node)
        if len(counts) < max_checks:
            nodes += 1
        else:
            exact_until = exact_until or nodes * per_node
            nodes *= 2
    for n in counts:
        if n == current:
            continue
        budget[0] -= len(layout_grid(num_gpus=n, is_moe=scenario.model.is_moe))
        if budget[0] < 0:
            return None, (f"no GPU count from {counts[0]:,} to {n:,} {shape_of} admits a plan; the search stopped there "
                          f"(its budget of {budget[1]:,} layouts solved)")
        if _feasible(_with_gpus(scenario, n)):
            shape = f"{n // per_node} node(s) x {per_node}" if n >= per_node else f"one node of {n}"
            exact = exact_until is None or n <= exact_until
            reasons = [f"fewer than {lower} cannot hold the weights and KV cache"] if lower > 1 else []
            tried = [m for m in counts if m < n and m != current]
            if tried:
                reasons.append(f"{len(tried)} smaller count(s) from {tried[0]} {shape_of} were tried and fail"
                               + ("" if exact else f"; above {exact_until} only doubled node counts were tried"))
            searched = "; ".join(reasons) or "no smaller count exists"
            fewest = "is the fewest that admits" if exact else "is the fewest found that admits"
            has = f"has {current}; " if current is not None else ""
            return Change("cluster.num_gpus", current, n,
                          f"GPUs: {n} x {scenario.cluster.gpu.name} ({shape}) {fewest} a plan ({has}{searched})"), ""
    if lower > MAX_GPUS:
        return None, (f"no GPU count up to {MAX_GPUS:,} helps: the weights and KV cache alone need at least "
                      f"{lower:,} x {scenario.cluster.gpu.name}")
    return None, f"no GPU count from {lower:,} to {MAX_GPUS:,} of {scenario.cluster.gpu.name} {shape_of} admits a plan"


def _largest(check: Any, low: int, high: int) -> int | None:
    """Largest value in ``[low, high]`` where ``check`` holds, by bisection (assumes it holds on a prefix);
    None if it fails at ``low``."""
    if not check(low):
        return None
    while low < high:
        mid = (low + high + 1) // 2
        if check(mid):
            low = mid
        else:
            high = mid - 1
    return low


def _smallest(check: Any, low: int, high: int) -> int | None:
    """Smallest value in ``[low, high]`` where ``check`` holds (assumes it holds on a suffix)."""
    if not check(high):
        return None
    while low < high:
        mid = (low + high) // 2
        if check(mid):
            high = mid
        else:
            low = mid + 1
    return low


def memory_needed(scenario: Scenario, lift: tuple[str, ...] = ()) -> tuple[Change | None, str]:
    """The smallest whole GiB per GPU (same count, same utilisation) that admits a plan (with the rules in
    ``lift`` set aside)."""
    tables = build_tables(scenario)  # memory size changes only the cap, not the tables
    have = scenario.cluster.gpu.memory_bytes

    def fits(gib: int) -> bool:
        return _feasible(_with_memory(scenario, gib * GIB), lift, tables=tables)

    low = have // GIB + 1
    high = low
    while not fits(high):
        if high >= 1 << 20:  # 1 PiB per GPU: memory is not what blocks this scenario
            return None, "no amount of memory per GPU (up to 1 PiB) admits a plan on its own"
        high *= 2
    need = _smallest(fits, low, high)
    short = need * GIB - have
    return Change("cluster.gpu.memory_bytes", have, need * GIB,
                  f"memory per GPU: {need} GiB would admit a plan (has {have / GIB:.1f} GiB, short by "
                  f"{short / GIB:.1f} GiB at gpu_memory_utilization {float(scenario.search.gpu_memory_utilization):g})"), ""


def largest_workload(scenario: Scenario, field: str, lift: tuple[str, ...] = ()) -> tuple[Change | None, str]:
    """The largest ``workload.<field>`` below the current value that admits a plan (rules in ``lift`` set
    aside)."""
    current = getattr(scenario.workload, field)
    if current <= 1:
        return None, f"workload.{field} is already {current}"
    best = _largest(lambda v: _feasible(_with(scenario, "workload", **{field: v}), lift), 1, current - 1)
    if best is None:
        return None, f"no smaller workload.{field} admits a plan (even 1 fails)"
    what = {"concurrent_sequences": "concurrent sequences", "input_tokens": "input tokens (ISL)"}[field]
    return Change(f"workload.{field}", current, best,
                  f"{what}: {best} is the most that admits a plan (has {current}; {best + 1} does not)"), ""


_TARGET_FIELDS = {"ttft_target": "ttft_s", "tpot_target": "tpot_s", "throughput_target": "output_tokens_per_s"}


def _best_primary_ns(scenario: Scenario, lift: tuple[str, ...]) -> int | None:
    """The best primary objective (ns) with the rules in ``lift`` set aside, or None if none admit a plan.
    A lifted memory cap lets every candidate take its fastest split regardless of memory; lifted targets
    constrain nothing (``solve.best_primary_ns`` over the candidates' exact values)."""
    _check_time()
    try:
        return best_primary_ns(scenario, rules=_rules(scenario, lift))
    except (Infeasible, OptimizerError):
        return None


def best_target(scenario: Scenario, target: str, conflict: tuple[str, ...], lift: tuple[str, ...] = ()) -> tuple[Change | None, str]:
    """How far ``target`` must move: the best value of its metric over all plans with it lifted (and,
    if that alone is not enough, with the other targets of its conflict lifted too; rules in ``lift``
    are set aside throughout)."""
    objective, section_field = {
        "ttft_target": (Objective.TTFT, "ttft_s"),
        "tpot_target": (Objective.TPOT, "tpot_s"),
        "throughput_target": (Objective.REQUEST_LATENCY, "output_tokens_per_s"),
    }[target]
    searched = _with(scenario, "search", objective=objective)
    for lifted in ((target,), tuple(t for t in conflict if t in TARGETS)):
        primary = _best_primary_ns(searched, lifted + lift)
        if primary is None:
            continue
        w = scenario.workload
        also = "" if len(lifted) == 1 else f" (with {', '.join(t for t in lifted if t != target)} lifted too)"
        current = getattr(scenario.targets, section_field)
        if target == "throughput_target":
            best = w.concurrent_sequences * w.output_tokens * 1e9 / primary if primary else float("inf")
            return Change(f"targets.{section_field}", float(current), best,
                          f"{target}: the most any plan reaches is {best:,.0f} output tokens/s "
                          f"(target {float(current):,.0f}){also}"), ""
        return Change(f"targets.{section_field}", float(current), primary / 1e9,
                      f"{target}: the best any plan reaches is {primary / 1e9:.6g} s (target {float(current):g} s){also}"), ""
    return None, f"{target}: lifting the targets alone does not admit a plan"


def switches(scenario: Scenario, conflict: tuple[str, ...], lift: tuple[str, ...] = ()) -> list[Change]:
    """Scenario switches that relax a rule in the conflict, each confirmed by a re-solve."""
    found = []
    candidates = []
    if "tp_within_node" in conflict:
        candidates.append(("cluster", "allow_tp_across_nodes", True, "allow TP across nodes (slower links)"))
    if "even_layers" in conflict:
        candidates.append(("search", "allow_uneven_layers", True, "allow uneven layer splits"))
    if "engine_folding" in conflict and scenario.engine.name is EngineName.VLLM:
        candidates.append(("engine", "enable_expert_parallel", not scenario.engine.enable_expert_parallel,
                           "toggle vLLM's --enable-expert-parallel"))
    if "engine_folding" in conflict:  # engines whose folding admits more layouts: SGLang's any ETP x EP, Megatron's all
        if scenario.engine.name in (EngineName.VLLM, EngineName.TENSORRT_LLM):
            candidates.append(("engine", "name", EngineName.SGLANG, "use SGLang, whose experts take any ETP x EP of an instance"))
        candidates.append(("engine", "name", EngineName.MEGATRON, "use Megatron-Core's general folding"))
    for rule, field in (("compute_balance", "max_compute_imbalance_pct"), ("memory_balance", "max_memory_imbalance_pct")):
        if rule in conflict:
            candidates.append(("targets", field, None, f"no {rule.replace('_', ' ')} target"))
    for section, name, value, text in candidates:
        current = getattr(getattr(scenario, section), name)
        if current != value and _feasible(_with(scenario, section, **{name: value}), lift):
            shown = value.value if isinstance(value, EngineName) else str(value).lower()
            current = float(current) if isinstance(current, Fraction) else current  # as YAML writes it (JSON has no fractions)
            found.append(Change(f"{section}.{name}", current, value, f"{section}.{name}: {shown} admits a plan ({text})"))
    return found


def diagnose(scenario: Scenario, conflicts: tuple[tuple[str, ...], ...] = (), *, deadline: Deadline | None = None) -> Diagnosis:
    """The conflicts and the confirmed smallest changes for an infeasible ``scenario``.

    Args:
        conflicts: from ``Infeasible.conflicts``; computed with CP-SAT when empty (e.g. after the exhaustive
            solver, which reports rejection counts instead).
        deadline: the command's budget; a search it stops is named in ``notes`` and the rest are skipped.

    Raises:
        OptimizerError: the scenario admits a plan after all (nothing to diagnose).
    """
    token = _DEADLINE.set(deadline)
    try:
        return _diagnose(scenario, conflicts, deadline)
    finally:
        _DEADLINE.reset(token)


def _diagnose(scenario: Scenario, conflicts: tuple[tuple[str, ...], ...], deadline: Deadline | None) -> Diagnosis:
    rules = build_rules(scenario)
    if not conflicts:
        conflicts = disjoint_conflicts(scenario, build_tables(scenario), rules, deadline=deadline)
        if not conflicts:
            raise OptimizerError(f"{scenario.name} admits a plan: there is nothing to diagnose")
    reasons = tuple(" + ".join(describe_conflict(c, rules)) for c in conflicts)
    changes: list[Change] = []
    notes: list[str] = []

    def add(search: Any, lift: tuple[str, ...]) -> None:
        if notes and notes[-1].startswith("the time budget ran out"):
            return
        try:
            change, note = search()
        except _OutOfTime:
            notes.append(f"the time budget ran out ({deadline.seconds:g} s, --time-limit); the searches after this point were skipped")
            return
        aside = f" (with {', '.join(lift)} set aside: that conflict needs its own change)" if lift else ""
        if change is not None:
            changes.append(Change(change.field, change.current, change.proposed, change.text + aside))
        elif note:
            notes.append(note + aside)

    add(lambda: fewest_gpus(scenario), ())
    for conflict in conflicts:
        lift = tuple(name for other in conflicts if other is not conflict for name in other)
        if "memory_cap" in conflict:
            add(lambda: memory_needed(scenario, lift), lift)
        if ("memory_cap" in conflict or any(t in conflict for t in LATENCY_TARGETS)) and "throughput_target" not in conflict:
            add(lambda: largest_workload(scenario, "concurrent_sequences", lift), lift)
            add(lambda: largest_workload(scenario, "input_tokens", lift), lift)
        for target in TARGETS:
            if target in conflict:
                add(lambda: best_target(scenario, target, conflict, lift), lift)
        found: list[Change] = []

        def flip(conflict=conflict, lift=lift) -> tuple[None, str]:
            found.extend(switches(scenario, conflict, lift))
            return None, ""

        add(flip, lift)
        for change in found:
            add(lambda change=change: (change, ""), lift)
    return Diagnosis(conflicts=tuple(conflicts), reasons=reasons, changes=tuple(changes), notes=tuple(notes))
