"""The optimality certificate: a claim that a plan is optimal, written so that anyone can re-check it
without CP-SAT, in exact integers. Never imports ortools, and never the search's own per-candidate
arithmetic (``candidates.py``) nor its split search (``split.py``).

A certificate covers every candidate of the scenario's space (``result.build_tables``: every layout of the
grid, with its batch per replica), in grid order, each with one *code*:

- a layout rule's name (``attention_heads_divisible``, ``engine_folding``, ...): that rule's scalar test
  (``holds``, kept equal to the ``evaluate`` the plan's certificate prints) rejects the layout; the search
  uses the rule's vectorised ``holds_grid`` instead;
- ``layer_split``: more pipeline stages than layers (``LayerSplit``);
- ``even_layers``: the layers do not split evenly (only when ``search.allow_uneven_layers`` is false);
- ``dense_first_stage``: outside the search space: the first stage cannot hold every dense layer
  (``first_k_dense_replace``) with one layer left for each later stage;
- ``memory_cap``: no split keeps every stage within the memory limits, shown by the most layers each stage
  class can hold by memory alone, ``floor((cap - fixed) / per_layer)``, which sum to fewer than the model's;
- ``compute_balance``, ``memory_balance`` (where the scenario sets ``targets.max_compute_imbalance_pct``,
  ``max_memory_imbalance_pct``): no split within memory is balanced (``memory_balance``: in bytes, and in
  decode time too when that target is set), re-derived by the smallest stage (``_Space.balanced_split_fits``)
  where the search goes by the largest;
- ``ttft_target``, ``tpot_target``, ``throughput_target``: a lower bound of that figure over every split
  already misses the target;
- ``bound``: a lower bound of the objective over every split is above the claimed optimum;
- ``optimum``: the plan itself, whose own certificate (``verify.certify``) must hold and whose objective
  must equal the claim;
- ``excluded``: a layout the question set aside (``excluded`` lists them: "the best plan on any other
  layout", as the review's runner-up asks); the claim is then optimality among the rest.

Lower bounds come from the slowest decode stage, which every figure grows with (``cost.estimate``): for
PP = 1 or an even split it is exact; otherwise it is ``max(ceil(all stages / PP), the first stage at its
fewest layers, the last stage at one layer)``, or a *witness* ``T`` the certificate names, checked by
showing that no split fits with every stage under ``T - 1`` ns: the most layers each stage holds within
``T - 1`` ns and within memory, in closed form, sum to fewer than the model's layers. Under a balance
target the plans to cover are the balanced ones, whose best is no better than the best of all splits, so
every split-free bound above stays a valid lower bound; a witness is then checked against the balanced
splits (none fits under ``T - 1`` ns), since the search's witness is the balanced optimum.

Compressed as runs of equal codes in candidate order, plus the witnesses by candidate index, it stays
small: a few hundred runs for 171,500 candidates.

**What it proves** is optimality within the search space, which the certificate states in ``scope`` and
the checker re-derives from the scenario (a mismatch fails): with two or more leading dense layers, every
dense layer sits in the first pipeline stage (``split.DENSE_FIRST_NOTE``; the rules alone would also let
them spill into the second stage); when the objective chooses the batch, the batch per replica comes
from ``parallel.batch_ladder`` (powers of two and ``max_num_seqs``), not every integer up to it. A
certificate that sets layouts aside (``excluded``, the runner-up question) proves the plan best among
the rest only, and checks only when the caller sets aside the same layouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from optimizer.model.memory import placed_bytes_line
from optimizer.model.parallel import Layout, Plan, batch_ladder, tie_break_key
from optimizer.search.result import Tables, build_tables, candidate_grid, primary_ns
from optimizer.search.rules import LayoutRule, ThroughputTarget, build_rules, target_bound_ns
from optimizer.inputs.scenario import Scenario
from optimizer.search.split import DENSE_FIRST_NOTE, leading_dense_layers

FORMAT = "optimality-certificate/1"
TARGET_CODES = ("ttft_target", "tpot_target", "throughput_target")
BALANCE_CODES = ("compute_balance", "memory_balance")


@dataclass(frozen=True)
class OptimalityCheck:
    """The result of re-checking a certificate: ``holds`` iff every candidate's code was confirmed;
    ``failures`` names the first few that were not, with their numbers."""

    holds: bool
    candidates: int
    failures: tuple[str, ...]
    codes: dict[str, int]  # how many candidates each code covers
    scope: tuple[str, ...] = ()  # the search space the claim is about, beyond the rules
    excluded: int = 0  # layouts the question set aside

    def summary(self) -> str:
        if self.holds:
            parts = ", ".join(f"{count} {code}" for code, count in sorted(self.codes.items(), key=lambda kv: -kv[1]))
            within = ("; within the search space: " + "; ".join(t.removeprefix("search space: ") for t in self.scope)
                      if self.scope else "")
            among = f"; best among the layouts other than the {self.excluded} set aside" if self.excluded else ""
            return f"checked without CP-SAT: all {self.candidates} candidates ({parts}){within}{among}"
        return f"FAILED ({len(self.failures)} problem(s)): " + "; ".join(self.failures[:3])


class _Space:
    """Scalar integer facts about one candidate, read from its row ``c`` of the tables (the definitions of
    cost and memory); ``grid`` is every candidate's layout in grid order."""

    def __init__(self, scenario: Scenario, tables: Tables):
        self.scenario, self.tables = scenario, tables
        self.grid, self.batches = candidate_grid(scenario)
        self.row_of = {tables.rank(r): r for r in range(len(tables.layouts))}
        self.total = scenario.model.num_hidden_layers
        self.k = leading_dense_layers(scenario)
        self.low_first = max(1, self.k)
        self.even = not scenario.search.allow_uneven_layers
        self.limits = tables.memory.with_caps(scenario)
        self.compute_pct = scenario.targets.max_compute_imbalance_pct
        self.memory_pct = scenario.targets.max_memory_imbalance_pct

    def times(self, c: int) -> tuple[int, int, int, int]:
        dec = self.tables.cost.decode
        return int(dec.dense_layer_ns[c]), int(dec.moe_layer_ns[c]), int(dec.first_extra_ns[c]), int(dec.last_extra_ns[c])

    def too_many_stages(self, pp: int) -> bool:
        return pp > self.total

    def uneven(self, pp: int) -> bool:
        return self.even and self.total % pp != 0

    def dense_first_impossible(self, pp: int) -> bool:
        """No split of the search space: the first stage cannot hold every dense layer and leave a layer
        for each later stage (or, with an even split, the even share is below the dense layers)."""
        return pp > 1 and (self.low_first + (pp - 1) > self.total or (self.even and self.total // pp < self.low_first))

    def no_split(self, pp: int) -> bool:
        return self.too_many_stages(pp) or self.uneven(pp) or self.dense_first_impossible(pp)

    def _stage_bytes(self, c: int, layers: int, where: str) -> list[tuple[int, int]]:
        """(charge, cap) per memory limit for a stage of ``layers`` layers (``where``: first/middle/last/only)."""
        dense = self.k if where in ("first", "only") else 0
        out = []
        for t, cap in self.limits:
            fixed = {"first": t.fixed_first, "middle": t.fixed_middle, "last": t.fixed_last, "only": t.fixed_only}[where][c]
            out.append((dense * t.dense_layer[c] + (layers - dense) * t.moe_layer[c] + fixed, cap))
        return out

    def most_layers_by_memory(self, c: int, where: str) -> int:
        """The most layers (<= total; -1 if none) a stage holds within every memory limit."""
        dense = self.k if where == "first" else 0
        most = self.total
        for t, cap in self.limits:
            fixed = {"first": t.fixed_first, "middle": t.fixed_middle, "last": t.fixed_last}[where][c]
            room = cap - fixed - dense * t.dense_layer[c] + dense * t.moe_layer[c]
            per = t.moe_layer[c]
            most = min(most, (room // per) if per > 0 else (self.total if room >= 0 else -1))
        return max(most, -1)

    def split_fits_memory(self, c: int, caps: tuple[int, int, int] | None = None) -> bool:
        """Can some split (of the scenario's kind) keep every stage within memory, and, with ``caps``
        (most layers per first / middle / last stage by time), within those too?"""
        pp = self.tables.layouts[c].pp
        if pp == 1:
            return all(charge <= cap for charge, cap in self._stage_bytes(c, self.total, "only"))
        first, middle, last = (self.most_layers_by_memory(c, w) for w in ("first", "middle", "last"))
        if caps is not None:
            first, middle, last = min(first, caps[0]), min(middle, caps[1]), min(last, caps[2])
        if self.even:
            share = self.total // pp
            return first >= share and last >= share and (pp < 3 or middle >= share)
        if first < self.low_first or last < 1 or (pp >= 3 and middle < 1):
            return False
        return first + (pp - 2) * middle + last >= self.total

    def exact_slowest(self, c: int) -> int | None:
        """The slowest stage where the split is fixed: PP = 1, or an even split."""
        pp = self.tables.layouts[c].pp
        dd, dm, fe, le = self.times(c)
        if pp == 1:
            return self.k * dd + (self.total - self.k) * dm + fe + le
        if self.even:
            share = self.total // pp
            return max(self.k * dd + (share - self.k) * dm + fe, share * dm + le, share * dm if pp >= 3 else 0)
        return None

    def trivial_slowest(self, c: int) -> int:
        """A lower bound of the slowest stage over every split: the average stage, the first stage at its
        fewest layers, the last stage at one layer."""
        pp = self.tables.layouts[c].pp
        dd, dm, fe, le = self.times(c)
        whole = self.k * dd + (self.total - self.k) * dm + fe + le
        return max(-(-whole // pp), self.k * dd + (self.low_first - self.k) * dm + fe, dm + le)

    def witness_holds(self, c: int, witness: int) -> bool:
        """No split keeps every stage within memory and within ``witness - 1`` ns (and balanced, where the
        scenario sets a balance target: the plans a bound must cover are those that satisfy every rule)."""
        if self.compute_pct is not None or self.memory_pct is not None:
            return not self.balanced_split_fits(c, compute=self.compute_pct is not None, memory=self.memory_pct is not None,
                                                limit_ns=witness - 1)
        dd, dm, fe, le = self.times(c)
        limit = witness - 1
        base_first = self.k * dd - self.k * dm + fe

        def by_time(extra: int) -> int:
            room = limit - extra
            if dm == 0:
                return self.total if room >= 0 else -1
            return room // dm

        caps = (by_time(base_first), by_time(0), by_time(le))
        return not self.split_fits_memory(c, caps)

    def _stage_rows(self, c: int) -> list[tuple[int, int, int, tuple[int, int], tuple[int, int]]]:
        """Per stage class of candidate row ``c`` (first, middle, last; those its PP has): how many stages,
        the fewest and the most layers (by memory), and its decode ns and placed bytes as ``(at 0
        layers, per layer)`` lines with the dense layers in the first stage."""
        layout = self.tables.layouts[c]
        dd, dm, fe, le = self.times(c)
        b = placed_bytes_line(scenario=self.scenario, layout=layout, batch=self.tables.cost.batch[c])
        k = self.k
        rows = [(1, self.low_first, self.most_layers_by_memory(c, "first"), (k * dd - k * dm + fe, dm),
                 (k * b.dense_layer - k * b.moe_layer + b.fixed_first, b.moe_layer))]
        if layout.pp >= 3:
            rows.append((layout.pp - 2, 1, self.most_layers_by_memory(c, "middle"), (0, dm), (b.fixed_middle, b.moe_layer)))
        rows.append((1, 1, self.most_layers_by_memory(c, "last"), (le, dm), (b.fixed_last, b.moe_layer)))
        return rows

    def balanced_split_fits(self, c: int, *, compute: bool, memory: bool, limit_ns: int | None = None) -> bool:
        """Is there a split (of the scenario's kind) within memory, with every stage within ``limit_ns``
        (None: any), whose decode times (``compute``) and placed bytes (``memory``) are balanced?

        Derived here by the *smallest* stage (the search goes by the largest): ``100 x (max - min) <= pct x
        max`` iff ``max <= 100 x min / (100 - pct)`` (pct < 100; at 100 or more every split holds), so a
        split is balanced iff for its smallest value ``v`` every stage lies in ``[v, floor(100 v / (100 -
        pct))]``; trying every value ``v`` a stage can take covers every split, and for one ``v`` the stages'
        layer counts form intervals, which some split meets iff their ends bracket the model's layers."""
        pp = self.tables.layouts[c].pp
        if self.no_split(pp):
            return False
        rows = self._stage_rows(c)
        if pp == 1:
            return self.split_fits_memory(c) and (limit_ns is None or self.exact_slowest(c) <= limit_ns)
        if self.even:
            share = self.total // pp
            if any(not low <= share <= most for _, low, most, _, _ in rows):
                return False
            times = [a + share * d for _, _, _, (a, d), _ in rows]
            placed = [a + share * d for _, _, _, _, (a, d) in rows]
            return ((limit_ns is None or max(times) <= limit_ns) and (not compute or _holds(times, self.compute_pct))
                    and (not memory or _holds(placed, self.memory_pct)))

        def smallest_values(line: int) -> list[int | None]:
            return sorted({row[line][0] + n * row[line][1] for row in rows for n in range(row[1], min(row[2], self.total) + 1)})

        for t_min in (smallest_values(3) if compute else [None]):
            t_max = _most_above(t_min, self.compute_pct)
            if limit_ns is not None:
                t_max = limit_ns if t_max is None else min(t_max, limit_ns)
            by_time = [_counts(line, t_min, t_max, low, min(most, self.total)) for _, low, most, line, _ in rows]
            if not _meets(rows, by_time, self.total):
                continue
            for b_min in (smallest_values(4) if memory else [None]):
                b_max = _most_above(b_min, self.memory_pct)
                both = [_counts(line, b_min, b_max, lo, hi) for (_, _, _, _, line), (lo, hi) in zip(rows, by_time)]
                if _meets(rows, both, self.total):
                    return True
        return False

    def figures(self, c: int, slowest: int) -> tuple[int, int, int, int]:
        """``(ttft, tpot, request latency, primary)`` for a slowest decode stage of ``slowest`` ns, by
        ``cost.estimate``'s formulas: every one grows with ``slowest``. TTFT (isolated or loaded, the scalar
        ``CostTable.ttft_ns``; the search evaluates it vectorised in ``candidates.py``) does not depend on
        the split, so it is exact here for every candidate."""
        cost, s = self.tables.cost, self.scenario
        layout = self.tables.layouts[c]
        ttft = cost.ttft_ns(c)
        tpot = cost.decode_cycle_ns(c, slowest) + cost.prefill_share_ns[c]
        latency = ttft + max(s.workload.output_tokens - 1, 0) * tpot
        primary = primary_ns(s.search.objective, ttft_ns=ttft, tpot_ns=tpot, request_latency_ns=latency, gpus=layout.gpus,
                             sequences=layout.dp * cost.batch[c])
        return ttft, tpot, latency, primary

    def misses_target(self, c: int, code: str, figures: tuple[int, int, int, int]) -> bool:
        targets = self.scenario.targets
        ttft, tpot, latency, _ = figures
        if code == "ttft_target" and targets.ttft_s is not None:
            return ttft > target_bound_ns(targets.ttft_s)
        if code == "tpot_target" and targets.tpot_s is not None:
            return tpot > target_bound_ns(targets.tpot_s)
        if code == "throughput_target" and targets.output_tokens_per_s is not None:
            layout = self.tables.layouts[c]
            sequences = layout.dp * self.tables.cost.batch[c] if self.scenario.search.objective.chooses_batch else None
            return latency > ThroughputTarget.bound_ns(self.scenario, sequences)
        return False


def _holds(values: list[int], pct) -> bool:
    return (100 - pct) * max(values) <= 100 * min(values)


def _most_above(least: int | None, pct) -> int | None:
    """The largest value a stage may take when the smallest is ``least``: ``floor(100 x least / (100 -
    pct))``; None (no limit) without a smallest value or when pct >= 100."""
    if least is None or pct >= 100:
        return None
    return math.floor(100 * least / (100 - pct))


def _counts(line: tuple[int, int], least: int | None, most: int | None, low: int, high: int) -> tuple[int, int]:
    """Layer counts ``n`` in ``[low, high]`` whose value ``a + n x d`` lies in ``[least, most]`` (None: open)."""
    a, d = line
    if d == 0:
        ok = (least is None or a >= least) and (most is None or a <= most)
        return (low, high) if ok else (low, low - 1)
    if least is not None:
        low = max(low, -((a - least) // d))
    if most is not None:
        high = min(high, (most - a) // d)
    return low, high


def _meets(rows, counts: list[tuple[int, int]], total: int) -> bool:
    """Some split gives each stage of a class a count in its interval and sums to ``total``."""
    return (all(lo <= hi for lo, hi in counts)
            and sum(row[0] * lo for row, (lo, _) in zip(rows, counts)) <= total <= sum(row[0] * hi for row, (_, hi) in zip(rows, counts)))


def _slowest_lower_bound(space: _Space, c: int, witness: int | None) -> tuple[int | None, str | None]:
    """A checked lower bound of candidate ``c``'s slowest stage, or (None, why not)."""
    exact = space.exact_slowest(c)
    if exact is not None:
        return exact, None
    if witness is None:
        return space.trivial_slowest(c), None
    if not space.witness_holds(c, witness):
        return None, f"row {c}: a split fits with every stage under {witness} ns, so the witness is no lower bound"
    return max(witness, space.trivial_slowest(c)), None


def _confirm(space: _Space, rules_by_name: dict, g: int, code: str, witness: int | None, optimum: int, chosen: int,
             excluded: frozenset = frozenset()) -> str | None:
    """None if ``code`` holds for grid candidate ``g``, else why not."""
    n, layout = len(space.grid), space.grid[g]
    if code == "excluded":
        return None if layout in excluded and g != chosen else f"candidate {g}: {layout} is not among the excluded layouts"
    if code == "optimum":
        return None if g == chosen else f"candidate {g} is marked optimum but the plan is candidate {chosen}"
    if g == chosen:
        return f"candidate {g} is the plan but is marked {code}"
    rule = rules_by_name.get(code)
    if isinstance(rule, LayoutRule):
        return None if not rule.holds(space.scenario, layout) else f"candidate {g}: {code} holds for {layout}"
    pp = layout.pp
    split_codes = {"layer_split": space.too_many_stages, "dense_first_stage": space.dense_first_impossible}
    if "even_layers" in rules_by_name:
        split_codes["even_layers"] = space.uneven
    if code in split_codes:
        return None if split_codes[code](pp) else f"candidate {g}: {code} does not rule out PP = {pp}"
    if space.no_split(pp):
        return f"candidate {g}: no split of the search space, yet marked {code}"
    c = space.row_of.get(g)
    if c is None or space.tables.layouts[c] != layout or (space.batches is not None and space.tables.cost.batch[c] != space.batches[g]):
        return f"candidate {g}: marked {code}, but the tables have no row for it"
    if code == "memory_cap":
        return None if "memory_cap" in rules_by_name and not space.split_fits_memory(c) else f"candidate {g}: a split fits in memory"
    if code in BALANCE_CODES:  # cumulative, in certificate order: within memory, compute-balanced, then bytes too
        memory = code == "memory_balance"
        if code not in rules_by_name or space.balanced_split_fits(c, compute="compute_balance" in rules_by_name, memory=memory):
            return f"candidate {g}: a split within memory meets {code}"
        return None
    slowest, why = _slowest_lower_bound(space, c, witness)
    if slowest is None:
        return why
    figures = space.figures(c, slowest)
    if code in TARGET_CODES:
        return None if code in rules_by_name and space.misses_target(c, code, figures) else \
            f"candidate {g}: {code} is met at the lower bound {slowest} ns"
    if code == "bound":
        value = figures[3] * n + g
        return None if value > optimum else f"candidate {g}: its lower bound {value} is not above the optimum {optimum}"
    return f"candidate {g}: unknown code {code!r}"


def scope(scenario: Scenario) -> list[str]:
    """The search space a certificate's claim is about, beyond the rules (see the module docstring)."""
    out = []
    if leading_dense_layers(scenario) >= 2 and scenario.model.num_hidden_layers >= 2:
        out.append(DENSE_FIRST_NOTE)
    if scenario.search.objective.chooses_batch:
        ladder = batch_ladder(scenario.engine.max_num_seqs)
        out.append(f"search space: batch per replica from {', '.join(map(str, ladder))} (powers of two and engine.max_num_seqs)")
    return out


def check_optimality(scenario: Scenario, plan: Plan, certificate: dict, tables: Tables | None = None, *,
                     excluded: frozenset[Layout] = frozenset()) -> OptimalityCheck:
    """Re-check ``certificate`` (as ``build`` writes it, or read back from a plan's JSON) for ``plan``:
    every candidate covered once, each code confirmed, the plan's own certificate holding and its
    objective equal to the claimed optimum. Never raises for a wrong certificate: the result says.

    ``tables`` are the scenario's (``build_tables``, the whole grid or the part with ``ranks``); by
    default they are built for the candidates whose code is not a layout rule. ``excluded``: the layouts
    the caller set aside (the certificate must name exactly these; a plan file's claim names none)."""
    from optimizer.search.verify import certify as certify_plan  # verify imports result, not this module

    grid, batches = candidate_grid(scenario)
    n = len(grid)
    failures: list[str] = []
    try:
        codes, runs = list(certificate["codes"]), [(int(i), int(k)) for i, k in certificate["runs"]]
        witnesses = {int(c): int(t) for c, t in certificate.get("witness_slowest_stage_ns", {}).items()}
        optimum, chosen = int(certificate["optimum"]), int(certificate["chosen"])
        declared = int(certificate["candidates"])
        declared_excluded = frozenset(Layout(**{k: int(v) for k, v in lay.items()}) for lay in certificate.get("excluded", []))
        declared_scope = list(certificate.get("scope", []))
    except (KeyError, TypeError, ValueError) as exc:
        return OptimalityCheck(False, n, (f"malformed certificate ({exc})",), {})
    if certificate.get("format") != FORMAT:
        failures.append(f"unknown format {certificate.get('format')!r}, expected {FORMAT}")
    if declared_excluded != excluded:
        names = ", ".join(f"TP{x.tp} PP{x.pp} DP{x.dp} EP{x.ep} ETP{x.etp}" for x in sorted(declared_excluded, key=tie_break_key))
        failures.append(f"the certificate sets aside {names or 'no layout'}: it proves the plan best among the rest, not optimal"
                        if declared_excluded else "the certificate sets aside no layout, the question did")
    if declared_scope != scope(scenario):
        failures.append(f"the certificate's scope {declared_scope} is not the scenario's search space {scope(scenario)}")
    if declared != n or sum(k for _, k in runs) != n:
        failures.append(f"the certificate covers {sum(k for _, k in runs)} candidates; the scenario has {n}")
    if failures or any(not 0 <= i < len(codes) for i, _ in runs):
        return OptimalityCheck(False, n, tuple(failures) or ("a run names a code index out of range",), {})
    if tables is None:
        rules = {r.name for r in build_rules(scenario) if isinstance(r, LayoutRule)}
        rows = tuple(g for g, code in enumerate(codes[i] for i, k in runs for _ in range(k)) if code not in rules)
        tables = build_tables(scenario, tuple(grid[g] for g in rows), None if batches is None else tuple(batches[g] for g in rows),
                              ranks=rows, grid_size=n)
    row = tables.index(plan.layout, plan.batch_per_replica)
    c_plan = None if row is None else tables.rank(row)
    if c_plan != chosen:
        failures.append(f"the plan is candidate {c_plan}, the certificate's optimum is candidate {chosen}")
    if failures:
        return OptimalityCheck(False, n, tuple(failures), {})
    plan_cert = certify_plan(scenario, plan, tables)
    est = plan_cert.estimate
    value = primary_ns(scenario.search.objective, ttft_ns=est.ttft_ns, tpot_ns=est.tpot_ns,
                       request_latency_ns=est.request_latency_ns, gpus=plan.layout.gpus,
                       sequences=plan.layout.dp * plan.batch_per_replica) * n + chosen
    if tables.candidates != n:
        failures.append(f"the tables are for {tables.candidates} candidates, the scenario has {n}")
    if not plan_cert.holds:
        failures.append("the plan's own certificate fails: " + ", ".join(ch.name for ch in plan_cert.failing))
    if value != optimum:
        failures.append(f"the plan's objective is {value}, the certificate claims {optimum}")
    space = _Space(scenario, tables)
    rules_by_name = {r.name: r for r in build_rules(scenario)}
    counts: dict[str, int] = {}
    c = 0
    for index, count in runs:
        code = codes[index]
        counts[code] = counts.get(code, 0) + count
        for _ in range(count):
            why = _confirm(space, rules_by_name, c, code, witnesses.get(c), optimum, chosen, excluded)
            if why is not None:
                failures.append(why)
                if len(failures) >= 10:
                    return OptimalityCheck(False, n, tuple(failures), counts)
            c += 1
    return OptimalityCheck(not failures, n, tuple(failures), counts, tuple(declared_scope), len(excluded))


def build(scenario: Scenario, tables: Tables, *, chosen: int, optimum: int, codes: list[str],
          slowest_ns: list[int | None], excluded: frozenset[Layout] = frozenset()) -> dict:
    """A certificate from the search's per-candidate verdicts, in grid order: ``codes[g]`` is the first
    rule that rejects candidate ``g`` (or ``bound``/``optimum``), ``slowest_ns[g]`` the search's smallest
    slowest stage. A witness is written only where the split-free lower bound does not already confirm
    the code."""
    space = _Space(scenario, tables)
    rules_by_name = {r.name: r for r in build_rules(scenario)}
    legend: list[str] = []
    runs: list[list[int]] = []
    witnesses: dict[str, int] = {}
    for c, code in enumerate(codes):
        if code in TARGET_CODES or code == "bound":
            if _confirm(space, rules_by_name, c, code, None, optimum, chosen, excluded) is not None and slowest_ns[c] is not None:
                witnesses[str(c)] = int(slowest_ns[c])
        if code not in legend:
            legend.append(code)
        i = legend.index(code)
        if runs and runs[-1][0] == i:
            runs[-1][1] += 1
        else:
            runs.append([i, 1])
    return {"format": FORMAT, "candidates": len(codes), "optimum": optimum, "chosen": chosen, "codes": legend,
            "runs": runs, "witness_slowest_stage_ns": witnesses,
            "excluded": [lay.as_dict() for lay in sorted(excluded, key=tie_break_key)], "scope": scope(scenario)}
