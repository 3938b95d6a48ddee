"""Serving search (issue 4, first part): throughput per GPU with the batch as a decision, --top K
alternatives, and the Pareto front."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner

from optimizer.cli import main
from optimizer.search.exhaustive import optimize_exhaustive, top_plans
from optimizer.inputs.loader import scenario_from_dict, shipped_scenarios
from optimizer.model.parallel import batch_ladder
from optimizer.search.pareto import pareto_points
from optimizer.search.result import build_tables
from optimizer.search.solve import optimize
from optimizer.search.verify import certify

BASE = {
    "name": "tput",
    "cluster": {"gpu": "h100-sxm", "num_nodes": 1},
    "model": "Qwen3-30B-A3B",
    "workload": {"concurrent_sequences": 64, "input_tokens": 1024, "output_tokens": 256},
    "engine": {"name": "vllm", "enable_expert_parallel": True},
    "search": {"objective": "output_tokens_per_s_per_gpu"},
}


def scenario(**updates):
    data = json.loads(json.dumps(BASE))
    for section, values in updates.items():
        data[section] = {**data.get(section, {}), **values}
    return scenario_from_dict(data)


def test_batch_ladder():
    assert batch_ladder(256) == (1, 2, 4, 8, 16, 32, 64, 128, 256)
    assert batch_ladder(6) == (1, 2, 4, 6)
    assert batch_ladder(1) == (1,)


def test_the_grid_has_every_layout_once_per_batch():
    s = scenario(engine={"max_num_seqs": 16})
    tables = build_tables(s)
    assert len(tables.layouts) == len(set(tables.layouts)) * 5
    assert sorted(set(tables.cost.batch)) == [1, 2, 4, 8, 16]
    assert tables.index(tables.layouts[7], tables.cost.batch[7]) == 7


def test_throughput_per_gpu_picks_the_largest_batch_the_targets_allow():
    free = optimize(scenario())
    assert free.plan.batch_per_replica == 256 and free.evidence.proved_optimal  # nothing binds: the engine's cap
    tight = optimize(scenario(targets={"tpot_s": 0.02}))
    assert tight.plan.batch_per_replica < 256
    est = certify(tight.scenario, tight.plan, tight.tables).estimate
    assert est.tpot_ns <= 20_000_000
    # one rung up the ladder breaks the TPOT target on the same layout (the choice is the boundary)
    bigger = tight.plan.batch_per_replica * 2
    tables = build_tables(tight.scenario, (tight.plan.layout,), (bigger,))
    over = certify(tight.scenario, type(tight.plan)(layout=tight.plan.layout, layers_per_stage=tight.plan.layers_per_stage,
                                                    batch_per_replica=bigger), tables)
    assert any(c.name == "tpot_target" for c in over.failing)


def test_throughput_per_gpu_agrees_with_enumeration_and_the_kv_cache_bounds_the_batch():
    """40 GB per GPU: 256 sequences of 1,280 tokens (96 KiB of KV cache each per token) do not fit next
    to the weights, so the optimum is the largest batch whose KV cache fits, and one rung up breaks
    memory_cap."""
    s = scenario(cluster={"gpu": {"name": "h100-40", "memory_bytes": 40 * 10**9, "hbm_bytes_per_s": 3350000000000,
                                  "dense_tflops": {"bf16": 989}},
                          "gpus_per_node": 8, "intra_node_link": {"bandwidth_bytes_per_s": 450000000000, "latency_us": 3},
                          "inter_node_link": {"bandwidth_bytes_per_s": 50000000000, "latency_us": 6}})
    cp, ex = optimize(s), optimize_exhaustive(s)
    assert cp.plan == ex.plan and cp.evidence.objective == ex.evidence.objective
    assert certify(s, cp.plan, cp.tables).holds
    assert cp.plan.batch_per_replica < 256
    up = type(cp.plan)(layout=cp.plan.layout, layers_per_stage=cp.plan.layers_per_stage, batch_per_replica=2 * cp.plan.batch_per_replica)
    assert any(c.name.startswith("memory_cap") for c in certify(s, up).failing)


def test_the_throughput_target_counts_the_sequences_in_flight():
    """With a chosen batch the bound uses DP x batch, not the workload's concurrent_sequences."""
    s = scenario(targets={"output_tokens_per_s": 1000})
    plan = optimize(s).plan
    [check] = [c for c in certify(s, plan).checks if c.name == "throughput_target"]
    sequences = plan.layout.dp * plan.batch_per_replica
    assert check.rhs == sequences * 256 * 10**9 // 1000 and check.holds
    assert sequences != s.workload.concurrent_sequences


