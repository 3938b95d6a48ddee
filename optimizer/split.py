"""The layer split of one layout: the smallest possible slowest decode stage, and one canonical split
that reaches it. Shared by the CP-SAT path (to report a canonical split) and the exhaustive oracle.

Search space (stated in every plan): the first ``first_k_dense_replace`` layers, the dense ones of a
DeepSeek-style MoE, all sit in the first stage, so every later stage holds MoE layers only.
"""

from __future__ import annotations

import heapq

from optimizer.cost import CostTable
from optimizer.memory import MemoryTable
from optimizer.parallel import even_split
from optimizer.scenario import Scenario

DENSE_FIRST_NOTE = "search space: the dense layers (first_k_dense_replace) all sit in the first pipeline stage"


def leading_dense_layers(scenario: Scenario) -> int:
    """Dense layers the first stage must hold (0 for a dense model: every layer is alike)."""
    return scenario.model.first_k_dense_replace if scenario.model.is_moe else 0


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
    if not scenario.search.allow_uneven_layers:
        if total % pp:
            return None
        split = even_split(num_layers=total, pp=pp)
        fits = all(split[s] >= lows[s] and classes[s][1](split[s]) for s in range(pp))
        return split if fits else None
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
