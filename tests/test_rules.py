"""Every rule ``build_rules`` can produce, from both sides:

- certificate: one plan where the rule holds and one where it alone fails (every other check holds);
- solver: a scenario where the rule is why no plan exists, so ``optimize`` raises ``Infeasible`` naming it.

Most rules are satisfied by the trivial sharding (TP = EP = ETP = 1, PP = 1), which every grid contains, so
they can only block the solver together with a rule that forces sharding. Those tests force it with the
memory cap and assert the exact minimal set CP-SAT reports; each says why the rule cannot block alone.
"""

from __future__ import annotations

from fractions import Fraction

import pytest

from conftest import DENSE, make_scenario
from optimizer.errors import Infeasible
from optimizer.search.exhaustive import optimize_exhaustive
from optimizer.inputs.loader import load_scenario
from optimizer.model.parallel import layout_grid
from optimizer.search.rules import GpuProduct, MoeProduct, build_rules
from optimizer.search.solve import optimize
from optimizer.search.verify import certify, plan_from_mapping


def cert_of(scenario, mapping):
    """The certificate of a plan written as sizes. Plans here that give EP without ETP mean ETP = 1 (the
    reader's own default for Megatron is ETP = TP, tested in test_trust.py)."""
    if "ep" in mapping and scenario.model.is_moe and scenario.engine.name.value == "megatron":
        mapping = {"etp": 1, **mapping}
    return certify(scenario, plan_from_mapping(mapping, scenario))


def named(cert, name):
    [check] = [c for c in cert.checks if c.name == name]
    return check


def failing(cert):
    return [c.name for c in cert.failing]


def rule_names(scenario):
    return {r.name for r in build_rules(scenario)}


# A plan of BASE (8 GPUs, 2 nodes x 4) that passes every rule.
GOOD = {"tp": 2, "pp": 2, "dp": 2, "ep": 4, "etp": 1}
VLLM_EP = {"engine": {"name": "vllm", "enable_expert_parallel": True}}
VLLM_NO_EP = {"engine": {"name": "vllm", "enable_expert_parallel": False}}
SGLANG = {"engine": {"name": "sglang"}}
TRTLLM = {"engine": {"name": "tensorrt-llm"}}
# 12 heads and 6 experts: sizes of 3 and 6 divide the model on 3 nodes x 4 GPUs.
SIX_EXPERTS = {"num_attention_heads": 12, "num_key_value_heads": 12, "intermediate_size": 384, "n_shared_experts": 0,
               "num_experts": 6}


def test_kv_heads_replicate_over_tp_except_under_megatron():
    """vLLM, SGLang and TensorRT-LLM replicate 2 KV heads over TP = 4; Megatron-Core does not (issue 13 item 8)."""
    layout = {"tp": 4, "pp": 1, "dp": 2, "ep": 8, "etp": 1, "edp": 1}
    model = {"model": {"num_attention_heads": 8, "num_key_value_heads": 2}}
    assert named(cert_of(make_scenario(**model, **VLLM_EP), layout), "kv_heads_divisible").holds
    assert not named(cert_of(make_scenario(**model), layout), "kv_heads_divisible").holds


def test_base_plan_passes_every_rule():
    s = make_scenario()
    cert = cert_of(s, GOOD)
    assert cert.holds, failing(cert)


def test_headline_16gpu_30b_fails_gpu_product():
    s = load_scenario("16gpu-30b")
    cert = cert_of(s, {"tp": 4, "pp": 4, "dp": 2, "ep": 16})
    check = named(cert, "gpu_product")
    assert (check.lhs, check.op, check.rhs, check.holds) == (32, "==", 16, False)
    # Not alone: with PP = 4 and EP = 16, ETP x EP x EDP x PP >= 64 > 16 whatever ETP and EDP are.
    structural = [name for name in failing(cert) if not name.endswith("_target")]  # targets depend on the estimate
    assert structural == ["gpu_product", "moe_product"]
    assert named(cert, "moe_product").lhs == 64


