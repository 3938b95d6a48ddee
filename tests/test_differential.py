"""Differential tests on random small scenarios:

1. CP-SAT (``optimize``) and the enumeration oracle (``optimize_exhaustive``) agree: both infeasible, or
   the same objective and the same plan; CP-SAT's plan passes its certificate and is proved optimal.
2. ``best_split`` finds the smallest slowest decode stage over every composition of the layers into PP
   stages that fits in memory (dense layers first), by brute force.

CI runs 200 examples of the first; ``OPTIMIZER_DIFF_EXAMPLES=2000`` runs a deeper check offline.
"""

from __future__ import annotations

import os
from itertools import combinations

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from conftest import BASE, deep_merge
from optimizer.search.candidates import NONE, CandidateValues, Variant
from optimizer.search.certify import check_optimality
from optimizer.model.cost import stage_ns
from optimizer.model.engines import memory_limits
from optimizer.errors import Infeasible
from optimizer.search.exhaustive import optimize_exhaustive
from optimizer.inputs.loader import scenario_from_dict
from optimizer.model.memory import layer_kinds, stage_memory
from optimizer.model.parallel import Layout, divisors
from optimizer.search.result import build_tables
from optimizer.search.rules import MemoryCap
from optimizer.search.solve import optimize
from optimizer.search.split import best_split, leading_dense_layers
from optimizer.search.verify import certify

GPU_COUNTS = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 16, 27, 30]  # primes, odd (27) and composite (30) counts
LARGE_GPU_COUNTS = [720]  # highly composite: hundreds of layouts (dense), drawn in 1 of 25 examples
MEMORY_FACTORS = [0.25, 0.5, 0.75, 1.1, 1000, 1000]  # x the one-GPU footprint: tight to ample


@st.composite
def models(draw, max_layers=12):
    heads = draw(st.integers(1, 16))
    layers = draw(st.integers(1, max_layers))
    model = {
        "name": "random",
        "num_hidden_layers": layers,
        "hidden_size": draw(st.sampled_from([64, 128, 256])),
        "intermediate_size": draw(st.sampled_from([96, 128, 192, 250, 256, 384])),
        "num_attention_heads": heads,
        "num_key_value_heads": draw(st.sampled_from(divisors(heads))),
        "head_dim": draw(st.sampled_from([16, 32, 64])),
        "vocab_size": draw(st.sampled_from([128, 1000, 5000])),
        "tie_word_embeddings": draw(st.booleans()),
        "attention_bias": draw(st.booleans()),
    }
    if draw(st.integers(0, 9)) == 0:  # MLA now and then
        model.update(kv_lora_rank=32, qk_rope_head_dim=16, qk_nope_head_dim=32, v_head_dim=32,
                     q_lora_rank=draw(st.sampled_from([None, 64])))
    experts = draw(st.sampled_from([0, 0, 0]) | st.integers(1, 16))
    if experts:
        model.update(num_experts=experts, num_experts_per_tok=draw(st.integers(1, experts)))
        if draw(st.integers(0, 4)) == 0:  # Mixtral-style: intermediate_size is the expert width, no dense FFN
            return model
        model.update(
            moe_intermediate_size=draw(st.sampled_from([64, 96, 128, 192, 250, 256])),
            n_shared_experts=draw(st.sampled_from([0, 0, 1])),
            shared_expert_intermediate_size=draw(st.sampled_from([0, 0, 100])),
            first_k_dense_replace=draw(st.integers(0, min(2, layers))),
        )
    return model


