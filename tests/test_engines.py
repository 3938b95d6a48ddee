"""Engine profiles (optimizer/model/engines.py): what vLLM, SGLang, TensorRT-LLM and Megatron-Core make of a
layout beyond the folding rules (test_rules.py): the memory fraction's meaning, the dense FFN's width under
SGLang's attention DP, instances, hand-written plans in each engine's own terms, and the shipped scenarios."""

from __future__ import annotations

import json
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_scenario
from optimizer.model.calibration import shipped_calibration
from optimizer.cli import main
from optimizer.model.cost import grid, layer_works
from optimizer.model.engines import ffn_tp, instances, memory_limits, usable_bytes, weights_and_kv_room_bytes
from optimizer.errors import PlanError
from optimizer.outputs.launch import sglang_commands
from optimizer.inputs.loader import load_scenario, scenario_from_dict
from optimizer.model.memory import StageMemory, ffn_weight_bytes, stage_memory
from optimizer.model.parallel import Layout
from optimizer.search.solve import optimize
from optimizer.search.verify import certify, plan_from_mapping

GIB = 1 << 30


def stage(*, weights, kv, activations, reserve=0, graphs=0, comm=0, per_token=1000) -> StageMemory:
    return StageMemory(stage=0, dense_layers=1, moe_layers=0, weights_bytes=weights, kv_cache_bytes=kv,
                       activation_bytes=activations, reserve_bytes=reserve, cuda_graph_bytes=graphs,
                       comm_buffer_bytes=comm, kv_bytes_per_token=per_token)


def engine_scenario(name: str, memory: int = 100 * GIB, u: float = 0.9, **engine):
    return make_scenario(cluster={"gpu": {"memory_bytes": memory}}, engine={"name": name, **engine},
                         search={"gpu_memory_utilization": u})


def within(s: StageMemory, scenario) -> bool:
    return all(s.charge(limit) <= limit.cap for limit in memory_limits(scenario))


# --- the memory fraction, as each engine means it -------------------------------------------------------


def test_vllm_counts_everything_inside_the_fraction():
    sc = engine_scenario("vllm", reserve_bytes=GIB, cuda_graph_bytes=GIB, comm_buffer_bytes=GIB)
    [limit] = memory_limits(sc)
    assert limit.cap == 100 * GIB * 9 // 10 == usable_bytes(sc)
    rest = 3 * GIB + 10 * GIB  # runtime + activations
    assert within(stage(weights=60 * GIB, kv=90 * GIB - rest - 60 * GIB, activations=10 * GIB, reserve=GIB, graphs=GIB, comm=GIB), sc)
    assert not within(stage(weights=60 * GIB, kv=90 * GIB - rest - 60 * GIB + 1, activations=10 * GIB, reserve=GIB, graphs=GIB,
                            comm=GIB), sc)
    assert weights_and_kv_room_bytes(sc) == 90 * GIB - 3 * GIB


def test_sglang_static_fraction_holds_weights_and_kv_the_rest_holds_activations_and_graphs():
    # T = 100 GiB - reserve 1 - comm 1 = 98 GiB; static floor(0.9 T); activations + graphs within T - that.
    sc = engine_scenario("sglang", reserve_bytes=GIB, cuda_graph_bytes=GIB, comm_buffer_bytes=GIB)
    static, runtime = memory_limits(sc)
    t = 98 * GIB
    assert static.cap == t * 9 // 10 and runtime.cap == t - t * 9 // 10 and runtime.label == "runtime"
    fits = stage(weights=60 * GIB, kv=static.cap - 60 * GIB, activations=runtime.cap - GIB, reserve=GIB, graphs=GIB, comm=GIB)
    assert within(fits, sc)
    assert not within(replace(fits, kv_cache_bytes=fits.kv_cache_bytes + 1), sc)  # the static part overflows
    assert not within(replace(fits, activation_bytes=fits.activation_bytes + 1), sc)  # the runtime part does
    # What vLLM's meaning would say of the same GPU: 98 GiB in all against 90 GiB -- SGLang's meaning is
    # not vLLM's, and each engine's plan is judged by its own.
    assert not within(fits, engine_scenario("vllm", reserve_bytes=GIB, cuda_graph_bytes=GIB, comm_buffer_bytes=GIB))
    assert usable_bytes(sc) == 100 * GIB and fits.total_bytes <= usable_bytes(sc)
    assert weights_and_kv_room_bytes(sc) == static.cap