# --- certificate side: layout rules ----------------------------------------------------------------
# (rule / check name, scenario overrides, plan where it holds, plan where it alone fails, failing lhs, rhs)
LAYOUT_CASES = [
    ("gpu_product", {}, GOOD, {"tp": 2, "pp": 1, "dp": 2, "ep": 8, "etp": 1, "edp": 1}, 4, 8),
    ("moe_product", {}, GOOD, {"tp": 2, "pp": 1, "dp": 4, "ep": 2, "etp": 1, "edp": 1}, 2, 8),
    # (vLLM: under Megatron-Core TP must divide the KV heads, which divide the heads, so this cannot fail alone)
    ("attention_heads_divisible", {"model": {"num_attention_heads": 6, "num_key_value_heads": 2}, **VLLM_EP},
     {"tp": 2, "pp": 1, "dp": 4, "ep": 8, "etp": 1, "edp": 1}, {"tp": 4, "pp": 1, "dp": 2, "ep": 8, "etp": 1, "edp": 1}, 2, 0),
    # Megatron-Core divides num_query_groups by TP (attention.py): 2 KV heads over TP = 4 is refused ...
    ("kv_heads_divisible", {"model": {"num_attention_heads": 8, "num_key_value_heads": 2}},
     {"tp": 2, "pp": 1, "dp": 4, "ep": 8}, {"tp": 4, "pp": 1, "dp": 2, "ep": 8}, 2, 0),
    ("kv_heads_divisible", {"model": {"num_attention_heads": 12, "num_key_value_heads": 3}},
     {"tp": 1, "pp": 1, "dp": 8, "ep": 8}, {"tp": 2, "pp": 1, "dp": 4, "ep": 8}, 1, 0),
    ("dense_ffn_divisible", {"model": {"intermediate_size": 510}},
     {"tp": 2, "pp": 1, "dp": 4, "ep": 8}, {"tp": 4, "pp": 1, "dp": 2, "ep": 8}, 2, 0),
    ("experts_divisible", {"model": {"num_experts": 6}},
     {"tp": 1, "pp": 1, "dp": 8, "ep": 2, "etp": 1, "edp": 4}, {"tp": 1, "pp": 1, "dp": 8, "ep": 4, "etp": 1, "edp": 2}, 2, 0),
    ("moe_ffn_divisible", {"model": {"moe_intermediate_size": 250}},
     {"tp": 2, "pp": 1, "dp": 4, "ep": 4, "etp": 2, "edp": 1}, {"tp": 2, "pp": 1, "dp": 4, "ep": 2, "etp": 4, "edp": 1}, 2, 0),
    ("shared_ffn_divisible", {"model": {"n_shared_experts": 0, "shared_expert_intermediate_size": 250}},
     {"tp": 2, "pp": 1, "dp": 4, "ep": 8}, {"tp": 4, "pp": 1, "dp": 2, "ep": 8}, 2, 0),
    # fp8-block experts: 256 / ETP must stay a multiple of 128 (ETP = 4 leaves 64 per rank).
    ("moe_ffn_block_aligned", {"workload": {"expert_weight_dtype": "fp8-block"}},
     {"tp": 1, "pp": 1, "dp": 8, "ep": 4, "etp": 2, "edp": 1}, {"tp": 1, "pp": 1, "dp": 8, "ep": 2, "etp": 4, "edp": 1}, 64, 0),
    ("dense_ffn_block_aligned", {"workload": {"weight_dtype": "fp8-block"}, "model": {"intermediate_size": 256}},
     {"tp": 2, "pp": 1, "dp": 4, "ep": 8, "etp": 1, "edp": 1}, {"tp": 4, "pp": 1, "dp": 2, "ep": 8, "etp": 1, "edp": 1}, 64, 0),
    # vLLM with --enable-expert-parallel: ETP == 1 (lhs ETP, rhs 1), then EP % TP == 0.
    ("engine_folding", VLLM_EP,
     {"tp": 2, "pp": 1, "dp": 4, "ep": 8, "etp": 1, "edp": 1}, {"tp": 2, "pp": 1, "dp": 4, "ep": 4, "etp": 2, "edp": 1}, 2, 1),
    ("engine_folding", VLLM_EP,
     {"tp": 2, "pp": 1, "dp": 4, "ep": 8, "etp": 1, "edp": 1}, {"tp": 4, "pp": 1, "dp": 2, "ep": 2, "etp": 1, "edp": 4}, 2, 0),
    # vLLM without it: EP == 1 (lhs EP, rhs 1), then ETP % TP == 0.
    ("engine_folding", VLLM_NO_EP,
     {"tp": 2, "pp": 1, "dp": 4, "ep": 1, "etp": 8, "edp": 1}, {"tp": 2, "pp": 1, "dp": 4, "ep": 2, "etp": 4, "edp": 1}, 2, 1),
    ("engine_folding", VLLM_NO_EP,
     {"tp": 2, "pp": 1, "dp": 4, "ep": 1, "etp": 8, "edp": 1}, {"tp": 2, "pp": 1, "dp": 4, "ep": 1, "etp": 1, "edp": 8}, 1, 0),
    # SGLang: an instance's experts fold into its --tp-size = TP x attention DP (ETP x EP a multiple of TP).
    ("engine_folding", SGLANG,
     {"tp": 2, "pp": 1, "dp": 4, "ep": 4, "etp": 2, "edp": 1}, {"tp": 4, "pp": 1, "dp": 2, "ep": 2, "etp": 1, "edp": 4}, 2, 0),
    # SGLang's dense FFN is tensor parallel over the whole --tp-size group: 510 / 2 is whole, 510 / 8 is not.
    ("dense_ffn_divisible", {**SGLANG, "model": {"intermediate_size": 510}},
     {"tp": 2, "pp": 1, "dp": 4, "ep": 1, "etp": 2, "edp": 4}, {"tp": 2, "pp": 1, "dp": 4, "ep": 4, "etp": 2, "edp": 1}, 6, 0),
    # TensorRT-LLM: attention DP is all (TP = 1) or nothing per instance; ETP x EP a multiple of TP.
    ("engine_folding", TRTLLM,
     {"tp": 1, "pp": 1, "dp": 8, "ep": 8, "etp": 1, "edp": 1}, {"tp": 2, "pp": 1, "dp": 4, "ep": 8, "etp": 1, "edp": 1}, 1, 0),
    ("engine_folding", TRTLLM,
     {"tp": 4, "pp": 1, "dp": 2, "ep": 4, "etp": 1, "edp": 2}, {"tp": 4, "pp": 1, "dp": 2, "ep": 2, "etp": 1, "edp": 4}, 2, 0),
    # vLLM runs whole DP ranks per node: TP 1 x PP 2 x DP 4 in one instance (EDP 1) gives each DP rank a stage on
    # each node in the rank map, so vLLM would place the ranks otherwise (issue 13 item 7); PP = 1 runs the map.
    ("engine_placement", VLLM_EP,
     {"tp": 2, "pp": 1, "dp": 4, "ep": 8, "etp": 1, "edp": 1}, {"tp": 1, "pp": 2, "dp": 4, "ep": 4, "etp": 1, "edp": 1}, 1, 0),
    # SGLang on 3 nodes x 4: one instance of PP 2 x 6 GPUs per stage spans the 3 nodes, and SGLang needs PP and
    # the node count to divide one another (_calculate_rank_ranges); 2 instances of 6 GPUs each (PP 1) give
    # a node 4 ranks of one and 2 of another. TP 4 x DP 3 in one instance (12 GPUs, whole nodes) runs.
    ("engine_placement", {**SGLANG, "cluster": {"num_nodes": 3}, "model": SIX_EXPERTS},
     {"tp": 4, "pp": 1, "dp": 3, "ep": 6, "etp": 2, "edp": 1}, {"tp": 1, "pp": 2, "dp": 6, "ep": 6, "etp": 1, "edp": 1}, 1, 0),
    ("engine_placement", {**SGLANG, "cluster": {"num_nodes": 3}, "model": SIX_EXPERTS},
     {"tp": 4, "pp": 1, "dp": 3, "ep": 6, "etp": 2, "edp": 1}, {"tp": 1, "pp": 1, "dp": 12, "ep": 6, "etp": 1, "edp": 2}, 1, 0),
    # TensorRT-LLM on 3 nodes x 4: 6 instances of PP 2 x 1 GPU; instance 2 holds GPU 2 of node 0 and GPU 0 of
    # node 1, and mpirun -x gives every node of an instance the same CUDA_VISIBLE_DEVICES.
    ("engine_placement", {**TRTLLM, "cluster": {"num_nodes": 3}, "model": SIX_EXPERTS},
     {"tp": 4, "pp": 3, "dp": 1, "ep": 2, "etp": 2, "edp": 1}, {"tp": 1, "pp": 2, "dp": 6, "ep": 1, "etp": 1, "edp": 6}, 1, 0),
    # A separate draft model runs at the target's TP: its 6 heads divide by 2, not by 4 (its 2 KV heads replicate
    # over 4); the target's 8 heads take either.
    ("draft_heads", {**VLLM_EP, "engine": {**VLLM_EP["engine"], "speculative": {
        "method": "draft_model", "num_speculative_tokens": 2, "acceptance_rate": 0.7,
        "draft_config": {"name": "draft-6h", "num_hidden_layers": 1, "hidden_size": 96, "intermediate_size": 192,
                         "num_attention_heads": 6, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 1000}}}},
     {"tp": 2, "pp": 1, "dp": 4, "ep": 8, "etp": 1, "edp": 1}, {"tp": 4, "pp": 1, "dp": 2, "ep": 8, "etp": 1, "edp": 1}, 2, 0),
    # 4 GPUs per node: TP = 8 spans two nodes.
    ("tp_within_node", {"model": {"num_key_value_heads": 8}}, {"tp": 4, "pp": 1, "dp": 2, "ep": 8}, {"tp": 8, "pp": 1, "dp": 1, "ep": 8}, 4, 0),
    # TP across nodes allowed: TP must then tile whole nodes (3 nodes x 4; TP = 6 does not).
    ("tp_within_node",
     {"cluster": {"num_nodes": 3, "allow_tp_across_nodes": True},
      "model": {"num_attention_heads": 12, "num_key_value_heads": 12, "intermediate_size": 384, "n_shared_experts": 0}},
     {"tp": 12, "pp": 1, "dp": 1, "ep": 4, "etp": 1, "edp": 3}, {"tp": 6, "pp": 1, "dp": 2, "ep": 4, "etp": 1, "edp": 3}, 2, 0),
]


