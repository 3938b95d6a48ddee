"""Every candidate's exact verdict and objective, vectorised over the grid: what the CP-SAT model links to
its choice, so that its relaxation sees each candidate's true cost and proves the optimum at the root.

For candidate ``c`` (a layout and a batch per replica, grid order) and a *variant* (memory cap enforced or
not; even layer split enforced or not), the smallest slowest decode stage over every layer split of that
variant (``min_slowest_ns``), and from it TTFT, TPOT, request latency and the primary objective, exactly as
``cost.estimate`` and ``result.primary_ns`` compute them for a concrete split. Every objective and every
service target is monotone in the slowest stage (TTFT and the sum of the stages do not depend on the
split; ``cost.estimate``), so that one number decides the candidate.

The minimum is found by bisection on the stage-time limit ``T`` for all candidates at once (numpy), with
the largest layer count each stage class holds within ``T`` and within memory in closed form:
``floor((T - extra) / per_layer_ns)`` and ``floor((cap - fixed) / per_layer_bytes)``; ``T`` is feasible
when every stage reaches its minimum and the stages together hold every layer. This is a different code
path from ``split.best_split`` (a scalar bisection over the achievable stage times, then water-filling),
which builds the reported plan; ``solve.optimize`` checks that the two agree on the chosen candidate, and
``certify.py`` re-checks the bound of every other candidate in scalar integers.

Under a balance target (``targets.max_compute_imbalance_pct``, ``max_memory_imbalance_pct``) the variant
also asks the split to be balanced, and the smallest slowest stage is taken over the balanced splits only
(``_balanced_one``, scalar per candidate and run only when a scenario sets such a target, so that the
default path keeps its speed); ``split.best_split`` finds the same value from per-stage functions, and
``certify.py`` re-derives rejections and witnesses by the smallest stage instead of the largest.

Time arrays hold int64 when every sum fits in 62 bits (``_ints`` scales the check by the layer count),
Python ints (numpy ``object``) otherwise; byte arithmetic is always in Python ints (a cap such as
TensorRT-LLM's ``u x memory_bytes`` need not fit int64); the metrics too. Never a wrapped integer, never
a float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from optimizer.model.memory import placed_bytes_line
from optimizer.search.result import Tables
from optimizer.search.rules import (SOLVER_INT_LIMIT, ComputeBalance, EvenLayers, LayerSplit, LayoutRule, MemoryBalance, MemoryCap, Rule,
                             SizeArrays, ThroughputTarget, TpotTarget, TtftTarget, target_bound_ns)
from optimizer.inputs.scenario import Objective, Scenario
from optimizer.search.split import leading_dense_layers

_SAFE = SOLVER_INT_LIMIT  # every integer the solver sees stays below 2^62
NONE = -1  # "no split of this variant exists" in a slowest-stage array


def _ints(values, scale: int = 1) -> np.ndarray:
    """``values`` as int64 if ``max |v| x scale`` stays below 2^62, else as Python ints (object)."""
    arr = np.asarray([int(v) for v in values], dtype=object)
    if arr.size == 0:
        return np.zeros(0, dtype=np.int64)
    if max(abs(int(arr.max())), abs(int(arr.min()))) * max(scale, 1) < _SAFE:
        return arr.astype(np.int64)
    return arr


def _floor_div(num: np.ndarray, den: np.ndarray, *, zero_value: int) -> np.ndarray:
    """``num // den`` elementwise (floor); where ``den == 0``: ``zero_value`` if ``num >= 0`` else -1."""
    safe = np.where(den == 0, 1, den)
    out = num // safe
    if np.any(den == 0):
        out = np.where(den == 0, np.where(num >= 0, zero_value, -1), out)
    return out


@dataclass(frozen=True)
class Variant:
    """Which split-shaping rules hold: ``memory`` (every stage within the memory limits), ``even`` (every
    stage the same layer count), ``compute_balance`` and ``memory_balance`` (the stages' decode times,
    or bytes, within the scenario's imbalance percentage)."""

    memory: bool
    even: bool
    compute_balance: bool = False
    memory_balance: bool = False

    @property
    def balanced(self) -> bool:
        return self.compute_balance or self.memory_balance

    @property
    def unbalanced(self) -> Variant:
        return Variant(memory=self.memory, even=self.even)


