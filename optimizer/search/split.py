"""The layer split of one layout: the smallest possible slowest decode stage, and one canonical split
that reaches it. Shared by the CP-SAT path (to report a canonical split) and the exhaustive oracle.

Under a balance target (``targets.max_compute_imbalance_pct``, ``max_memory_imbalance_pct``) the split is
the fastest among the balanced ones (``_balanced_split``), None when no split is balanced.

Search space (stated in every plan): the first ``first_k_dense_replace`` layers, the dense ones of a
DeepSeek-style MoE, all sit in the first stage, so every later stage holds MoE layers only. A model whose
dense and MoE layers interleave (Llama 4 Maverick, ``interleave_moe_layer_step``) counts its dense layers
here as a prefix too, which is exact only with PP = 1; ``rules.InterleavedOneStage`` keeps it there.
"""

from __future__ import annotations

import heapq
import math

from optimizer.model.cost import CostTable
from optimizer.model.memory import MemoryTable, placed_bytes_line
from optimizer.model.parallel import even_split
from optimizer.inputs.scenario import Scenario

DENSE_FIRST_NOTE = "search space: the dense layers (first_k_dense_replace) all sit in the first pipeline stage"


def leading_dense_layers(scenario: Scenario) -> int:
    """Dense layers the first stage must hold (0 for a dense model: every layer is alike)."""
    return scenario.model.num_dense_layers if scenario.model.is_moe else 0


def _stage_models(scenario: Scenario, table: CostTable, memory: MemoryTable, c: int):
    """(time(l), fits(l), min layers) for the first, middle and last stage classes of layout ``c``;
    ``fits(l)``: ``l`` layers keep the stage within every memory limit."""
    k = leading_dense_layers(scenario)
    dec = table.decode
    dd, dm = int(dec.dense_layer_ns[c]), int(dec.moe_layer_ns[c])
    limits = memory.with_caps(scenario)

    def fits(fixed: str, dense: int):
        return lambda l: all(dense * t.dense_layer[c] + (l - dense) * t.moe_layer[c] + getattr(t, fixed)[c] <= cap
                             for t, cap in limits)

    first = (lambda l: k * dd + (l - k) * dm + int(dec.first_extra_ns[c]), fits("fixed_first", k), max(1, k))
    middle = (lambda l: l * dm, fits("fixed_middle", 0), 1)
    last = (lambda l: l * dm + int(dec.last_extra_ns[c]), fits("fixed_last", 0), 1)
    return first, middle, last


def _max_layers(stage, limit_ns: int, total: int) -> int:
    """Most layers (<= total) a stage class can hold within ``limit_ns`` and memory; 0 if below its minimum."""
    time_of, fits, low = stage
    best = 0
    lo, hi = low, total
    while lo <= hi:  # both time and bytes grow with the layer count
        mid = (lo + hi) // 2
        if time_of(mid) <= limit_ns and fits(mid):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def best_split(*, scenario: Scenario, table: CostTable, memory: MemoryTable, c: int) -> tuple[int, ...] | None:
    """The canonical split of layout ``c`` with the smallest slowest decode stage, every stage within the
    memory cap; None if no split fits. Ties between stages go to the later stage (the first stage also
    carries the embedding)."""
    total, pp = scenario.model.num_hidden_layers, table.layouts[c].pp
    k = leading_dense_layers(scenario)
    if pp == 1:
        fits = all(k * t.dense_layer[c] + (total - k) * t.moe_layer[c] + t.fixed_only[c] <= cap
                   for t, cap in memory.with_caps(scenario))
        return (total,) if fits else None
    first, middle, last = _stage_models(scenario, table, memory, c)
    classes = [first] + [middle] * (pp - 2) + [last]
    lows = [cls[2] for cls in classes]
    if sum(lows) > total:
        return None
    compute_pct, memory_pct = scenario.targets.max_compute_imbalance_pct, scenario.targets.max_memory_imbalance_pct
    placed = _placed_bytes(scenario, table, c) if memory_pct is not None else None
    if not scenario.search.allow_uneven_layers:
        if total % pp:
            return None
        split = even_split(num_layers=total, pp=pp)
        fits = all(split[s] >= lows[s] and classes[s][1](split[s]) for s in range(pp))
        if fits and not _is_balanced(split, classes, placed, compute_pct, memory_pct):
            return None
        return split if fits else None
    if compute_pct is not None or memory_pct is not None:
        return _balanced_split(classes, placed, total, compute_pct, memory_pct)
    limits = sorted({cls[0](l) for cls in (first, middle, last) for l in range(1, total + 1)})

    def caps_at(limit_ns: int) -> list[int] | None:
        caps = [_max_layers(cls, limit_ns, total) for cls in (first, middle, last)]
        per_stage = [caps[0]] + [caps[1]] * (pp - 2) + [caps[2]]
        ok = all(u >= low for u, low in zip(per_stage, lows)) and sum(per_stage) >= total
        return per_stage if ok else None

    lo, hi, found = 0, len(limits) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        caps = caps_at(limits[mid])
        if caps is None:
            lo = mid + 1
        else:
            found, hi = caps, mid - 1
    if found is None:
        return None
    split = list(lows)
    heap = [(classes[s][0](split[s] + 1), -s) for s in range(pp) if split[s] < found[s]]
    heapq.heapify(heap)
    for _ in range(total - sum(lows)):  # water-filling: next layer to the stage that stays fastest
        _, neg = heapq.heappop(heap)
        s = -neg
        split[s] += 1
        if split[s] < found[s]:
            heapq.heappush(heap, (classes[s][0](split[s] + 1), -s))
    return tuple(split)