@pytest.mark.parametrize(("name", "overrides", "good", "bad", "lhs", "rhs"), LAYOUT_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(LAYOUT_CASES)])
def test_layout_rule_holds_then_fails_alone(name, overrides, good, bad, lhs, rhs):
    s = make_scenario(**overrides)
    assert name in rule_names(s)
    ok = cert_of(s, good)
    assert named(ok, name).holds
    assert ok.holds, failing(ok)
    cert = cert_of(s, bad)
    check = named(cert, name)
    assert (check.lhs, check.rhs, check.holds) == (lhs, rhs, False)
    assert failing(cert) == [name]


def test_rule_set_depends_on_scenario():
    assert "engine_folding" not in rule_names(make_scenario())
    assert "engine_folding" in rule_names(make_scenario(**VLLM_EP))
    assert "engine_folding" in rule_names(make_scenario(**SGLANG)) and "engine_folding" in rule_names(make_scenario(**TRTLLM))
    assert "engine_folding" not in rule_names(make_scenario(model=DENSE, **SGLANG))  # replicas only
    assert "moe_ffn_block_aligned" not in rule_names(make_scenario())
    dense = rule_names(make_scenario(model=DENSE))
    assert not dense & {"moe_product", "experts_divisible", "moe_ffn_divisible", "shared_ffn_divisible"}
    assert "kv_heads_divisible" in dense
    assert {r.name for r in build_rules(make_scenario(targets={"ttft_s": 1}))} >= {"ttft_target"}