def test_top_k_lists_distinct_layouts_best_first(tmp_path):
    out = tmp_path / "p.json"
    result = CliRunner().invoke(main, ["--scenario", "qwen3-235b-a22b-16xh100", "--top", "4", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "Top 4 plans on distinct layouts" in result.output
    doc = json.loads(out.read_text())
    alternatives = doc["alternatives"]
    assert [a["rank"] for a in alternatives] == [1, 2, 3, 4]
    assert alternatives[0]["objective"] == doc["evidence"]["objective"] and alternatives[0]["gap"] == 0
    assert all(a["gap"] <= b["gap"] for a, b in zip(alternatives, alternatives[1:]))
    layouts = {(a["tp"], a["pp"], a["dp"], a["ep"], a["etp"]) for a in alternatives}
    assert len(layouts) == 4
    # the second is the runner-up the review report names
    solution = optimize(scenario_from_dict(doc["scenario"]))
    second = top_plans(solution, 2)[1][1]
    assert (alternatives[1]["tp"], alternatives[1]["pp"], alternatives[1]["dp"]) == (second.layout.tp, second.layout.pp, second.layout.dp)
    # without --top the document has no alternatives (the default JSON is unchanged)
    plain = CliRunner().invoke(main, ["--scenario", "qwen3-235b-a22b-16xh100", "--json", "-"])
    assert "alternatives" not in json.loads(plain.output)


def test_pareto_front_is_non_dominated_and_contains_the_best_throughput(tmp_path):
    s = scenario(targets={"tpot_s": 0.05})
    points = pareto_points(s)
    front = [p for p in points if p.pareto]
    for p in front:  # no point beats a front point on both axes
        assert not any(q.tokens_per_s_per_user >= p.tokens_per_s_per_user and q.tokens_per_s_per_gpu >= p.tokens_per_s_per_gpu
                       and (q.tokens_per_s_per_user, q.tokens_per_s_per_gpu) != (p.tokens_per_s_per_user, p.tokens_per_s_per_gpu)
                       for q in points)
    for p in points:  # every other point is beaten by some front point
        if not p.pareto:
            assert any(q.tokens_per_s_per_user >= p.tokens_per_s_per_user and q.tokens_per_s_per_gpu >= p.tokens_per_s_per_gpu
                       for q in front)
    [chosen] = [p for p in points if p.chosen]
    # the objective is throughput per GPU within TPOT 50 ms: the chosen point is the best such point
    eligible = [p for p in points if p.meets_targets]
    assert chosen.tokens_per_s_per_gpu == max(p.tokens_per_s_per_gpu for p in eligible)


@pytest.mark.parametrize("name", sorted(shipped_scenarios()))
def test_pareto_png_and_csv_for_every_shipped_scenario(name, tmp_path):
    result = CliRunner().invoke(main, ["pareto", "--scenario", name, "--out", str(tmp_path)])
    if name == "llama-3.1-405b-4xh100":  # 810 GB of weights on 4 x 80 GB: no layout fits at any batch
        assert result.exit_code == 1 and "no feasible layout at all" in result.output
        assert not list(tmp_path.iterdir())
        return
    assert result.exit_code == 0, result.output
    png, table = tmp_path / f"{name}-pareto.png", tmp_path / f"{name}-pareto.csv"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    rows = list(csv.DictReader(table.open()))
    assert rows and any(r["pareto"] == "yes" for r in rows)
    feasible = "no plan meets" not in result.output
    assert sum(r["chosen"] == "yes" for r in rows) == (1 if feasible else 0)


def test_launch_cli_prints_both_engines_and_refuses_what_an_engine_cannot_run(tmp_path):
    ok = CliRunner().invoke(main, ["launch", "--scenario", "llama-3.1-70b-8xh100", "--engine", "vllm", "--engine", "sglang"])
    assert ok.exit_code == 0, ok.output
    assert "vllm serve meta-llama/Llama-3.1-70B --tensor-parallel-size 4" in ok.output
    assert "python3 -m sglang.launch_server --model-path meta-llama/Llama-3.1-70B --tp-size 4" in ok.output
    plan = tmp_path / "p.json"
    assert CliRunner().invoke(main, ["--scenario", "16gpu-30b", "--json", str(plan)]).exit_code == 0
    doc = json.loads(plan.read_text())  # by hand: EP 8 x ETP 2, a Megatron folding vLLM cannot express
    for k in ("instances", "dp_per_instance"):
        doc["plan"].pop(k, None)
    doc["plan"].update({"tp": 1, "pp": 1, "dp": 16, "ep": 8, "etp": 2, "edp": 1})
    plan.write_text(json.dumps(doc))
    refused = CliRunner().invoke(main, ["launch", str(plan), "--scenario", "16gpu-30b", "--engine", "vllm"])
    assert refused.exit_code == 1 and "vllm:" in refused.output and "Expressible with" in refused.output
    sglang = CliRunner().invoke(main, ["launch", str(plan), "--scenario", "16gpu-30b", "--engine", "sglang",
                                       "--node-address", "10.0.0.1", "--node-address", "10.0.0.2"])
    assert sglang.exit_code == 0 and "--dist-init-addr 10.0.0.1:" in sglang.output and "--node-rank 1" in sglang.output