def test_sglang_fraction_of_one_leaves_nothing_for_activations():
    sc = engine_scenario("sglang", u=1)
    assert memory_limits(sc)[1].cap == 0
    assert not within(stage(weights=GIB, kv=GIB, activations=1), sc)


def test_tensorrt_llm_gives_the_kv_cache_its_fraction_of_what_is_free():
    sc = engine_scenario("tensorrt-llm", reserve_bytes=GIB, cuda_graph_bytes=0, comm_buffer_bytes=GIB)
    [limit] = memory_limits(sc)
    u = Fraction(9, 10)
    for weights, kv, act in ((80 * GIB, 5 * GIB, 6 * GIB), (60 * GIB, 30 * GIB, 4 * GIB), (90 * GIB, GIB, 8 * GIB)):
        s = stage(weights=weights, kv=kv, activations=act, reserve=GIB, comm=GIB)
        free = 100 * GIB - weights - act - 2 * GIB
        assert within(s, sc) == (kv <= u * free), (weights, kv, act)
    # 80 + 5 + 6 + 2 = 93 GiB: over vLLM's 90 GiB, but 5 GiB of KV is within 0.9 x the 12 GiB free.
    s = stage(weights=80 * GIB, kv=5 * GIB, activations=6 * GIB, reserve=GIB, comm=GIB)
    assert within(s, sc) and not within(s, engine_scenario("vllm", reserve_bytes=GIB, cuda_graph_bytes=0, comm_buffer_bytes=GIB))
    # The boundary in whole bytes: kv <= floor(0.9 x free).
    free = 100 * GIB - 80 * GIB - 6 * GIB - 2 * GIB
    edge = free * 9 // 10
    assert within(replace(s, kv_cache_bytes=edge), sc) and not within(replace(s, kv_cache_bytes=edge + 1), sc)


@pytest.mark.parametrize("engine", ["vllm", "sglang", "tensorrt-llm"])
def test_kv_capacity_is_the_most_tokens_every_limit_admits(engine):
    sc = engine_scenario(engine, reserve_bytes=GIB, cuda_graph_bytes=GIB, comm_buffer_bytes=GIB)
    s = stage(weights=50 * GIB, kv=GIB, activations=2 * GIB, reserve=GIB, graphs=GIB, comm=GIB, per_token=4096)
    tokens = s.kv_capacity_tokens(memory_limits(sc))
    assert within(replace(s, kv_cache_bytes=tokens * 4096), sc)
    assert not within(replace(s, kv_cache_bytes=(tokens + 1) * 4096), sc)


def test_kv_capacity_is_zero_when_the_rest_does_not_fit():
    sc = engine_scenario("sglang", reserve_bytes=0, cuda_graph_bytes=0, comm_buffer_bytes=0)
    s = stage(weights=GIB, kv=0, activations=50 * GIB)  # 50 GiB of activations against 10 GiB left outside
    assert s.kv_capacity_tokens(memory_limits(sc)) == 0


def test_solver_and_certificate_apply_the_engine_meaning():
    # The same GPU and plan space under two meanings: the solver's plan passes its own engine's check,
    # every stage's charge within every limit.
    for engine in ("sglang", "tensorrt-llm"):
        sc = make_scenario(engine={"name": engine})
        sol = optimize(sc)
        cert = certify(sc, sol.plan, sol.tables)
        assert cert.holds
        names = [c.name for c in cert.checks if c.name.startswith("memory_cap")]
        expected = 2 if engine == "sglang" else 1
        assert len(names) == expected * sol.plan.layout.pp


# --- SGLang's dense FFN over its whole --tp-size group ---------------------------------------------------

DSV3 = {"cluster": {"gpu": "h200-sxm", "num_nodes": 1, "gpus_per_node": 8}, "model": "DeepSeek-V3",
        "workload": {"concurrent_sequences": 64, "input_tokens": 1024, "output_tokens": 256, "weight_dtype": "fp8-block"}}
ADP = Layout(tp=1, pp=1, dp=8, ep=8, etp=1, edp=1)  # SGLang --tp 8 --attn-dp-size 8 --ep-size 8


def _dsv3(engine: str):
    return scenario_from_dict({"name": "t", **DSV3, "engine": {"name": engine}})