# --- certificate side: layer split, memory, targets, batch ------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "layers", "name", "lhs", "rhs"),
    [
        ({}, [4], "layer_split[stages]", 1, 2),  # one stage listed for PP = 2
        ({}, [2, 3], "layer_split[sum]", 5, 4),
        ({}, [0, 4], "layer_split[min]", 0, 1),
        ({"search": {"allow_uneven_layers": False}}, [1, 3], "even_layers", 3, 1),
    ],
)
def test_layer_split_fails_alone(overrides, layers, name, lhs, rhs):
    s = make_scenario(**overrides)
    ok = cert_of(s, {**GOOD, "layers_per_stage": [2, 2]})
    assert ok.holds, failing(ok)
    assert named(ok, "layer_split[sum]").lhs == 4
    cert = cert_of(s, {**GOOD, "layers_per_stage": layers})
    check = named(cert, name)
    assert (check.lhs, check.rhs, check.holds) == (lhs, rhs, False)
    assert failing(cert) == [name]


def test_layer_split_even_only_when_uneven_is_forbidden():
    assert not any(c.name == "even_layers" for c in cert_of(make_scenario(), GOOD).checks)
    even = cert_of(make_scenario(search={"allow_uneven_layers": False}), GOOD)
    assert (named(even, "even_layers").lhs, named(even, "even_layers").rhs) == (2, 2)