class CandidateValues:
    """Exact per-candidate numbers for one scenario and its tables (grid order). Lazy: each variant's
    slowest stages are computed on first use."""

    def __init__(self, scenario: Scenario, tables: Tables):
        self.scenario, self.tables = scenario, tables
        self.n = len(tables.layouts)
        self._slowest: dict[Variant, np.ndarray] = {}
        self._metrics: dict[Variant, tuple[list, list, list, list]] = {}
        self._layout_fail: dict[str, np.ndarray] = {}

    # --- the split -------------------------------------------------------------------------------------

    @cached_property
    def _arrays(self):
        t, s = self.tables, self.scenario
        dec = t.cost.decode
        total = s.model.num_hidden_layers
        scale = total + 8
        k = leading_dense_layers(s)
        pp = np.asarray([lay.pp for lay in t.layouts], dtype=np.int64)
        dd, dm = _ints(dec.dense_layer_ns, scale), _ints(dec.moe_layer_ns, scale)
        fe, le = _ints(dec.first_extra_ns, scale), _ints(dec.last_extra_ns, scale)
        return dict(total=total, k=k, pp=pp, dd=dd, dm=dm, fe=fe, le=le)

    @cached_property
    def _memory_caps(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Most layers the first, a middle and the last stage hold within every memory limit (clamped to
        ``[-1, total]``; -1: not even the stage's fixed charge fits), and whether PP = 1 fits at all."""
        s, total, k = self.scenario, self._arrays["total"], self._arrays["k"]
        n = self.n
        first = np.full(n, total, dtype=object)
        middle = np.full(n, total, dtype=object)
        last = np.full(n, total, dtype=object)
        only = np.ones(n, dtype=bool)
        py = lambda values: np.asarray([int(v) for v in values], dtype=object)  # noqa: E731  Python ints: caps need not fit int64
        for t, cap in self.tables.memory.with_caps(s):
            dl, ml = py(t.dense_layer), py(t.moe_layer)
            if any(v < 0 for v in ml) or any(v < 0 for v in dl):
                raise ValueError("internal error: a negative per-layer memory charge")
            whole = k * dl + (total - k) * ml + py(t.fixed_only)
            only &= np.asarray(whole <= cap, dtype=bool)
            for arr, fixed, dense in ((first, t.fixed_first, k), (middle, t.fixed_middle, 0), (last, t.fixed_last, 0)):
                room = cap - py(fixed) - dense * dl + dense * ml  # l x ml <= room (l counts the dense ones)
                most = _floor_div(room, ml, zero_value=total)
                np.minimum(arr, np.minimum(most, total), out=arr, casting="unsafe")
        return tuple(np.maximum(a, -1).astype(np.int64) for a in (first, middle, last)) + (only,)

    def min_slowest_ns(self, variant: Variant) -> np.ndarray:
        """The smallest slowest decode stage (ns) over the variant's splits, per candidate; ``NONE`` (-1)
        where the variant has no split (too few layers for PP, uneven layers when ``even``, or, with
        ``memory``, no split within the memory limits)."""
        if variant not in self._slowest:
            self._slowest[variant] = self._compute_slowest(variant)
        return self._slowest[variant]

    def _compute_slowest(self, variant: Variant) -> np.ndarray:
        if variant.balanced:
            return self._balanced_slowest(variant)
        a = self._arrays
        total, k, pp, dd, dm, fe, le = (a[key] for key in ("total", "k", "pp", "dd", "dm", "fe", "le"))
        n = self.n
        low_first = max(1, k)
        if variant.memory:
            m_first, m_mid, m_last, only_fits = self._memory_caps
        else:
            m_first = m_mid = m_last = np.full(n, total, dtype=np.int64)
            only_fits = np.ones(n, dtype=bool)
        single = k * dd + (total - k) * dm + fe + le  # PP = 1: the one stage
        out = np.full(n, NONE, dtype=object)
        is_one = pp == 1
        out[is_one & only_fits] = single[is_one & only_fits]
        multi = ~is_one & self.exists(Variant(memory=False, even=variant.even))
        if variant.even:
            share = total // pp
            even_ok = multi & (m_first >= share) & (m_last >= share) & ((pp < 3) | (m_mid >= share))
            t_first = k * dd + (share - k) * dm + fe
            t_last = share * dm + le
            t_mid = np.where(pp >= 3, share * dm, 0)
            slow = np.maximum(np.maximum(t_first, t_last), t_mid)
            out[even_ok] = slow[even_ok]
            return self._as_ints(out)
        idx = np.nonzero(multi)[0]
        if idx.size:
            out[idx] = self._bisect(idx, total, k, low_first, pp[idx], dd[idx], dm[idx], fe[idx], le[idx],
                                    m_first[idx], m_mid[idx], m_last[idx])
        return self._as_ints(out)

    @staticmethod
    def _as_ints(out: np.ndarray) -> np.ndarray:
        """int64 when every value fits, else the Python ints as they are."""
        if out.size and max(abs(int(v)) for v in out) < _SAFE:
            return out.astype(np.int64)
        return out

    @staticmethod
    def _bisect(idx, total, k, low_first, pp, dd, dm, fe, le, m_first, m_mid, m_last) -> np.ndarray:
        """Smallest integer T at which a split exists, per candidate (``NONE`` if none at any T)."""
        base_first = k * dd - k * dm + fe  # first stage with l layers: base_first + l x dm (l >= k)
        mid_n = np.maximum(pp - 2, 0)
        flat = dm == 0  # a layer that takes no time: a stage holds every layer once its fixed part fits
        per = np.where(flat, 1, dm)
        cap_first, cap_mid, cap_last = (np.minimum(m, total) for m in (m_first, m_mid, m_last))
        three = pp >= 3

        def by_time(room):
            return np.where(flat, np.where(room >= 0, total, -1), room // per)

        def caps(limit):
            c_first = np.minimum(by_time(limit - base_first), cap_first)
            c_mid = np.minimum(by_time(limit), cap_mid)
            c_last = np.minimum(by_time(limit - le), cap_last)
            ok = (c_first >= low_first) & (c_last >= 1) & (~three | (c_mid >= 1))
            return ok & (c_first + mid_n * c_mid + c_last >= total)

        hi = np.maximum(np.maximum(base_first + total * dm, total * dm + le), 0)  # every stage may take every layer
        feasible = caps(hi)
        # Below the average stage (and the first stage at its fewest layers) nothing fits: start there.
        whole = base_first + total * dm + le
        lo = np.maximum(-(-whole // pp), base_first + low_first * dm) - 1
        lo = np.minimum(np.maximum(lo, -1), hi - 1)
        active = feasible & (hi - lo > 1)
        while active.any():
            mid = lo + (hi - lo) // 2
            ok = caps(mid)
            hi = np.where(active & ok, mid, hi)
            lo = np.where(active & ~ok, mid, lo)
            active = feasible & (hi - lo > 1)
        return np.where(feasible, hi, NONE)

    # --- the split under a balance target (scalar: only when a scenario sets one) --------------------------

    def _balanced_slowest(self, variant: Variant) -> np.ndarray:
        """``min_slowest_ns`` among the balanced splits: per candidate that has a split at all, the
        smallest slowest stage over the splits whose stages are within the balance percentages."""
        base = self.min_slowest_ns(variant.unbalanced)
        out = np.full(self.n, NONE, dtype=object)
        for c in np.nonzero(np.asarray(base != NONE, dtype=bool))[0]:
            if self.tables.layouts[c].pp == 1:  # one stage is balanced
                out[c] = base[c]
                continue
            found = self._balanced_one(int(c), variant)
            out[c] = NONE if found is None else found
        return self._as_ints(out)

    def _stage_lines(self, c: int, variant: Variant):
        """Per stage class (first, middle, last): (how many stages, fewest layers, most layers, decode ns
        as ``const + layers x per``, placed bytes likewise or None when memory balance is off)."""
        a, t = self._arrays, self.tables
        total, k, pp = a["total"], a["k"], int(a["pp"][c])
        dd, dm, fe, le = (int(a[key][c]) for key in ("dd", "dm", "fe", "le"))
        if variant.memory:
            caps = [int(arr[c]) for arr in self._memory_caps[:3]]
        else:
            caps = [total] * 3
        times = ((k * (dd - dm) + fe, dm), (0, dm), (le, dm))
        if variant.memory_balance:
            b = placed_bytes_line(scenario=self.scenario, layout=t.layouts[c], batch=t.cost.batch[c])
            bytes_ = ((k * (b.dense_layer - b.moe_layer) + b.fixed_first, b.moe_layer), (b.fixed_middle, b.moe_layer),
                      (b.fixed_last, b.moe_layer))
        else:
            bytes_ = (None, None, None)
        counts = (1, pp - 2, 1)
        lows = (max(1, k), 1, 1)
        return [(counts[i], lows[i], min(caps[i], total), times[i], bytes_[i]) for i in range(3) if counts[i] > 0]

    def _balanced_one(self, c: int, variant: Variant) -> int | None:
        """The smallest slowest stage of candidate ``c`` over its balanced splits, None if none.

        By the largest stage: a split is balanced with its slowest stage at most ``T`` iff every stage
        lies in ``[ceil((100 - pct) x T / 100), T]`` (the lower end grows with ``T``), which bounds each
        stage's layer count to an interval; a split exists iff each interval is non-empty and the
        intervals' ends bracket the model's layers. That is not monotone in ``T``, so ``T`` runs over the
        stage times that occur, smallest first. Memory balance adds the same test on bytes, with the
        largest stage's bytes ``U`` running over the values that occur within the time intervals."""
        s, total = self.scenario, self._arrays["total"]
        classes = self._stage_lines(c, variant)
        compute_pct = s.targets.max_compute_imbalance_pct if variant.compute_balance else None
        memory_pct = s.targets.max_memory_imbalance_pct if variant.memory_balance else None
        if variant.even:
            share = total // int(self._arrays["pp"][c])
            if any(not low <= share <= high for _, low, high, _, _ in classes):
                return None
            times = [const + share * per for _, _, _, (const, per), _ in classes]
            ok = _balanced_values(times, compute_pct)
            if ok and memory_pct is not None:
                ok = _balanced_values([const + share * per for _, _, _, _, (const, per) in classes], memory_pct)
            return max(times) if ok else None
        limits = sorted({const + n * per for _, low, high, (const, per), _ in classes for n in range(low, high + 1)})
        for limit in limits:
            floor_ns = _lower_end(limit, compute_pct)
            ranges = [_layers_within(const, per, floor_ns, limit, low, high) for _, low, high, (const, per), _ in classes]
            if not _brackets(ranges, classes, total):
                continue
            if memory_pct is None or self._bytes_balance_fits(classes, ranges, memory_pct, total):
                return limit
        return None

    @staticmethod
    def _bytes_balance_fits(classes, ranges, pct, total) -> bool:
        """Within the layer ranges ``ranges`` (per class), does some split keep the bytes balanced?"""
        least = max(const + lo * per for (_, _, _, _, (const, per)), (lo, _) in zip(classes, ranges))
        tops = sorted({const + n * per for (_, _, _, _, (const, per)), (lo, hi) in zip(classes, ranges)
                       for n in range(lo, hi + 1)})
        for top in tops:
            if top < least:
                continue
            floor_b = _lower_end(top, pct)
            inner = [_layers_within(const, per, floor_b, top, lo, hi) for (_, _, _, _, (const, per)), (lo, hi) in zip(classes, ranges)]
            if _brackets(inner, classes, total):
                return True
        return False

    # --- the estimate and the objective ------------------------------------------------------------------

    def metrics(self, variant: Variant) -> tuple[list, list, list, list]:
        """``(ttft_ns, tpot_ns, request_latency_ns, primary)`` per candidate as Python ints (None where the
        variant has no split), with ``cost.estimate``'s formulas at the smallest slowest stage. Computed on
        arrays of Python ints (numpy ``object``): exact whatever the magnitudes."""
        if variant in self._metrics:
            return self._metrics[variant]
        s, cost = self.scenario, self.tables.cost
        slow = np.asarray(self.min_slowest_ns(variant), dtype=object)
        missing = slow == NONE
        steps = max(s.workload.output_tokens - 1, 0)
        pp = np.asarray([lay.pp for lay in self.tables.layouts], dtype=object)

        def total(phase) -> np.ndarray:  # cost.CostTable.phase_total_ns for every candidate
            col = lambda a: np.asarray(a, dtype=np.int64).astype(object)  # noqa: E731
            return (cost.num_dense_layers * col(phase.dense_layer_ns) + cost.num_moe_layers * col(phase.moe_layer_ns)
                    + col(phase.first_extra_ns) + col(phase.last_extra_ns) + (pp - 1) * col(phase.boundary_ns)
                    + pp * col(phase.stage_extra_ns))

        # TTFT (cost.CostTable.ttft_ns): chunks x (chunk step + rides x decode step + waits x prefill share),
        # the riding decode step without its stages' step overheads (the chunk's step already pays them)
        obj = lambda a: np.asarray(a, dtype=object)  # noqa: E731
        share = obj(cost.prefill_share_ns)
        ride = cost.ride_phase
        ride_total = total(ride) - pp * np.asarray(ride.stage_extra_ns, dtype=np.int64).astype(object)
        ttft = obj(cost.ttft_chunks) * (total(cost.chunk) + obj(cost.ttft_rides_decode) * ride_total
                                         + obj(cost.ttft_waits) * share)
        micro = np.asarray(cost.microbatches, dtype=object)
        dec = cost.decode  # cost.CostTable.decode_cycle_ns: each micro-batch pays every stage's fixed cost
        fixed = np.asarray([dec.stage_fixed_ns(c, lay.pp) for c, lay in enumerate(self.tables.layouts)], dtype=object)
        tpot = np.maximum(micro * (np.where(missing, 0, slow) + fixed), total(cost.decode)) + share
        latency = ttft + steps * tpot
        objective = s.search.objective
        if objective is Objective.TTFT:
            primary = ttft
        elif objective is Objective.TPOT:
            primary = tpot
        elif objective is Objective.THROUGHPUT_PER_GPU:
            gpus = np.asarray([lay.gpus for lay in self.tables.layouts], dtype=object)
            sequences = np.asarray([lay.dp * b for lay, b in zip(self.tables.layouts, cost.batch)], dtype=object)
            primary = -((-latency * gpus) // sequences)  # result.primary_ns: ceil(latency x GPUs / sequences)
        else:
            primary = latency
        out = tuple([None if gone else int(v) for v, gone in zip(arr, missing)] for arr in (ttft, tpot, latency, primary))
        self._metrics[variant] = out
        return out

    # --- rules -------------------------------------------------------------------------------------------

    @cached_property
    def sizes(self) -> SizeArrays:
        return SizeArrays.of(self.tables.layouts)

    def layout_fails(self, rule: LayoutRule) -> np.ndarray:
        """Per candidate: does ``rule`` reject its layout (``rule.holds_grid``)?"""
        if rule.name not in self._layout_fail:
            self._layout_fail[rule.name] = ~np.asarray(rule.holds_grid(self.scenario, self.sizes), dtype=bool)
        return self._layout_fail[rule.name]

    def rejects(self, rule: Rule, variant: Variant) -> np.ndarray:
        """Per candidate: does ``rule`` reject every plan of this variant? (The variant's own split rules,
        memory and even layers, are the variant; ``exists`` says whether it has a split at all.)"""
        if isinstance(rule, LayoutRule):
            return self.layout_fails(rule)
        if isinstance(rule, MemoryCap):
            return np.full(self.n, not variant.memory)
        if isinstance(rule, EvenLayers):
            return np.full(self.n, not variant.even)
        if isinstance(rule, ComputeBalance):
            return np.full(self.n, not variant.compute_balance)
        if isinstance(rule, MemoryBalance):
            return np.full(self.n, not variant.memory_balance)
        if isinstance(rule, LayerSplit):
            return np.zeros(self.n, dtype=bool)  # every variant's split covers the model (``exists``)
        ttft, tpot, lat, _ = self.metrics(variant)
        if isinstance(rule, TtftTarget):
            bound = target_bound_ns(self.scenario.targets.ttft_s)
            return np.asarray([v is not None and v > bound for v in ttft], dtype=bool)
        if isinstance(rule, TpotTarget):
            bound = target_bound_ns(self.scenario.targets.tpot_s)
            return np.asarray([v is not None and v > bound for v in tpot], dtype=bool)
        if isinstance(rule, ThroughputTarget):
            chooses = self.scenario.search.objective.chooses_batch
            out = np.zeros(self.n, dtype=bool)
            fixed = None if chooses else ThroughputTarget.bound_ns(self.scenario)
            for c, v in enumerate(lat):
                if v is None:
                    continue
                layout = self.tables.layouts[c]
                bound = fixed if fixed is not None else ThroughputTarget.bound_ns(self.scenario, layout.dp * self.tables.cost.batch[c])
                out[c] = v > bound
            return out
        raise TypeError(f"internal error: no candidate verdict for rule {rule.name}")

    def split_shape_fails(self, even: bool) -> dict[str, np.ndarray]:
        """Per candidate, what its PP alone rules out, before any time or memory: ``layer_split`` (more
        stages than layers), ``even_layers`` (with ``even``: the layers do not divide by PP) and
        ``dense_first_stage`` (the search space: the first stage holds every dense layer and each later
        stage at least one; with ``even``, the even share must hold them). Certificate order."""
        pp, total, k = self._arrays["pp"], self._arrays["total"], self._arrays["k"]
        low_first = max(1, k)
        multi = pp > 1
        out = {"layer_split": pp > total}
        if even:
            out["even_layers"] = total % pp != 0
        dense_first = multi & (pp - 1 + low_first > total)
        if even:
            dense_first |= multi & (total // pp < low_first)
        out["dense_first_stage"] = dense_first
        return out

    def exists(self, variant: Variant) -> np.ndarray:
        """Per candidate: does the variant have a split (``min_slowest_ns`` is not ``NONE``)? Without the
        memory cap that is the layer counts alone (``split_shape_fails``), with no search."""
        if variant.memory or variant.balanced or variant in self._slowest:
            return np.asarray(self.min_slowest_ns(variant) != NONE, dtype=bool)
        fails = np.zeros(self.n, dtype=bool)
        for mask in self.split_shape_fails(variant.even).values():
            fails |= mask
        return ~fails

    def admissible(self, rules: tuple[Rule, ...]) -> tuple[Variant, np.ndarray]:
        """The variant ``rules`` ask for and, per candidate, whether some plan of it satisfies every rule."""
        variant = variant_for(rules)
        ok = self.exists(variant)
        for rule in rules:
            ok &= ~self.rejects(rule, variant)
        return variant, ok


def variant_for(rules: tuple[Rule, ...]) -> Variant:
    """The variant in which every split-shaping rule of ``rules`` holds."""
    return Variant(memory=any(isinstance(r, MemoryCap) for r in rules), even=any(isinstance(r, EvenLayers) for r in rules),
                   compute_balance=any(isinstance(r, ComputeBalance) for r in rules),
                   memory_balance=any(isinstance(r, MemoryBalance) for r in rules))


def _lower_end(top: int, pct) -> int | None:
    """The least stage value a split whose largest stage is ``top`` may hold: ``ceil((100 - pct) x top / 100)``
    (exact, ``pct`` a Fraction); None when there is no balance rule."""
    if pct is None:
        return None
    return math.ceil((100 - pct) * top / 100)


def _layers_within(const: int, per: int, least: int | None, most: int, low: int, high: int) -> tuple[int, int]:
    """The layer counts ``n`` in ``[low, high]`` with ``least <= const + n x per <= most`` (``least`` None:
    no lower end), as ``(first, last)``; empty when ``first > last``."""
    if per == 0:
        inside = const <= most and (least is None or const >= least)
        return (low, high) if inside else (1, 0)
    first = low if least is None else max(low, -((const - least) // per))
    return first, min(high, (most - const) // per)


def _brackets(ranges, classes, total: int) -> bool:
    """Every class's range non-empty, and the stages' least and most layers bracket the model's."""
    if any(lo > hi for lo, hi in ranges):
        return False
    least = sum(count * lo for (count, *_), (lo, _) in zip(classes, ranges))
    most = sum(count * hi for (count, *_), (_, hi) in zip(classes, ranges))
    return least <= total <= most


def _balanced_values(values: list[int], pct) -> bool:
    """``100 x (max - min) <= pct x max`` (no rule when ``pct`` is None)."""
    return pct is None or 100 * (max(values) - min(values)) <= pct * max(values)