def test_sglang_dense_ffn_is_sharded_over_the_tp_size_group():
    sg, vl = _dsv3("sglang"), _dsv3("vllm")
    assert ffn_tp(sg, ADP) == 8 and ffn_tp(vl, ADP) == 1
    assert ffn_tp(sg, Layout(tp=2, pp=1, dp=4, ep=8, etp=1, edp=1)) == 8
    assert ffn_tp(sg, Layout(tp=1, pp=1, dp=8, ep=4, etp=1, edp=2)) == 4  # two instances of 4 GPUs
    full = ffn_weight_bytes(model=vl.model, workload=vl.workload, layout=ADP, dense=True)
    split = ffn_weight_bytes(model=sg.model, workload=sg.workload, layout=ADP, dense=True, dense_tp=8)
    assert full == 3 * 7168 * 18432 * (8 * 128 * 128 + 32) // (8 * 128 * 128)  # fp8 + one fp32 scale per 128 x 128
    assert split * 8 >= full and split * 8 - full < 8
    [s_sg], [s_vl] = (stage_memory(scenario=sc, layout=ADP, layers_per_stage=(61,), batch=8) for sc in (sg, vl))
    # DeepSeek's three dense layers, its 58 MoE layers' shared expert and the LM head (issue 13) all span --tp-size
    moe_full = ffn_weight_bytes(model=vl.model, workload=vl.workload, layout=ADP, dense=False)
    moe_split = ffn_weight_bytes(model=sg.model, workload=sg.workload, layout=ADP, dense=False, dense_tp=8)
    vocab, h = sg.model.vocab_size, sg.model.hidden_size
    lm_head = 2 * (vocab * h - -(-vocab // 8) * h)  # BF16, whole against 1/8
    assert s_vl.weights_bytes - s_sg.weights_bytes == 3 * (full - split) + 58 * (moe_full - moe_split) + lm_head


def test_sglang_dense_layer_gathers_tokens_and_reduces_over_the_ffn_group():
    sg, vl = _dsv3("sglang"), _dsv3("vllm")
    for sc, has_own in ((sg, True), (vl, False)):
        g = grid(sc, (ADP,))
        works = layer_works(scenario=sc, g=g, tokens=np.ones(1) * 8, seqs=np.ones(1) * 8, context=1024, prefill=False, dense=True)
        assert ("ffn_allreduce" in works) == has_own
        if has_own:
            assert float(np.asarray(works["ffn_allreduce"].peers)[0]) == 8.0
            assert float(np.asarray(works["tp_allreduce"].repeat)[0]) == 1.0
            # the same FLOPs per GPU as TP-sharding 8 tokens over TP = 1: 8 gathered x 1/8 of the width
            flops = float(np.asarray(works["gate_up_proj"].flops)[0])
            assert flops == pytest.approx(2.0 * 64 * 7168 * 2 * 18432 / 8)
        moe = layer_works(scenario=sc, g=g, tokens=np.ones(1) * 8, seqs=np.ones(1) * 8, context=1024, prefill=False, dense=False)
        assert "ffn_allreduce" not in moe and float(np.asarray(moe["tp_allreduce"].repeat)) == 2.0


# --- instances, hand-written plans in the engines' own terms ---------------------------------------------


def test_instances_by_engine():
    for engine, expected in (("vllm", 2), ("sglang", 2), ("tensorrt-llm", 2), ("megatron", 1)):
        sc = make_scenario(engine={"name": engine})
        assert instances(sc, Layout(tp=1, pp=1, dp=8, ep=4, etp=1, edp=2)) == expected


@pytest.mark.parametrize(("engine", "mapping", "layout"), [
    # SGLang 0.5.22+: --tp-size 8 --attn-dp-size 8 --ep-size 8 is attention TP 1 x DP 8
    ("sglang", {"--tp-size": 8, "--attn-dp-size": 8, "--ep-size": 8}, (1, 1, 8, 8, 1, 1)),
    # SGLang <= 0.5.21: --dp-size 8 --enable-dp-attention
    ("sglang", {"tp_size": 8, "dp_size": 8, "enable_dp_attention": True, "ep_size": 8}, (1, 1, 8, 8, 1, 1)),
    # attention DP 4 in a TP-8 group: TP 2; the experts default to ETP = tp_size = 8
    ("sglang", {"tp_size": 8, "attn_dp_size": 4}, (2, 1, 4, 1, 8, 1)),
    # SGLang without attention DP: --tp-size is TP, --ep-size 4 leaves moe_tp = 8 / 4
    ("sglang", {"tp_size": 8, "ep_size": 4}, (8, 1, 1, 4, 2, 1)),
    # TensorRT-LLM: tp_size 8 with enable_attention_dp is attention TP 1 x DP 8
    ("tensorrt-llm", {"tp_size": 8, "enable_attention_dp": True, "moe_ep_size": 8}, (1, 1, 8, 8, 1, 1)),
    ("tensorrt-llm", {"tp_size": 8, "moe_ep_size": 4}, (8, 1, 1, 4, 2, 1)),
])
def test_hand_written_plans_in_engine_terms(engine, mapping, layout):
    sc = _dsv3(engine)
    plan = plan_from_mapping(mapping, sc)
    lay = plan.layout
    assert (lay.tp, lay.pp, lay.dp, lay.ep, lay.etp, lay.edp) == layout
    assert certify(sc, plan).checks  # judged, whatever the verdict


def test_engine_switch_of_another_engine_is_bad_input():
    with pytest.raises(PlanError, match="SGLang"):
        plan_from_mapping({"tp_size": 8, "attn_dp_size": 8}, _dsv3("vllm"))
    with pytest.raises(PlanError, match="enable_attention_dp"):
        plan_from_mapping({"tp_size": 8, "enable_attention_dp": True}, _dsv3("sglang"))
    with pytest.raises(PlanError, match="not a multiple"):
        plan_from_mapping({"tp_size": 8, "attn_dp_size": 3}, _dsv3("sglang"))
    with pytest.raises(PlanError, match="true or false"):
        plan_from_mapping({"tp_size": 8, "enable_attention_dp": 1}, _dsv3("tensorrt-llm"))


def test_verify_cli_reads_sglang_flags(tmp_path):
    plan = tmp_path / "sglang.yaml"
    plan.write_text("--tp-size: 8\n--attn-dp-size: 8\n--ep-size: 8\n")
    out = tmp_path / "verdict.json"
    result = CliRunner().invoke(main, ["verify", str(plan), "--scenario", "deepseek-v3-8xh200-sglang", "--json", str(out)])
    assert result.exit_code == 0, result.output
    sizes = json.loads(out.read_text())["plan"]
    assert (sizes["tp"], sizes["dp"], sizes["ep"], sizes["etp"], sizes["instances"]) == (1, 8, 8, 1, 1)
    plan.write_text("--tp-size: 8\nenable_attention_dp: true\n")
    result = CliRunner().invoke(main, ["verify", str(plan), "--scenario", "deepseek-v3-8xh200-sglang"])
    assert result.exit_code == 2 and "enable_attention_dp" in result.output


# --- shipped scenarios, calibration, launch ---------------------------------------------------------------


def test_new_engines_use_the_modern_calibration_stack():
    cal = shipped_calibration()
    assert cal.stack_for("sglang") == cal.stack_for("tensorrt-llm") == cal.stack_for("vllm") == "tensorrt-llm"


def test_shipped_sglang_scenario_plans_attention_dp_with_its_own_memory_meaning():
    sc = load_scenario("deepseek-v3-8xh200-sglang")
    sol = optimize(sc)
    assert sol.evidence.proved_optimal
    lay = sol.plan.layout
    assert lay.tp * lay.dp // lay.edp == lay.etp * lay.ep  # the folding, as SGLang runs it
    cert = certify(sc, sol.plan, sol.tables)
    assert cert.holds and any(c.name.endswith(",runtime]") for c in cert.checks)
    doc = sglang_commands(json.loads(_plan_json("deepseek-v3-8xh200-sglang")))
    assert not any("costed for" in note for note in doc.notes)
    assert not any("outside it, where the plan's cap" in note for note in doc.notes)


def test_shipped_tensorrt_llm_scenario_uses_attention_dp_or_none():
    sc = load_scenario("deepseek-v3-8xb200-trtllm")
    sol = optimize(sc)
    lay = sol.plan.layout
    assert sol.evidence.proved_optimal and (lay.tp == 1 or lay.dp == lay.edp)
    assert certify(sc, sol.plan, sol.tables).holds


def _plan_json(name: str) -> str:
    result = CliRunner().invoke(main, ["--scenario", name, "--json", "-"])
    assert result.exit_code == 0, result.output
    return result.output