def test_memory_cap_holds_then_fails_alone():
    # Same plan, the GPU shrunk to one byte under the fullest stage (utilisation 1: cap == memory).
    ok = cert_of(make_scenario(), GOOD)
    assert ok.holds
    totals = [m.total_bytes for m in ok.memory]
    fullest = max(range(len(totals)), key=totals.__getitem__)
    assert totals.count(totals[fullest]) == 1  # so exactly one stage goes over
    s = make_scenario(cluster={"gpu": {"memory_bytes": totals[fullest] - 1}}, search={"gpu_memory_utilization": 1})
    exact = cert_of(make_scenario(cluster={"gpu": {"memory_bytes": totals[fullest]}}, search={"gpu_memory_utilization": 1}), GOOD)
    assert exact.holds  # the cap is inclusive
    cert = cert_of(s, GOOD)
    check = named(cert, f"memory_cap[stage={fullest}]")
    assert (check.lhs, check.rhs, check.holds) == (totals[fullest], totals[fullest] - 1, False)
    assert failing(cert) == [f"memory_cap[stage={fullest}]"]


def test_memory_cap_is_floor_of_memory_times_utilisation():
    s = make_scenario(cluster={"gpu": {"memory_bytes": 1001}}, search={"gpu_memory_utilization": 0.9})
    assert named(cert_of(s, GOOD), "memory_cap[stage=0]").rhs == 900  # floor(1001 x 9/10)


@pytest.mark.parametrize(("name", "field"), [("ttft_target", "ttft_ns"), ("tpot_target", "tpot_ns")])
def test_latency_targets_hold_at_the_bound_and_fail_one_ns_under(name, field):
    value = getattr(cert_of(make_scenario(), GOOD).estimate, field)
    target = name.removesuffix("_target") + "_s"
    ok = cert_of(make_scenario(targets={target: Fraction(value, 10**9)}), GOOD)
    assert (named(ok, name).lhs, named(ok, name).rhs) == (value, value)
    assert ok.holds
    cert = cert_of(make_scenario(targets={target: Fraction(value - 1, 10**9)}), GOOD)
    check = named(cert, name)
    assert (check.lhs, check.rhs, check.holds) == (value, value - 1, False)
    assert failing(cert) == [name]


def test_throughput_target_holds_at_the_bound_and_fails_one_ns_under():
    s = make_scenario()
    latency = cert_of(s, GOOD).estimate.request_latency_ns
    tokens = s.workload.concurrent_sequences * s.workload.output_tokens * 10**9
    ok = cert_of(make_scenario(targets={"output_tokens_per_s": Fraction(tokens, latency)}), GOOD)
    assert (named(ok, "throughput_target").lhs, named(ok, "throughput_target").rhs) == (latency, latency)
    assert ok.holds
    cert = cert_of(make_scenario(targets={"output_tokens_per_s": Fraction(tokens, latency - 1)}), GOOD)
    check = named(cert, "throughput_target")
    assert (check.lhs, check.rhs, check.holds) == (latency, latency - 1, False)
    assert failing(cert) == ["throughput_target"]