@st.composite
def scenarios(draw, max_layers=12, large=False, memory_factors=MEMORY_FACTORS, targets=True, balance=False,
              one_head=False):
    """A random valid scenario; with ``balance``, one or both balance targets set (test_balance.py); with
    ``one_head``, one attention head (TP 1), so that tight memory is met by pipeline stages."""
    large_now = large and draw(st.integers(0, 24)) == 0
    n = draw(st.sampled_from(LARGE_GPU_COUNTS if large_now else GPU_COUNTS))
    event(f"{n} GPUs" if n in (1, 27, 30, 720) else "other GPU counts")
    model = draw(models(max_layers))
    if one_head:
        model.update(num_attention_heads=1, num_key_value_heads=1)
    if n in LARGE_GPU_COUNTS:  # a dense model there: a MoE grid of 720 GPUs is 24,500 layouts (test_core covers it)
        model = {k: v for k, v in model.items() if k not in ("num_experts", "num_experts_per_tok", "moe_intermediate_size",
                                                             "n_shared_experts", "shared_expert_intermediate_size",
                                                             "first_k_dense_replace")}
    workload = {
        "concurrent_sequences": draw(st.integers(1, 64)),
        "input_tokens": draw(st.sampled_from([16, 128, 1024])),
        "output_tokens": draw(st.sampled_from([0, 1, 16, 256])),
        "weight_dtype": draw(st.sampled_from(["bf16", "bf16", "fp8", "fp8-block", "int4"])),
        "expert_weight_dtype": draw(st.sampled_from([None, None, "fp8-block", "mxfp4"])),
        "kv_cache_dtype": draw(st.sampled_from(["bf16", "fp8"])),
    }
    engine = draw(st.sampled_from([{"name": "megatron"}, {"name": "vllm", "enable_expert_parallel": True},
                                   {"name": "vllm", "enable_expert_parallel": False}, {"name": "sglang"},
                                   {"name": "tensorrt-llm"}]))
    engine.update(reserve_bytes=draw(st.sampled_from([0, 1 << 20])), cuda_graph_bytes=0, comm_buffer_bytes=0,
                  max_num_seqs=draw(st.sampled_from([1, 6, 16])),  # the chosen-batch ladder: 1 / 1,2,4,6 / 1..16
                  max_num_batched_tokens=draw(st.sampled_from([256, 8192])),
                  ttft_model=draw(st.sampled_from([None, None, "isolated", "loaded"])),  # issue 13 item 4
                  chunked_prefill=draw(st.sampled_from([None, None, True, False])))
    # issue 16 item 5: speculative decoding (draft memory on the last stage, per-token decode terms) and
    # prefix caching (fewer prefill tokens), now and then
    engine["speculative"] = draw(st.sampled_from([None, None, None, None,
                                                  {"method": "eagle", "num_speculative_tokens": 2, "acceptance_rate": "0.6"},
                                                  {"method": "mtp", "num_speculative_tokens": 1, "acceptance_rate": "0.8", "draft_layers": 1},
                                                  {"method": "ngram", "num_speculative_tokens": 3, "acceptance_rate": "1/3"},
                                                  {"method": "draft_model", "num_speculative_tokens": 2, "acceptance_rate": "0.7",
                                                   "draft_config": {"name": "draft", "num_hidden_layers": 1, "hidden_size": 64,
                                                                    "intermediate_size": 128, "num_attention_heads": 2,
                                                                    "num_key_value_heads": 1, "head_dim": 16, "vocab_size": 128}}]))
    workload["prefix_cache_hit_rate"] = draw(st.sampled_from([0, 0, 0, "0.5", "0.9"]))
    data = deep_merge(BASE, {
        "cluster": {
            "gpu": {"memory_bytes": 1 << 50},  # replaced below
            "num_nodes": 1,
            "gpus_per_node": 1,
            "allow_tp_across_nodes": draw(st.booleans()),
        },
        "workload": workload,
        "engine": engine,
        "targets": {
            "ttft_s": draw(st.sampled_from([None, None, 5e-5, 3e-4, 3e-3])),
            "tpot_s": draw(st.sampled_from([None, None, 5e-5, 3e-4, 3e-3])),
            "output_tokens_per_s": draw(st.sampled_from([None, None, None, 1e3, 1e4])),
        } if targets else {},
        "search": {
            "objective": draw(st.sampled_from(["request_latency", "ttft", "tpot", "output_tokens_per_s",
                                               "output_tokens_per_s_per_gpu"])),
            "gpu_memory_utilization": draw(st.sampled_from([0.5, 0.9, 1])),
            "allow_uneven_layers": draw(st.booleans()),
        },
    })
    data["model"] = model  # replace, not merge: BASE's MoE fields must not leak into a dense draw
    if balance:
        pcts = st.sampled_from([None, 0, 1, 5, "12.5", 25, 40, 60, 100])
        data["targets"].update(max_compute_imbalance_pct=draw(pcts), max_memory_imbalance_pct=draw(pcts))
    per_node = draw(st.sampled_from(divisors(n)))
    data["cluster"].update(num_nodes=n // per_node, gpus_per_node=per_node)
    # Memory as a share of what the whole model and its KV cache take on one GPU, so that the cap binds
    # in some draws (forcing TP, PP or EP) and not in others.
    scenario = scenario_from_dict(data)
    single = Layout(tp=1, pp=1, dp=1, ep=1, etp=1, edp=1)
    [whole] = stage_memory(scenario=scenario, layout=single, layers_per_stage=(model["num_hidden_layers"],),
                           batch=workload["concurrent_sequences"])
    data["cluster"]["gpu"]["memory_bytes"] = max(1, int(whole.total_bytes * draw(st.sampled_from(memory_factors))))
    return scenario_from_dict(data)


def solve_both(scenario):
    results = []
    for solve in (optimize, optimize_exhaustive):
        try:
            results.append(solve(scenario))
        except Infeasible:
            results.append(None)
    return results


@settings(max_examples=int(os.environ.get("OPTIMIZER_DIFF_EXAMPLES", "200")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(large=True))
def test_cp_sat_matches_exhaustive(scenario):
    cp, ex = solve_both(scenario)
    event(f"objective {scenario.search.objective.value}")
    assert (cp is None) == (ex is None), (cp and cp.plan, ex and ex.plan)
    if cp is None:
        event("infeasible")
        return
    event(f"feasible, PP = {cp.plan.layout.pp}" if cp.plan.layout.pp < 3 else "feasible, PP >= 3")
    assert cp.evidence.objective == ex.evidence.objective
    assert cp.plan == ex.plan
    assert cp.evidence.proved_optimal and cp.evidence.solver_fault is None
    assert cp.evidence.certificate_check.startswith("checked without CP-SAT")
    assert check_optimality(scenario, cp.plan, cp.evidence.certificate).holds  # again, on fresh tables
    event(f"{len(cp.evidence.certificate['witness_slowest_stage_ns'])} witnesses" if cp.evidence.certificate["witness_slowest_stage_ns"]
          else "no witness needed")
    cert = certify(scenario, cp.plan, cp.tables)
    assert cert.holds, [(c.name, c.lhs, c.op, c.rhs) for c in cert.failing]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(memory_factors=[0.6, 0.8, 0.95], targets=False, one_head=True))
def test_cp_sat_matches_exhaustive_where_pipelines_win(scenario):
    """The same agreement where plans pipeline: one attention head keeps TP at 1 and memory of 0.6-0.95 of
    the one-GPU footprint often calls for stages (about a quarter of the draws pipeline), so the micro-batch
    cycle (``CostTable.decode_cycle_ns``: every stage's step overhead and a hop per micro-batch) decides the
    objective (the review of issue 13 found the general draw lands on PP > 1 in about 2% of feasible ones)."""
    cp, ex = solve_both(scenario)
    assert (cp is None) == (ex is None), (cp and cp.plan, ex and ex.plan)
    if cp is None:
        event("infeasible")
        return
    event(f"feasible, PP = {min(cp.plan.layout.pp, 4)}{'+' if cp.plan.layout.pp >= 4 else ''}, "
          f"{'several' if cp.tables.cost.microbatches[cp.tables.index(cp.plan.layout, cp.plan.batch_per_replica)] > 1 else 'one'} micro-batch(es)")
    assert cp.evidence.objective == ex.evidence.objective and cp.plan == ex.plan
    assert cp.evidence.proved_optimal and cp.evidence.solver_fault is None
    assert check_optimality(scenario, cp.plan, cp.evidence.certificate).holds


def compositions(total, parts):
    """Every way to write ``total`` as an ordered sum of ``parts`` positive integers."""
    for cuts in combinations(range(1, total), parts - 1):
        bounds = (0, *cuts, total)
        yield tuple(b - a for a, b in zip(bounds, bounds[1:]))


def brute_force_split(scenario, tables, c, *, memory=True):
    """The smallest slowest decode stage over every admissible composition (within memory unless
    ``memory`` is false); None if none fits."""
    layout, cap = tables.layouts[c], MemoryCap.cap_bytes(scenario)
    total, k = scenario.model.num_hidden_layers, leading_dense_layers(scenario)
    best = None
    for split in compositions(total, layout.pp):
        if layout.pp > 1 and split[0] < k:  # search space: every dense layer in the first stage
            continue
        if not scenario.search.allow_uneven_layers and len(set(split)) > 1:
            continue
        if memory and not fits(scenario, tables, c, split, cap):
            continue
        slowest = slowest_stage(scenario, tables, c, split)
        best = slowest if best is None else min(best, slowest)
    return best


def fits(scenario, tables, c, split, cap):
    """Every stage within every memory limit of the engine, from the stages' own bytes (not the tables);
    and under the whole-footprint cap, which the limits imply."""
    memory = stage_memory(scenario=scenario, layout=tables.layouts[c], layers_per_stage=split, batch=tables.cost.batch[c])
    within = all(stage.charge(limit) <= limit.cap for stage in memory for limit in memory_limits(scenario))
    assert not within or all(stage.total_bytes <= cap for stage in memory)
    return within


def slowest_stage(scenario, tables, c, split):
    return max(stage_ns(tables.cost.decode, c, layer_kinds(model=scenario.model, layers_per_stage=split)))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(max_layers=8))
