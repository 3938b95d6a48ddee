"""Fleet planning (issue 15): fleet files, instance types, the CP-SAT allocation, its solver-free check,
the exhaustive oracle (differential, hypothesis), the CLI (plan, schema, launch, bad input)."""

from __future__ import annotations

import json
from dataclasses import replace
from fractions import Fraction

import jsonschema
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer.cli import main
from optimizer.search.exhaustive import feasible_plans
from optimizer.search.fleet import _evaluate, enumerate_types, integers, plan_fleet, prune
from optimizer.search.fleet_check import Allocation, check_allocation, exhaustive_fleet, place
from optimizer.search.fleet_types import SLOT_SCALE, carried_mrps, service_scenario
from optimizer.inputs.fleet import fleet_from_dict, fleet_schema, load_fleet, shipped_fleets
from optimizer.search.result import build_tables
from optimizer.search.rules import TARGET_RULES
from optimizer.search.solve import FleetIntegers, solve_fleet
from optimizer.inputs.loader import read_mapping

SMALL = "chat-2x2"


def _cross_kind() -> dict:
    """An 8B RAG service allowed prefill/decode pools: prefill lands (partly) on L40S, decode partly on H200."""
    return {
        "name": "cross-kind",
        "pools": [{"name": "l40s", "gpu": "l40s", "num_nodes": 2, "cost_per_gpu_hour": "0.99"},
                  {"name": "h200", "gpu": "H200", "num_nodes": 2, "cost_per_gpu_hour": "3.79"}],
        "services": [{"name": "rag-8b", "model": "Llama-3.1-8B", "engine": {"name": "vllm"}, "disaggregated": True,
                      "targets": {"ttft_s": 2, "tpot_s": 0.04},
                      "buckets": [{"name": "rag", "input_tokens": 8192, "output_tokens": 256, "request_rate_per_s": 10}]}],
    }


@pytest.fixture(scope="module")
def small_plan():
    return plan_fleet(load_fleet(SMALL), time_limit_s=30)


# --- inputs -------------------------------------------------------------------------------------------


def test_shipped_fleets_load_and_match_the_schema():
    assert {"chat-2x2", "mixed-8x4", "melange-chat"} <= set(shipped_fleets())
    schema = fleet_schema()
    for name, path in shipped_fleets().items():
        fleet = load_fleet(name)
        assert fleet.name == name and fleet.pools and fleet.services
        jsonschema.validate(read_mapping(path), schema)


def test_rates_and_prices_are_exact():
    fleet = load_fleet(SMALL)
    assert fleet.headroom == Fraction(1, 10)
    assert fleet.pools[0].cost_per_gpu_hour == Fraction(299, 100)
    # 20 req/s x 1.1 = 22 req/s = 22,000 mrps exactly; 1/3 req/s rounds up to 334 mrps
    assert carried_mrps(fleet.services[0].buckets[0], fleet.headroom) == 22_000
    bucket = fleet.services[0].buckets[0].model_copy(update={"request_rate_per_s": Fraction(1, 3)})
    assert carried_mrps(bucket, Fraction(0)) == 334


@pytest.mark.parametrize(("edit", "field"), [
    (lambda d: d["services"][0].update(pools=["nowhere"]), "services.0.pools"),
    (lambda d: d["pools"][0].pop("cost_per_gpu_hour"), "pools.0.cost_per_gpu_hour"),
    (lambda d: d["services"][0]["buckets"][0].update(request_rate_per_s=-1), "services.0.buckets.0.request_rate_per_s"),
    (lambda d: d["pools"][1].update(gpu="h300"), "pools.1.gpu"),
    (lambda d: d["services"][1].update(modle="x"), "services.1.modle"),
    (lambda d: d.update(headroom=-0.5), "headroom"),
    (lambda d: d["pools"][0].update(cost_per_gpu_hour="2.9900001"), "pools.0.cost_per_gpu_hour"),
    (lambda d: d["services"][1].update(model="Llama-9"), "services.1.model"),
])
def test_bad_fleet_names_file_and_field(tmp_path, edit, field):
    data = read_mapping(shipped_fleets()[SMALL])
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["fleet", str(path)])
    assert result.exit_code == 2, result.output
    assert str(path) in result.output and field in result.output