def test_batch_per_replica_holds_then_fails_alone():
    s = make_scenario()  # 8 sequences over DP = 2: 4 on the busiest replica
    assert (named(cert_of(s, GOOD), "batch_per_replica").lhs, named(cert_of(s, GOOD), "batch_per_replica").rhs) == (4, 4)
    cert = cert_of(s, {**GOOD, "batch_per_replica": 3})
    check = named(cert, "batch_per_replica")
    assert (check.lhs, check.rhs, check.holds) == (3, 4, False)
    assert failing(cert) == ["batch_per_replica"]


# --- solver side -----------------------------------------------------------------------------------


def infeasible_reasons(scenario):
    """CP-SAT's minimal rule set (names only); the exhaustive oracle must agree there is no plan."""
    with pytest.raises(Infeasible) as cp:
        optimize(scenario)
    with pytest.raises(Infeasible):
        optimize_exhaustive(scenario)
    return [name for conflict in cp.value.conflicts for name in conflict]


# Memory that forces TP > 1: a 100k-token vocabulary, tied, makes the embedding (51.2 MB in BF16) larger
# than the 45 MB cap on any TP = 1 stage, while TP >= 2 fits; no reserve, utilisation 1.
def tp_forced(model=None, cluster=None, engine=None, memory_bytes=45_000_000, **rest):
    return make_scenario(
        model={"vocab_size": 100_000, "tie_word_embeddings": True, **(model or {})},
        cluster={"gpu": {"memory_bytes": memory_bytes}, "num_nodes": 1, "gpus_per_node": 4, **(cluster or {})},
        engine={"reserve_bytes": 0, "cuda_graph_bytes": 0, "comm_buffer_bytes": 0, **(engine or {})},
        search={"gpu_memory_utilization": 1},
        **rest,
    )


def test_tp_forcing_scenario_is_feasible_with_tp_above_one():
    sol = optimize(tp_forced())
    assert sol.plan.layout.tp > 1


def test_gpu_and_moe_products_never_block_the_solver():
    # The grid holds only layouts with TP x PP x DP == ETP x EP x EDP x PP == N, so these two rules can
    # never be why no plan exists: they are checked here on the grid itself, and absent from a core.
    for n in (1, 6, 8, 12):
        for layout in layout_grid(num_gpus=n, is_moe=True):
            s = make_scenario(cluster={"num_nodes": 1, "gpus_per_node": n})
            assert GpuProduct().evaluate(s, layout).holds and MoeProduct().evaluate(s, layout).holds
    reasons = infeasible_reasons(make_scenario(cluster={"gpu": {"memory_bytes": 1000}}))
    assert "gpu_product" not in reasons and "moe_product" not in reasons


# TP = 1 satisfies each of these, so each blocks only when memory forces TP > 1: minimal set {rule, memory_cap}.
@pytest.mark.parametrize(
    ("rule", "model", "cluster"),
    [
        ("attention_heads_divisible", {**DENSE, "num_attention_heads": 3, "num_key_value_heads": 1}, None),
        ("kv_heads_divisible", {**DENSE, "num_attention_heads": 12, "num_key_value_heads": 3}, None),
        ("dense_ffn_divisible", {"intermediate_size": 511}, None),
        ("shared_ffn_divisible", {"n_shared_experts": 0, "shared_expert_intermediate_size": 255}, None),
        ("tp_within_node", DENSE, {"num_nodes": 4, "gpus_per_node": 1}),
    ],
)
def test_solver_sharding_rule_blocks_with_memory(rule, model, cluster):
    assert infeasible_reasons(tp_forced(model=model, cluster=cluster)) == [rule, "memory_cap"]