def test_best_split_is_the_brute_force_optimum(scenario):
    tables = build_tables(scenario)
    cap, k = MemoryCap.cap_bytes(scenario), leading_dense_layers(scenario)
    for c, layout in enumerate(tables.layouts):
        expected = brute_force_split(scenario, tables, c)
        split = best_split(scenario=scenario, table=tables.cost, memory=tables.memory, c=c)
        if expected is None:
            assert split is None, (layout, split)
            event("a layout with no split")
            continue
        if layout.pp > 1:
            event("a layout with PP > 1 and a split")
        assert split is not None, (layout, expected)
        assert len(split) == layout.pp and sum(split) == scenario.model.num_hidden_layers and min(split) >= 1
        assert layout.pp == 1 or split[0] >= k
        assert scenario.search.allow_uneven_layers or len(set(split)) == 1
        assert fits(scenario, tables, c, split, cap), (layout, split)
        assert slowest_stage(scenario, tables, c, split) == expected, (layout, split)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(max_layers=8))
def test_grid_wide_slowest_stage_is_the_brute_force_optimum(scenario):
    """``candidates.CandidateValues`` (closed-form caps, bisection on the stage time, all candidates at once)
    against every composition, with and without the memory cap."""
    tables = build_tables(scenario)
    values = CandidateValues(scenario, tables)
    even = not scenario.search.allow_uneven_layers
    for memory in (True, False):
        slowest = values.min_slowest_ns(Variant(memory=memory, even=even))
        for c, layout in enumerate(tables.layouts):
            expected = brute_force_split(scenario, tables, c, memory=memory)
            assert (None if int(slowest[c]) == NONE else int(slowest[c])) == expected, (layout, memory)
            event("memory binds" if memory and expected is None and brute_force_split(scenario, tables, c, memory=False) else "-")