# --- under a balance target (targets.max_compute_imbalance_pct, max_memory_imbalance_pct) ---------------------


def _placed_bytes(scenario: Scenario, table: CostTable, c: int):
    """Per stage class (first, middle, last): ``placed_bytes(l)`` of a stage with ``l`` layers, the bytes
    the memory balance compares (``memory.StageMemory.placed_bytes``)."""
    k = leading_dense_layers(scenario)
    b = placed_bytes_line(scenario=scenario, layout=table.layouts[c], batch=table.batch[c])
    return (lambda l: k * b.dense_layer + (l - k) * b.moe_layer + b.fixed_first,
            lambda l: l * b.moe_layer + b.fixed_middle,
            lambda l: l * b.moe_layer + b.fixed_last)


def _per_stage(placed, pp: int):
    return [placed[0]] + [placed[1]] * (pp - 2) + [placed[2]]


def _within(pct, values: list[int]) -> bool:
    return pct is None or 100 * (max(values) - min(values)) <= pct * max(values)


def _is_balanced(split, classes, placed, compute_pct, memory_pct) -> bool:
    times = [cls[0](n) for cls, n in zip(classes, split)]
    ok = _within(compute_pct, times)
    if ok and memory_pct is not None:
        ok = _within(memory_pct, [f(n) for f, n in zip(_per_stage(placed, len(split)), split)])
    return ok


def _span(f, low: int, high: int, least, most: int) -> tuple[int, int]:
    """The ``n`` in ``[low, high]`` with ``least <= f(n) <= most`` for a non-decreasing ``f``, by bisection
    (``least`` None: no lower end); empty when first > last."""
    lo, hi = low, high + 1  # first n with f(n) >= least
    if least is not None:
        while lo < hi:
            mid = (lo + hi) // 2
            if f(mid) >= least:
                hi = mid
            else:
                lo = mid + 1
    first = lo
    lo, hi = low - 1, high  # last n with f(n) <= most
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if f(mid) <= most:
            lo = mid
        else:
            hi = mid - 1
    return first, lo


def _bracket(spans, total: int) -> bool:
    return all(a <= b for a, b in spans) and sum(a for a, _ in spans) <= total <= sum(b for _, b in spans)


def _least(top: int, pct):
    return None if pct is None else math.ceil((100 - pct) * top / 100)


def _balanced_split(classes, placed, total: int, compute_pct, memory_pct) -> tuple[int, ...] | None:
    """The canonical balanced split with the smallest slowest decode stage (every stage within memory), or
    None. Stage by stage: a split with its slowest stage ``T`` is balanced iff every stage's time lies in
    ``[ceil((100 - pct) x T / 100), T]``; ``T`` runs over the stage times that occur, smallest first (the
    test is not monotone in ``T``), the bytes likewise inside; the first ``T`` that admits a split is the
    optimum, and water-filling inside the layer spans found gives the split."""
    pp = len(classes)
    most = [_max_layers(cls, 1 << 200, total) for cls in classes]  # by memory alone
    lows = [cls[2] for cls in classes]
    if any(m < low for m, low in zip(most, lows)):
        return None
    bytes_of = _per_stage(placed, pp) if memory_pct is not None else None
    limits = sorted({cls[0](n) for cls, low, m in zip(classes, lows, most) for n in range(low, m + 1)})
    for limit in limits:
        least = _least(limit, compute_pct)
        spans = [_span(cls[0], low, m, least, limit) for cls, low, m in zip(classes, lows, most)]
        if not _bracket(spans, total):
            continue
        if bytes_of is None:
            return _fill(classes, spans, total)
        for top in sorted({f(n) for f, (a, b) in zip(bytes_of, spans) for n in range(a, b + 1)}):
            inner = [_span(f, a, b, _least(top, memory_pct), top) for f, (a, b) in zip(bytes_of, spans)]
            if _bracket(inner, total):
                return _fill(classes, inner, total)
    return None


def _fill(classes, spans, total: int) -> tuple[int, ...]:
    """Water-filling inside ``spans``: each stage from its least layers, the next layer to the stage that
    stays fastest (ties to the later stage), none beyond its span."""
    split = [a for a, _ in spans]
    heap = [(classes[s][0](split[s] + 1), -s) for s in range(len(split)) if split[s] < spans[s][1]]
    heapq.heapify(heap)
    for _ in range(total - sum(split)):
        _, neg = heapq.heappop(heap)
        s = -neg
        split[s] += 1
        if split[s] < spans[s][1]:
            heapq.heappush(heap, (classes[s][0](split[s] + 1), -s))
    return tuple(split)