def _draft(heads: int, kv_heads: int) -> dict:
    """A one-layer draft model (``method: draft_model``) with the target's vocabulary and a small embedding."""
    return {"name": "vllm", "speculative": {"method": "draft_model", "num_speculative_tokens": 2, "acceptance_rate": 0.7,
            "draft_config": {"name": f"draft-{heads}h", "num_hidden_layers": 1, "hidden_size": 48, "intermediate_size": 96,
                             "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": 16,
                             "vocab_size": 100_000, "tie_word_embeddings": True}}}


def test_solver_draft_heads_blocks_with_memory():
    """Memory forces TP >= 2 (tp_forced); a draft with 3 heads runs at TP 1 or 3 only, so no plan exists and
    the reason names draft_heads; with 4 heads TP 2 or 4 runs it."""
    dense = {**DENSE, "num_attention_heads": 8, "num_key_value_heads": 4}
    assert infeasible_reasons(tp_forced(model=dense, engine=_draft(3, 1))) == ["draft_heads", "memory_cap"]
    scenario = tp_forced(model=dense, engine=_draft(4, 1))
    sol = optimize(scenario)
    assert sol.plan.layout.tp in (2, 4) and named(certify(scenario, sol.plan, sol.tables), "draft_heads").holds


def test_draft_heads_replicate_kv_heads_except_under_megatron_and_agree_on_the_grid():
    """The exact test (``holds``), the sentence (``evaluate``) and the search's vectorised test (``holds_grid``)
    agree on every TP; KV heads replicate over a larger TP except under Megatron-Core."""
    import numpy as np

    from optimizer.search.rules import DraftHeadsDivisible, SizeArrays

    s = make_scenario(cluster={"num_nodes": 1, "gpus_per_node": 16}, model=DENSE)
    layouts = layout_grid(num_gpus=16, is_moe=False)
    grid = SizeArrays.of(layouts)
    for rule in (DraftHeadsDivisible(heads=14, kv_heads=2), DraftHeadsDivisible(heads=16, kv_heads=2, replicate=False),
                 DraftHeadsDivisible(heads=12, kv_heads=None)):
        exact = [rule.holds(s, lay) for lay in layouts]
        assert exact == [rule.evaluate(s, lay).holds for lay in layouts] == list(np.asarray(rule.holds_grid(s, grid)))
    tps = lambda rule: sorted({lay.tp for lay in layouts if rule.holds(s, lay)})  # noqa: E731
    assert tps(DraftHeadsDivisible(heads=14, kv_heads=2)) == [1, 2]
    assert tps(DraftHeadsDivisible(heads=16, kv_heads=2)) == [1, 2, 4, 8, 16]
    assert tps(DraftHeadsDivisible(heads=16, kv_heads=2, replicate=False)) == [1, 2]
    check = DraftHeadsDivisible(heads=14, kv_heads=2).evaluate(s, next(lay for lay in layouts if lay.tp == 4))
    assert (check.lhs, check.holds) == (2, False) and "TPs the draft allows on 16 GPUs: 1, 2" in check.detail


def test_solver_moe_ffn_divisible_blocks_with_memory():
    # ETP = 1 always satisfies it, so memory must force ETP > 1. One expert of odd width 4095 on 2 GPUs:
    # TP = 1 fails on the embedding, EP cannot split a single expert, and ETP = 2 does not divide 4095.
    def one_expert(width):
        return tp_forced(model={"first_k_dense_replace": 0, "n_shared_experts": 0, "num_experts": 1,
                                "num_experts_per_tok": 1, "moe_intermediate_size": width},
                         cluster={"gpus_per_node": 2}, memory_bytes=60_000_000)

    assert infeasible_reasons(one_expert(4095)) == ["moe_ffn_divisible", "memory_cap"]
    assert optimize(one_expert(4096)).plan.layout.etp == 2


