"""Disaggregated serving: the cluster split into a prefill pool and a decode pool, against the aggregated
plan on the whole cluster, each proved optimal, the better one named.

Model (the same cost tables as the aggregated search, per instance size):
- A prefill instance (``g_p`` GPUs, its own layout and layer split) prefills one prompt per DP replica at
  a time: ``prefill_ns`` per prompt (TTFT's prefill part), ``R = DP`` prompts in flight.
- A decode instance (``g_d`` GPUs, layout, split and batch ``b`` per replica) runs decode steps of
  ``step_ns`` (TPOT, without the prefill share an aggregated replica carries) for ``S = DP x b``
  sequences; a request holds a slot for ``OSL - 1`` steps (the prefill pool made the first token).
- The KV cache of a prompt (ISL tokens, every layer) moves from the prefill GPUs to the decode GPUs over
  the inter-node link (pools on different nodes, conservatively): each GPU sends its shard (its stage's
  layers, its TP share of the KV heads; MLA's latent cache is whole on every TP rank), and each decode GPU
  receives its own; TTFT = ``prefill_ns + max(send, receive)``.
- Rate matching: ``r_p`` prefill and ``r_d`` decode instances with ``r_p g_p + r_d g_d <= N``; the
  deployment completes ``min(r_p R / prefill_ns, r_d S / ((OSL - 1) step_ns))`` requests per ns, so
  neither pool starves the other at the optimum.
- Objective: GPU-nanoseconds per request, ``N / rate`` (the aggregated ``output_tokens_per_s_per_gpu``
  objective's integer, ``result.primary_ns``), within the scenario's TTFT and TPOT targets.

Instance sizes are powers of two and multiples of a node that are powers of two (1, 2, 4, 8, 16, ...
below N): the sizes engines are deployed at. A candidate strictly worse than another of its size on
every term (time, KV transfer, in-flight count) is dropped before the search; both the CP-SAT model
(``solve.minimise_disaggregated``) and the enumeration oracle here see the same list.

Sources: DistServe (Zhong et al., OSDI 2024) and Splitwise (Patel et al., ISCA 2024) for the pool split
and rate matching; vLLM's and SGLang's disaggregated prefill docs for KV transfer between instances.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from fractions import Fraction

from optimizer.model.calibration import calibration_for
from optimizer.model.cost import Work, work_time_s
from optimizer.errors import Infeasible, OptimizerError
from optimizer.search.exhaustive import feasible_plans, optimize_exhaustive
from optimizer.model.memory import kv_cache_bytes_per_token_layer
from optimizer.model.parallel import Layout
from optimizer.search.result import build_tables, primary_ns
from optimizer.search.rules import TARGET_RULES
from optimizer.inputs.scenario import Cluster, Objective, Scenario, Search, Workload
from optimizer.search.solve import SOLVER_NAME, minimise_disaggregated, minimise_gpus_for_rate, optimize
from optimizer.search.verify import certify


@dataclass(frozen=True)
class PoolCandidate:
    """One instance candidate of a pool. ``time_ns``: a prefill per prompt (prefill) or a decode step
    (decode); ``kv_ns``: sending (prefill) or receiving (decode) one prompt's KV cache; ``in_flight``:
    prompts (prefill: DP) or sequences (decode: DP x batch) one instance serves at once."""

    role: str
    layout: Layout
    layers_per_stage: tuple[int, ...]
    batch_per_replica: int
    gpus: int
    time_ns: int
    kv_ns: int
    in_flight: int

    def as_dict(self) -> dict:
        return {"gpus": self.gpus, **self.layout.as_dict(), "layers_per_stage": list(self.layers_per_stage),
                "batch_per_replica": self.batch_per_replica, "time_ns": self.time_ns, "kv_transfer_ns": self.kv_ns,
                "in_flight": self.in_flight}


MAX_INSTANCE_GPUS = 64  # instances of more GPUs than this are not searched (DeepSeek's own prefill units are 32)


def instance_sizes(num_gpus: int, gpus_per_node: int) -> tuple[int, ...]:
    """Powers of two below ``num_gpus``, at most ``MAX_INSTANCE_GPUS``, that fit a node or tile whole
    nodes: the pools grow by adding instances, not by widening one."""
    sizes, g = [], 1
    while g < num_gpus and g <= MAX_INSTANCE_GPUS:
        if g <= gpus_per_node and gpus_per_node % g == 0 or g % gpus_per_node == 0:
            sizes.append(g)
        g *= 2
    return tuple(sizes)


def _sub_scenario(scenario: Scenario, gpus: int, *, objective: Objective, concurrent: int) -> Scenario:
    per_node = scenario.cluster.gpus_per_node
    nodes, per = (1, gpus) if gpus <= per_node else (gpus // per_node, per_node)
    cluster = Cluster(**{**scenario.cluster.model_dump(), "num_nodes": nodes, "gpus_per_node": per})
    workload = Workload(**{**scenario.workload.model_dump(), "concurrent_sequences": concurrent})
    search = Search(**{**scenario.search.model_dump(), "objective": objective})
    return scenario.model_copy(update={"cluster": cluster, "workload": workload, "search": search})


def _kv_transfer_ns(scenario: Scenario, layout: Layout, layers_per_stage: tuple[int, ...]) -> int:
    """One prompt's KV cache in or out of one GPU of an instance, over the inter-node link (ns, rounded up)."""
    per_token_layer = kv_cache_bytes_per_token_layer(model=scenario.model, workload=scenario.workload, tp=layout.tp)
    shard = scenario.workload.input_tokens * max(layers_per_stage) * per_token_layer
    cal = calibration_for(scenario)
    stack = cal.stack_for(scenario.engine.name.value, scenario.engine.calibration_stack)
    seconds = work_time_s(Work("p2p", bytes=float(shard), offnode=1.0), gpu=scenario.cluster.gpu, cluster=scenario.cluster,
                          cal=cal.for_gpu(scenario.cluster.gpu.name, stack))
    return int(-(-float(seconds) * 1e9 // 1))


def candidates(scenario: Scenario) -> tuple[list[PoolCandidate], list[PoolCandidate]]:
    """Prefill and decode instance candidates within the scenario's TPOT target (TTFT depends on the pair),
    dominated ones dropped (see the module docstring)."""
    n, tpot = scenario.cluster.num_gpus, scenario.targets.tpot_s
    tpot_bound = None if tpot is None else int(tpot * 10**9)  # floor: the TPOT rule's own bound
    prefill, decode = [], []
    for g in instance_sizes(n, scenario.cluster.gpus_per_node):
        sub = _sub_scenario(scenario, g, objective=Objective.TTFT, concurrent=1)
        for plan, ctx, _ in feasible_plans(sub, build_tables(sub), skip=TARGET_RULES):
            kv = _kv_transfer_ns(scenario, plan.layout, plan.layers_per_stage)
            prefill.append(PoolCandidate("prefill", plan.layout, plan.layers_per_stage, 1, g, ctx.estimate.ttft_ns, kv, plan.layout.dp))
        sub = _sub_scenario(scenario, g, objective=Objective.THROUGHPUT_PER_GPU, concurrent=scenario.workload.concurrent_sequences)
        for plan, ctx, _ in feasible_plans(sub, build_tables(sub), skip=TARGET_RULES):
            step = ctx.estimate.tpot_ns - ctx.table.prefill_share_ns[ctx.index]
            if tpot_bound is not None and step > tpot_bound:
                continue
            kv = _kv_transfer_ns(scenario, plan.layout, plan.layers_per_stage)
            decode.append(PoolCandidate("decode", plan.layout, plan.layers_per_stage, plan.batch_per_replica, g, step, kv,
                                        plan.layout.dp * plan.batch_per_replica))
    return _undominated(prefill), _undominated(decode)


def _undominated(pool: list[PoolCandidate]) -> list[PoolCandidate]:
    """Drop a candidate when another of the same size is no worse on time per in-flight item and on KV
    transfer, and strictly better on one (kept in input order, so the tie-break stays deterministic)."""
    kept = []
    for c in pool:
        beaten = any(o.gpus == c.gpus and o is not c
                     and o.time_ns * c.in_flight <= c.time_ns * o.in_flight and o.kv_ns <= c.kv_ns
                     and (o.time_ns * c.in_flight < c.time_ns * o.in_flight or o.kv_ns < c.kv_ns)
                     for o in pool)
        if not beaten:
            kept.append(c)
    return kept


@dataclass(frozen=True)
class DisaggregatedPlan:
    prefill: PoolCandidate
    decode: PoolCandidate
    prefill_instances: int
    decode_instances: int
    primary: int  # GPU-ns per request
    ttft_ns: int
    proved_optimal: bool
    solver: str
    wall_s: float
    solver_fault: str | None = None  # CP-SAT's proof refuted by the enumeration, whose split this is

    @property
    def gpus(self) -> int:
        return self.prefill_instances * self.prefill.gpus + self.decode_instances * self.decode.gpus


def _primary(n: int, steps: int, p: PoolCandidate, r_p: int, d: PoolCandidate, r_d: int) -> int:
    return max(-(-n * p.time_ns // (r_p * p.in_flight)), -(-n * steps * d.time_ns // (r_d * d.in_flight)))


def _ttft_bound(scenario: Scenario) -> int | None:
    ttft = scenario.targets.ttft_s
    return None if ttft is None else (ttft * 10**9).numerator // (ttft * 10**9).denominator


def _enumerate_disaggregated(prefill: list[PoolCandidate], decode: list[PoolCandidate], n: int, steps: int,
                             bound: int | None) -> tuple[int, int, int, int, int] | None:
    """The enumeration oracle: ``(primary, i, j, r_p, -r_d)`` of the best split, in the tie-break order
    CP-SAT uses; None if none fits."""
    best = None
    for i, p in enumerate(prefill):
        if bound is not None and p.time_ns + p.kv_ns > bound:
            continue
        for j, d in enumerate(decode):
            if p.gpus + d.gpus > n or (bound is not None and p.time_ns + d.kv_ns > bound):
                continue
            for r_p in range(1, (n - d.gpus) // p.gpus + 1):
                r_d = (n - r_p * p.gpus) // d.gpus
                key = (_primary(n, steps, p, r_p, d, r_d), i, j, r_p, -r_d)
                if best is None or key < best:
                    best = key
    return best


def solve_disaggregated(scenario: Scenario, pools=None, *, solver: str = "cp-sat", time_limit_s: float | None = None,
                        check: bool = True) -> DisaggregatedPlan | None:
    """The best disaggregated split (CP-SAT with proof, or the enumeration oracle), None if none is feasible.

    CP-SAT's proof is never taken alone: with ``check`` (the default) the enumeration re-derives the
    optimum on the same candidate lists; a different answer is a solver fault, reported in
    ``solver_fault``, and the enumeration's split is kept. (``check=False`` is for benchmarks timing the
    solver on its own.)"""
    start = time.perf_counter()
    prefill, decode = pools or candidates(scenario)
    n, steps = scenario.cluster.num_gpus, max(scenario.workload.output_tokens - 1, 1)
    bound = _ttft_bound(scenario)

    def plan_of(best: tuple[int, int, int, int, int], proved: bool, name: str, fault: str | None = None) -> DisaggregatedPlan:
        primary, i, j, r_p, neg = best
        return DisaggregatedPlan(prefill[i], decode[j], r_p, -neg, primary,
                                 prefill[i].time_ns + max(prefill[i].kv_ns, decode[j].kv_ns), proved, name,
                                 time.perf_counter() - start, fault)

    if solver == "exhaustive":
        best = _enumerate_disaggregated(prefill, decode, n, steps, bound)
        return None if best is None else plan_of(best, True, "exhaustive")
    result = minimise_disaggregated(
        num_gpus=n, prefill=[(c.gpus, c.time_ns, c.kv_ns, c.in_flight) for c in prefill],
        decode=[(c.gpus, c.time_ns, c.kv_ns, c.in_flight) for c in decode], decode_steps=steps, ttft_bound_ns=bound,
        time_limit_s=time_limit_s)
    oracle = _enumerate_disaggregated(prefill, decode, n, steps, bound) if check else None
    if result is None:
        if oracle is not None:
            return plan_of(oracle, True, f"{SOLVER_NAME} (fault) + exhaustive",
                           f"solver fault: CP-SAT found no split, the enumeration found {oracle[0]} GPU-ns per request")
        return None
    p, d = prefill[result.prefill], decode[result.decode]
    if _primary(n, steps, p, result.prefill_instances, d, result.decode_instances) != result.primary:
        raise OptimizerError("internal error: CP-SAT's disaggregated objective disagrees with its own split")
    key = (result.primary, result.prefill, result.decode, result.prefill_instances, -result.decode_instances)
    if oracle is not None and result.proved_optimal and oracle != key:
        return plan_of(oracle, True, f"{SOLVER_NAME} (fault) + exhaustive",
                       f"solver fault: CP-SAT proved {key}, the enumeration finds {oracle}; the enumeration's split is kept")
    name = SOLVER_NAME + (", checked by enumeration" if oracle is not None and result.proved_optimal else "")
    return plan_of(key, result.proved_optimal, name)


@dataclass(frozen=True)
class ServingComparison:
    """Aggregated against disaggregated on the same cluster and targets, in GPU-ns per request."""

    aggregated_primary: int | None
    aggregated: object | None  # optimizer.search.result.Solution
    disaggregated: DisaggregatedPlan | None

    @property
    def winner(self) -> str:
        if self.aggregated_primary is None and self.disaggregated is None:
            return "none"
        if self.disaggregated is None:
            return "aggregated"
        if self.aggregated_primary is None:
            return "disaggregated"
        return "disaggregated" if self.disaggregated.primary < self.aggregated_primary else "aggregated"


def compare(scenario: Scenario, *, solver: str = "cp-sat") -> ServingComparison:
    """Both optima for output tokens/s per GPU within the scenario's TTFT and TPOT targets (a throughput
    target is dropped: the two are compared on throughput itself)."""
    targets = scenario.targets.model_copy(update={"output_tokens_per_s": None})
    free = scenario.model_copy(update={"targets": targets,
                                       "search": Search(**{**scenario.search.model_dump(), "objective": Objective.THROUGHPUT_PER_GPU})})
    try:
        agg = optimize_exhaustive(free) if solver == "exhaustive" else optimize(free)
        est = certify(free, agg.plan, agg.tables).estimate
        agg_primary = primary_ns(Objective.THROUGHPUT_PER_GPU, ttft_ns=est.ttft_ns, tpot_ns=est.tpot_ns,
                                 request_latency_ns=est.request_latency_ns, gpus=agg.plan.layout.gpus,
                                 sequences=agg.plan.layout.dp * agg.plan.batch_per_replica)
    except Infeasible:
        agg, agg_primary = None, None
    return ServingComparison(agg_primary, agg, solve_disaggregated(free, solver=solver))


def tokens_per_s_per_gpu(scenario: Scenario, primary: int) -> float:
    """Output tokens/s per GPU from GPU-ns per request."""
    return scenario.workload.output_tokens * 1e9 / primary if primary else 0.0



def comparison_document(scenario: Scenario, comparison: ServingComparison) -> dict:
    """The JSON of ``optimize disagg``: both optima with their proofs, the winner, the pools, the rates."""
    n = scenario.cluster.num_gpus
    steps = max(scenario.workload.output_tokens - 1, 1)
    agg = comparison.aggregated
    d = comparison.disaggregated
    out: dict = {"kind": "serving_comparison", "scenario": scenario.name, "gpus": n, "winner": comparison.winner,
                 "objective": "gpu_ns_per_request (output_tokens_per_s_per_gpu = OSL x 1e9 / it), within the TTFT/TPOT targets"}
    if agg is not None:
        est = certify(agg.scenario, agg.plan, agg.tables).estimate
        out["aggregated"] = {
            **agg.plan.layout.as_dict(), "batch_per_replica": agg.plan.batch_per_replica,
            "layers_per_stage": list(agg.plan.layers_per_stage), "gpu_ns_per_request": comparison.aggregated_primary,
            "output_tokens_per_s_per_gpu": tokens_per_s_per_gpu(scenario, comparison.aggregated_primary),
            "ttft_s": est.ttft_ns / 1e9, "tpot_s": est.tpot_ns / 1e9, "proved_optimal": agg.evidence.proved_optimal,
            "solver": agg.evidence.solver, "certificate_check": agg.evidence.certificate_check,
            "solver_fault": agg.evidence.solver_fault}
    else:
        out["aggregated"] = None
    if d is not None:
        prefill_rate = d.prefill_instances * d.prefill.in_flight * 1e9 / d.prefill.time_ns
        decode_rate = d.decode_instances * d.decode.in_flight * 1e9 / (steps * d.decode.time_ns)
        out["disaggregated"] = {
            "prefill": {**d.prefill.as_dict(), "instances": d.prefill_instances, "requests_per_s": prefill_rate},
            "decode": {**d.decode.as_dict(), "instances": d.decode_instances, "requests_per_s": decode_rate},
            "gpus_used": d.gpus, "gpu_ns_per_request": d.primary, "output_tokens_per_s_per_gpu": tokens_per_s_per_gpu(scenario, d.primary),
            "ttft_s": d.ttft_ns / 1e9, "tpot_s": d.decode.time_ns / 1e9, "proved_optimal": d.proved_optimal, "solver": d.solver,
            "solver_fault": d.solver_fault}
    else:
        out["disaggregated"] = None
    return out


def render_comparison(document: dict) -> str:
    """``optimize disagg`` for a terminal."""
    lines = [f"Serving comparison for {document['scenario']} ({document['gpus']} GPUs), output tokens/s per GPU within the targets:"]
    a, d = document["aggregated"], document["disaggregated"]
    if a:
        lines.append(f"  aggregated:    TP{a['tp']} PP{a['pp']} DP{a['dp']} EP{a['ep']} ETP{a['etp']}, batch {a['batch_per_replica']}: "
                     f"{a['output_tokens_per_s_per_gpu']:,.1f} tok/s/GPU, TTFT {a['ttft_s'] * 1e3:.1f} ms, TPOT {a['tpot_s'] * 1e3:.2f} ms "
                     f"({'proved optimal' if a['proved_optimal'] else 'NOT proved'}, {a['solver']})")
    else:
        lines.append("  aggregated:    no plan meets the targets")
    if d:
        p, q = d["prefill"], d["decode"]
        lines.append(f"  disaggregated: {p['instances']} x prefill [{p['gpus']} GPUs: TP{p['tp']} PP{p['pp']} DP{p['dp']} EP{p['ep']}] + "
                     f"{q['instances']} x decode [{q['gpus']} GPUs: TP{q['tp']} PP{q['pp']} DP{q['dp']} EP{q['ep']}, batch "
                     f"{q['batch_per_replica']}] on {d['gpus_used']} GPUs: {d['output_tokens_per_s_per_gpu']:,.1f} tok/s/GPU, "
                     f"TTFT {d['ttft_s'] * 1e3:.1f} ms (KV transfer {max(p['kv_transfer_ns'], q['kv_transfer_ns']) / 1e6:.2f} ms), "
                     f"TPOT {d['tpot_s'] * 1e3:.2f} ms ({'proved optimal' if d['proved_optimal'] else 'NOT proved'}, {d['solver']})")
        lines.append(f"                 rates: prefill {p['requests_per_s']:,.2f} req/s, decode {q['requests_per_s']:,.2f} req/s")
    else:
        lines.append("  disaggregated: no split meets the targets")
    lines += _faults(document)
    lines.append(f"  winner: {document['winner']}")
    return "\n".join(lines) + "\n"


def _faults(document: dict) -> list[str]:
    """One line per search whose CP-SAT proof the enumeration refuted (the document keeps the enumeration's answer)."""
    return [f"  SOLVER FAULT ({mode}): {document[mode]['solver_fault']}" for mode in ("aggregated", "disaggregated")
            if document.get(mode) and document[mode].get("solver_fault")]


# --- fewest GPUs for a request rate -------------------------------------------------------------------


def aggregated_candidates(scenario: Scenario) -> list[PoolCandidate]:
    """Aggregated instances (prefill and decode on the same GPUs) of every instance size up to the whole
    cluster, each layout with every batch of the ladder, within the scenario's TTFT and TPOT targets:
    ``time_ns`` is the request latency, ``in_flight`` DP x batch."""
    n = scenario.cluster.num_gpus
    sizes = sorted(set(instance_sizes(n, scenario.cluster.gpus_per_node)) | {n})
    ttft, tpot = _ttft_bound(scenario), scenario.targets.tpot_s
    tpot_bound = None if tpot is None else (tpot * 10**9).numerator // (tpot * 10**9).denominator
    out = []
    for g in sizes:
        sub = _sub_scenario(scenario, g, objective=Objective.THROUGHPUT_PER_GPU, concurrent=scenario.workload.concurrent_sequences)
        for plan, ctx, _ in feasible_plans(sub, build_tables(sub), skip=TARGET_RULES):
            est = ctx.estimate
            if (ttft is not None and est.ttft_ns > ttft) or (tpot_bound is not None and est.tpot_ns > tpot_bound):
                continue
            out.append(PoolCandidate("aggregated", plan.layout, plan.layers_per_stage, plan.batch_per_replica, g,
                                     est.request_latency_ns, 0, plan.layout.dp * plan.batch_per_replica))
    return _undominated(out)


@dataclass(frozen=True)
class CapacityPlan:
    """The fewest GPUs carrying the rate: ``pools`` is ``((candidate, instances),)`` aggregated or
    ``((prefill, r_p), (decode, r_d))`` disaggregated."""

    mode: str
    pools: tuple[tuple[PoolCandidate, int], ...]
    gpus: int
    proved_optimal: bool
    solver: str
    solver_fault: str | None = None  # CP-SAT's proof refuted by the enumeration, whose plan this is


def _needed(rate, work_ns: int, in_flight: int) -> int:
    """Instances so that ``r x in_flight / work_ns >= rate`` (per second), exactly: ceil."""
    value = rate * work_ns / (in_flight * 10**9)
    return -(-value.numerator // value.denominator)


def fewest_gpus(scenario: Scenario, *, solver: str = "cp-sat") -> tuple[CapacityPlan | None, CapacityPlan | None]:
    """Aggregated and disaggregated fewest-GPU plans for ``targets.request_rate_per_s`` within the TTFT and
    TPOT targets (each None if none fits the cluster), by CP-SAT with proof or by enumeration.

    Raises:
        OptimizerError: the scenario gives no ``targets.request_rate_per_s``.
    """
    if scenario.targets.request_rate_per_s is None:
        raise OptimizerError("objective fewest_gpus needs targets.request_rate_per_s (requests per second to carry)")
    rate = Fraction(scenario.targets.request_rate_per_s)
    n, steps = scenario.cluster.num_gpus, max(scenario.workload.output_tokens - 1, 1)
    agg = aggregated_candidates(scenario)
    prefill, decode = candidates(scenario)
    decode_work = [steps * d.time_ns for d in decode]
    bound = _ttft_bound(scenario)
    oracle = _enumerate_capacity(agg, prefill, decode, decode_work, rate, n, bound)
    if solver == "exhaustive":
        return oracle
    num, den = rate.numerator, rate.denominator
    a = minimise_gpus_for_rate(num_gpus=n, rate_num=num, rate_den=den, pools=[[(c.gpus, c.time_ns, c.in_flight) for c in agg]])
    agg_plan = None if a is None else CapacityPlan("aggregated", ((agg[a.choice[0]], a.instances[0]),), a.gpus, a.proved_optimal,
                                                   SOLVER_NAME)
    d = minimise_gpus_for_rate(
        num_gpus=n, rate_num=num, rate_den=den,
        pools=[[(c.gpus, c.time_ns, c.in_flight) for c in prefill], [(c.gpus, w, c.in_flight) for c, w in zip(decode, decode_work)]],
        ttft=None if bound is None else (bound, [c.time_ns for c in prefill], [c.kv_ns for c in prefill], [c.kv_ns for c in decode]))
    disagg_plan = None if d is None else CapacityPlan(
        "disaggregated", ((prefill[d.choice[0]], d.instances[0]), (decode[d.choice[1]], d.instances[1])), d.gpus, d.proved_optimal,
        SOLVER_NAME)
    return tuple(_checked(cp, ex) for cp, ex in zip((agg_plan, disagg_plan), oracle))  # type: ignore[return-value]


def _checked(cp: CapacityPlan | None, oracle: CapacityPlan | None) -> CapacityPlan | None:
    """CP-SAT's capacity plan, never on its proof alone: the enumeration's GPU count must be the same
    (their tie-breaks differ, so only the count is compared); else a solver fault and the enumeration's plan."""
    if cp is None and oracle is None:
        return None
    if cp is None or oracle is None or (cp.proved_optimal and cp.gpus != oracle.gpus):
        found = "no plan" if cp is None else f"{cp.gpus} GPUs"
        return replace(oracle, solver=f"{SOLVER_NAME} (fault) + exhaustive",
                       solver_fault=f"solver fault: CP-SAT found {found}, the enumeration {oracle.gpus} GPUs; its plan is kept") \
            if oracle is not None else replace(cp, proved_optimal=False, solver_fault="solver fault: the enumeration finds no plan")
    return replace(cp, solver=cp.solver + (", checked by enumeration" if cp.proved_optimal else ""))


def _enumerate_capacity(agg, prefill, decode, decode_work, rate, n: int, bound: int | None):
    """The enumeration oracle of ``fewest_gpus``: (aggregated plan, disaggregated plan), each None if none fits."""
    best_agg = min(((c.gpus * _needed(rate, c.time_ns, c.in_flight), i, _needed(rate, c.time_ns, c.in_flight))
                    for i, c in enumerate(agg)), default=None)
    agg_plan = None if best_agg is None or best_agg[0] > n else CapacityPlan(
        "aggregated", ((agg[best_agg[1]], best_agg[2]),), best_agg[0], True, "exhaustive")
    best = None
    for i, p in enumerate(prefill):
        if bound is not None and p.time_ns + p.kv_ns > bound:
            continue
        r_p = _needed(rate, p.time_ns, p.in_flight)
        for j, d in enumerate(decode):
            if bound is not None and p.time_ns + d.kv_ns > bound:
                continue
            r_d = _needed(rate, decode_work[j], d.in_flight)
            key = (r_p * p.gpus + r_d * d.gpus, i, r_p, j, r_d)
            if best is None or key < best:
                best = key
    disagg_plan = None if best is None or best[0] > n else CapacityPlan(
        "disaggregated", ((prefill[best[1]], best[2]), (decode[best[3]], best[4])), best[0], True, "exhaustive")
    return agg_plan, disagg_plan


def capacity_document(scenario: Scenario, plans: tuple[CapacityPlan | None, CapacityPlan | None]) -> dict:
    """The JSON of ``optimize capacity``."""
    agg, dis = plans
    options = [p for p in plans if p is not None]
    winner = min(options, key=lambda p: (p.gpus, p.mode)).mode if options else "none"

    def one(plan: CapacityPlan | None):
        if plan is None:
            return None
        return {"gpus": plan.gpus, "proved_optimal": plan.proved_optimal, "solver": plan.solver, "solver_fault": plan.solver_fault,
                "pools": [{"role": c.role, "instances": r, **c.as_dict()} for c, r in plan.pools]}

    return {"kind": "capacity", "scenario": scenario.name, "request_rate_per_s": float(scenario.targets.request_rate_per_s),
            "cluster_gpus": scenario.cluster.num_gpus, "winner": winner, "aggregated": one(agg), "disaggregated": one(dis)}


def render_capacity(document: dict) -> str:
    lines = [f"Fewest GPUs for {document['request_rate_per_s']:g} requests/s on {document['scenario']} "
             f"(at most {document['cluster_gpus']}), within the TTFT and TPOT targets:"]
    for mode in ("aggregated", "disaggregated"):
        plan = document[mode]
        if plan is None:
            lines.append(f"  {mode}: no plan carries the rate within the cluster")
            continue
        pools = " + ".join(f"{p['instances']} x {p['role']} [{p['gpus']} GPUs: TP{p['tp']} PP{p['pp']} DP{p['dp']} EP{p['ep']}"
                           + (f", batch {p['batch_per_replica']}" if p["role"] != "prefill" else "") + "]" for p in plan["pools"])
        lines.append(f"  {mode}: {plan['gpus']} GPUs = {pools} ({'proved optimal' if plan['proved_optimal'] else 'NOT proved'}, "
                     f"{plan['solver']})")
    lines += _faults(document)
    lines.append(f"  winner: {document['winner']}")
    return "\n".join(lines) + "\n"