def test_bad_yaml_and_missing_file_exit_2(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\nname: b\n")
    result = CliRunner().invoke(main, ["fleet", str(path)])
    assert result.exit_code == 2 and "appears twice" in result.output
    result = CliRunner().invoke(main, ["fleet", str(tmp_path / "none.yaml")])
    assert result.exit_code == 2 and "no such file or shipped fleet" in result.output


def test_schema_fleet_prints_the_json_schema():
    result = CliRunner().invoke(main, ["schema", "fleet"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["title"] == "optimizer fleet file" and "pools" in schema["properties"]


# --- instance types -----------------------------------------------------------------------------------


def test_vectorised_evaluation_agrees_with_the_enumeration():
    """The types' times come from CandidateValues (as optimize does); feasible_plans + the scalar estimate
    (the enumeration oracle's path) must find the same candidates and the same request latencies."""
    fleet = load_fleet(SMALL)
    service, pool = fleet.services[1], fleet.pools[0]
    types = {(t.layout, t.batch_per_replica): t for t in _evaluate(1, service, 0, pool, "aggregated")}
    bucket = service.buckets[0]
    expected = {}
    for g in (4, 8):
        sub = service_scenario(service, pool, bucket, g, "aggregated")
        for plan, ctx, _ in feasible_plans(sub, build_tables(sub), skip=TARGET_RULES):
            est = ctx.estimate
            if est.ttft_ns <= 2 * 10**9 and est.tpot_ns <= 5 * 10**7:
                expected[(plan.layout, plan.batch_per_replica)] = est.request_latency_ns
    got = {key: t.times[0].work_ns for key, t in types.items() if t.gpus in (4, 8)}
    assert got == expected and expected


def test_pruning_drops_only_dominated_types():
    fleet = load_fleet(SMALL)
    raw = _evaluate(0, fleet.services[0], 1, fleet.pools[1], "aggregated")
    kept = prune(raw)
    assert 0 < len(kept) < len(raw)
    for t in raw:  # every dropped type is matched by k copies of a kept one: no more GPUs, no less rate
        if t in kept:
            continue
        assert any(k.gpus <= t.gpus and (t.gpus // k.gpus) * k.slots * t.times[0].work_ns >= t.slots * k.times[0].work_ns
                   for k in kept)


def test_place_packs_power_of_two_instances_and_refuses_overflow():
    pool = load_fleet(SMALL).pools[0]  # 2 nodes x 8
    assert place(pool, [4, 2, 2, 1, 1, 1, 1, 4]) is not None
    assert place(pool, [16]) == [((0, 1), tuple(range(8)))]
    assert place(pool, [2, 4])[0] == ((0,), (4, 5))  # larger first: the 4 takes GPUs 0-3
    assert place(pool, [8, 4, 4, 1]) is None


# --- the plan and its proof ---------------------------------------------------------------------------


def test_small_fleet_is_proved_and_the_oracle_agrees(small_plan):
    assert small_plan.proved_optimal and small_plan.check_holds
    assert small_plan.status == "OPTIMAL" and small_plan.objective == small_plan.best_bound
    assert small_plan.oracle == small_plan.objective
    # the mix beats (or ties) the best single kind, and the greedy rule is no better than the optimum
    best = min(v for v in small_plan.baseline.values() if v is not None)
    assert small_plan.objective <= best and small_plan.objective < 17_940_001
    assert small_plan.greedy is None or small_plan.greedy >= small_plan.objective


def test_the_check_catches_a_broken_allocation(small_plan):
    ft, alloc = small_plan.types, small_plan.allocation
    used = next(t for t, c in enumerate(alloc.counts) if c)
    fewer = Allocation(tuple(c - 1 if t == used else c for t, c in enumerate(alloc.counts)), alloc.route_rates)
    failing = [c.name for c in check_allocation(small_plan.fleet, ft, fewer) if not c.holds]
    assert any(name.startswith("load type") for name in failing)
    dropped = Allocation(alloc.counts, tuple(0 for _ in alloc.route_rates))
    failing = [c.name for c in check_allocation(small_plan.fleet, ft, dropped) if not c.holds]
    assert sum(name.startswith("coverage") for name in failing) == 2
    # a type whose times the model understated: the re-derived times break the load
    t = next(i for i, typ in enumerate(ft.types) if alloc.counts[i])
    lied = replace(ft.types[t], times=tuple(None if x is None else replace(x, work_ns=x.work_ns // 3) for x in ft.types[t].times))
    fake = replace(ft, types=[lied if i == t else typ for i, typ in enumerate(ft.types)])
    counts = list(alloc.counts)
    assert all(c.holds for c in check_allocation(small_plan.fleet, fake, Allocation(tuple(counts), alloc.route_rates)))
    counts[t] = max(1, -(-counts[t] // 3))
    if counts[t] < alloc.counts[t]:
        failing = [c.name for c in check_allocation(small_plan.fleet, fake, Allocation(tuple(counts), alloc.route_rates)) if not c.holds]
        assert failing


def test_cross_kind_disaggregation_routes_prefill_and_decode_on_different_pools():
    plan = plan_fleet(fleet_from_dict(_cross_kind()), time_limit_s=30, baselines=False)
    assert plan.proved_optimal
    ft = plan.types
    used = [(r, rate) for r, rate in zip(ft.routes, plan.allocation.route_rates) if rate]
    prefill_pools = {ft.types[r.types[0]].pool for r, _ in used if r.side == -1}
    decode_pools = {ft.types[r.types[0]].pool for r, _ in used if r.side == 1}
    # prefill (partly) on L40S, decode (partly) on H200: halves of one bucket on two GPU kinds
    # (prefill was on L40S alone until TensorRT-LLM's step fit took its own kernels, issue 13)
    assert 0 in prefill_pools and 1 in decode_pools
    names = [c.name for c in plan.checks]
    assert any(n.startswith("prefill = decode rate") for n in names)
    assert any(n.startswith("ttft with KV transfer rag-8b/rag, receive") for n in names)


def test_levels_give_the_same_optimum_as_explicit_pairs():
    """The disaggregated halves grouped by KV receive time (P x levels + D variables) against every valid
    (prefill, decode) pair as its own route: the same optimum."""
    fleet = fleet_from_dict(_cross_kind())
    ft = enumerate_types(fleet)
    halves = integers(fleet, ft)
    ttft = 2 * 10**9
    pairs = []
    for p, tp in enumerate(ft.types):
        for d, td in enumerate(ft.types):
            if tp.role == "prefill" and td.role == "decode":
                a, b = tp.times[0], td.times[0]
                if a and b and a.work_ns + max(a.kv_ns, b.kv_ns) <= ttft:
                    pairs.append((0, ((p, a.work_ns), (d, b.work_ns))))
    whole = replace(halves, routes=tuple(pairs), route_side=(), route_level=(), level_group=())
    assert solve_fleet(halves).objective == solve_fleet(whole).objective


# --- the differential test: CP-SAT against the exhaustive oracle, 2 services x 2 pools -------------------


@st.composite
def small_problems(draw):
    pool_gpus = (draw(st.sampled_from([8, 16, 32])), draw(st.sampled_from([8, 16, 32])))
    types, routes, rates = [], [], []
    for service in range(2):
        rates.append(draw(st.integers(500, 20_000)))
        for pool in range(2):
            for _ in range(draw(st.integers(1 - pool, 2))):  # every service has a type on pool 0
                gpus = draw(st.sampled_from([1, 2, 4, 8]))
                types.append((pool, gpus, draw(st.integers(1, 5)) * gpus * (3 if pool == 0 else 2), draw(st.integers(4, 64)),
                              service, draw(st.integers(1, 2))))
                routes.append((service, ((len(types) - 1, draw(st.integers(2 * 10**9, 10**10))),)))
    limits = (draw(st.sampled_from([None, 3, 8])), None)
    return FleetIntegers(pool_gpus=pool_gpus, type_pool=tuple(t[0] for t in types), type_gpus=tuple(t[1] for t in types),
                         type_weight=tuple(t[2] for t in types), type_slots=tuple(t[3] * SLOT_SCALE for t in types),
                         type_group=tuple(t[4] for t in types), type_instances=tuple(t[5] for t in types),
                         group_max=limits, bucket_rate=tuple(rates), routes=tuple(routes))


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_cp_sat_matches_the_exhaustive_oracle(problem):
    oracle = exhaustive_fleet(problem)
    if oracle == "not applicable":
        return
    found = solve_fleet(problem, time_limit_s=20)
    if oracle is None:
        assert found is None
    else:
        assert found is not None and found.solver_optimal and found.objective == oracle


# --- the CLI ------------------------------------------------------------------------------------------


def test_cli_fleet_json_contract_and_launch(tmp_path):
    out, md = tmp_path / "plan.json", tmp_path / "plan.md"
    result = CliRunner().invoke(main, ["fleet", SMALL, "--json", str(out), "--markdown", str(md), "--require-proof"])
    assert result.exit_code == 0, result.output
    assert "PROVED OPTIMAL" in result.output and "Best single pool" in result.output
    doc = json.loads(out.read_text())
    assert doc["kind"] == "fleet" and doc["evidence"]["proved_optimal"] and doc["certificate"]["holds"]
    assert set(doc["evidence"]) >= {"status", "objective", "best_bound", "proved_optimal"}
    assert set(doc["totals"]) >= {"gpus_by_pool", "cost_per_hour"}
    assert doc["baseline"]["best_single_pool_cost_per_hour"] >= doc["totals"]["cost_per_hour"]
    for service in doc["services"]:
        for inst in service["instances"]:
            assert set(inst) >= {"pool", "gpu", "count", "role", "layout", "batch", "request_rate_per_s"}
            assert set(inst["layout"]) == {"tp", "pp", "dp", "ep", "etp", "edp"}
    assert md.read_text().startswith("# Fleet chat-2x2")
    # the same input gives the same bytes
    again = tmp_path / "again.json"
    assert CliRunner().invoke(main, ["fleet", SMALL, "--json", str(again)]).exit_code == 0
    assert again.read_text() == out.read_text()
    launched = CliRunner().invoke(main, ["launch", str(out), "--engine", "vllm"])
    assert launched.exit_code == 0, launched.output
    assert launched.output.count("# === ") == sum(len(s["instances"]) for s in doc["services"])
    assert "vllm serve meta-llama/Llama-3.1-70B" in launched.output and "--tensor-parallel-size 4" in launched.output


def test_launch_without_scenario_needs_a_fleet_plan(tmp_path):
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"plan": {"tp": 1}}))
    result = CliRunner().invoke(main, ["launch", str(path)])
    assert result.exit_code == 2 and "--scenario is required" in result.output


def test_infeasible_fleet_exits_1(tmp_path):
    data = read_mapping(shipped_fleets()[SMALL])
    data["services"][1]["buckets"][0]["request_rate_per_s"] = 10_000  # far beyond 16 H100 and 16 L40S
    path = tmp_path / "big.yaml"
    path.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["fleet", str(path)])
    assert result.exit_code == 1 and "INFEASIBLE" in result.output


def test_a_bucket_no_type_can_carry_is_named(tmp_path):
    data = read_mapping(shipped_fleets()[SMALL])
    data["services"][1]["targets"]["tpot_s"] = 0.001  # 1 ms per token: no 70B instance reaches it
    path = tmp_path / "fast.yaml"
    path.write_text(json.dumps(data))
    result = CliRunner().invoke(main, ["fleet", str(path)])
    assert result.exit_code == 1 and "chat-70b/chat: no instance type" in result.output


def test_objective_gpus_needs_no_prices():
    data = read_mapping(shipped_fleets()[SMALL])
    data["objective"] = "gpus"
    for pool in data["pools"]:
        pool.pop("cost_per_gpu_hour")
    plan = plan_fleet(fleet_from_dict(data), time_limit_s=30, baselines=False)
    gpus = sum(c * t.gpus for t, c in zip(plan.types.types, plan.allocation.counts))
    assert plan.proved_optimal and plan.objective == gpus and plan.oracle == gpus


@st.composite
def mixing_problems(draw):
    """One service, two buckets, two types that may each serve both (Mélange's mixing), tiny numbers."""
    types = [(draw(st.integers(0, 1)), draw(st.sampled_from([1, 2])), draw(st.integers(1, 9)), draw(st.integers(1, 3)))
             for _ in range(2)]  # (pool, gpus, weight, slots)
    work = [[draw(st.sampled_from([None, 1, 2, 3])) for _ in range(2)] for _ in range(2)]  # [type][bucket], x 10^12 / 4
    rates = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    routes = tuple((b, ((t, work[t][b] * SLOT_SCALE // 4),)) for b in range(2) for t in range(2) if work[t][b] is not None)
    return FleetIntegers(pool_gpus=(4, 4), type_pool=tuple(t[0] for t in types), type_gpus=tuple(t[1] for t in types),
                         type_weight=tuple(t[2] for t in types), type_slots=tuple(t[3] * SLOT_SCALE for t in types),
                         type_group=(0, 0), type_instances=(1, 1), group_max=(None,), bucket_rate=rates, routes=routes)


def _brute_force(problem: FleetIntegers) -> int | None:
    """Every count vector and every integer split of both buckets over their routes."""
    best = None
    per_bucket = [[r for r, (b, _) in enumerate(problem.routes) if b == k] for k in range(2)]
    if not all(per_bucket):
        return None

    def splits(total, parts):
        if parts == 1:
            yield (total,)
            return
        for first in range(total + 1):
            for rest in splits(total - first, parts - 1):
                yield (first, *rest)

    for c0 in range(problem.pool_gpus[problem.type_pool[0]] // problem.type_gpus[0] + 1):
        for c1 in range(problem.pool_gpus[problem.type_pool[1]] // problem.type_gpus[1] + 1):
            counts = (c0, c1)
            if any(sum(c * g for c, g, p in zip(counts, problem.type_gpus, problem.type_pool) if p == k) > problem.pool_gpus[k]
                   for k in range(2)):
                continue
            cost = sum(c * w for c, w in zip(counts, problem.type_weight))
            if best is not None and cost >= best:
                continue
            for a in splits(problem.bucket_rate[0], len(per_bucket[0])):
                for b in splits(problem.bucket_rate[1], len(per_bucket[1])):
                    rate = dict(zip(per_bucket[0] + per_bucket[1], a + b))
                    load = [0, 0]
                    for r, (_, legs) in enumerate(problem.routes):
                        for t, w in legs:
                            load[t] += rate[r] * w
                    if all(load[t] <= counts[t] * problem.type_slots[t] for t in range(2)):
                        best = cost
                        break
                else:
                    continue
                break
    return best


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mixing_problems())
def test_mixing_buckets_on_one_type_matches_brute_force(problem):
    expected = _brute_force(problem)
    found = solve_fleet(problem, time_limit_s=20)
    assert (found is None) == (expected is None)
    if found is not None:
        assert found.solver_optimal and found.objective == expected