def test_vllm_spreads_experts_that_ep_does_not_divide():
    """vLLM places E experts over EP ranks with the remainder on the first ranks (fused_moe/layer.py
    determine_expert_map), so 3 experts over EP = 2 run (2 on the busiest rank); the other engines refuse.
    On 2 GPUs memory forces TP = 2 and vLLM's expert parallel then EP = 2."""
    model = {"first_k_dense_replace": 0, "n_shared_experts": 0, "num_experts": 3}
    s = tp_forced(model=model, cluster={"gpus_per_node": 2}, **VLLM_EP)
    assert "experts_divisible" not in rule_names(s)
    plan = optimize(s).plan
    assert (plan.layout.tp, plan.layout.ep) == (2, 2) and optimize_exhaustive(s).plan.layout == plan.layout
    megatron = tp_forced(model=model, cluster={"gpus_per_node": 2})
    assert "experts_divisible" in rule_names(megatron)
    assert not named(cert_of(megatron, {"tp": 2, "pp": 1, "dp": 1, "ep": 2, "etp": 1, "edp": 1}), "experts_divisible").holds


def test_solver_moe_ffn_divisible_and_folding_without_expert_parallel():
    # vLLM without expert parallel: EP = 1 and ETP a multiple of TP = 2, but 255 is odd.
    s = tp_forced(model={"first_k_dense_replace": 0, "n_shared_experts": 0, "moe_intermediate_size": 255},
                  cluster={"gpus_per_node": 2}, **VLLM_NO_EP)
    assert infeasible_reasons(s) == ["moe_ffn_divisible", "engine_folding", "memory_cap"]


@pytest.mark.parametrize(
    ("rule", "overrides"),
    [
        # 192 is no multiple of 128, so no ETP leaves a whole number of blocks per rank: blocks alone.
        ("moe_ffn_block_aligned", {"workload": {"expert_weight_dtype": "fp8-block"}, "model": {"moe_intermediate_size": 192}}),
        ("dense_ffn_block_aligned", {"workload": {"weight_dtype": "fp8-block"}, "model": {"intermediate_size": 192}}),
        ("memory_cap", {"cluster": {"gpu": {"memory_bytes": 1000}}}),
        ("ttft_target", {"targets": {"ttft_s": 1e-9}}),
        ("tpot_target", {"targets": {"tpot_s": 1e-9}}),
        ("throughput_target", {"targets": {"output_tokens_per_s": 1e12}}),
    ],
)
def test_solver_rule_blocks_alone(rule, overrides):
    assert infeasible_reasons(make_scenario(**overrides)) == [rule]


def kv_bound(layers, allow_uneven, memory_bytes=130_000_000):
    # One KV head (replicated over TP) and one sequence (DP does not help): each layer's 100k-token KV cache
    # (51.2 MB) stays on its GPU whatever TP and DP are; only PP spreads it. 3 layers do not fit in 130 MB.
    return make_scenario(
        model={**DENSE, "num_hidden_layers": layers, "num_key_value_heads": 1, "head_dim": 128},
        workload={"concurrent_sequences": 1, "input_tokens": 100_000, "output_tokens": 16},
        cluster={"gpu": {"memory_bytes": memory_bytes}, "num_nodes": 1, "gpus_per_node": 2},
        engine={"reserve_bytes": 0, "cuda_graph_bytes": 0, "comm_buffer_bytes": 0, "max_num_batched_tokens": 256},
        search={"gpu_memory_utilization": 1, "allow_uneven_layers": allow_uneven},
    )


def test_solver_layer_split_blocks_with_memory():
    # PP = 1 always has a valid split, so layer_split blocks only when memory forces PP > 1; here PP = 2
    # would need a 2 + 1 split of 3 layers, which allow_uneven_layers: false forbids.
    assert infeasible_reasons(kv_bound(3, allow_uneven=False)) == ["even_layers", "memory_cap"]
    sol = optimize(kv_bound(3, allow_uneven=True))
    assert sol.plan.layout.pp == 2 and sorted(sol.plan.layers_per_stage) == [1, 2]


def test_batch_per_replica_is_a_certificate_check_not_a_solver_rule():
    # The solver takes the batch from the cost table, so it can never be why no plan exists.
    s = make_scenario()
    assert "batch_per_replica" not in rule_names(s)
    plan = optimize(s).plan
    assert plan.batch_per_replica == -(-s.workload.concurrent_sequences // plan.layout.dp)
