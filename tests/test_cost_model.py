"""The calibrated cost model (issue 3): errors against measured data pinned, the operator forms checked on
their own, ``optimize estimate`` end to end, and the calibration recorded in every plan.

The pinned figures are what ``scripts/validate_cost_model.py`` prints for the shipped calibration (in
sample; its leave-one-out figures are in the closing note and re-checked here for the small TensorRT-LLM
stack). A change that makes them worse fails here; one that improves them should lower the pins.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from optimizer.model.calibration import shipped_calibration
from optimizer.inputs.catalog import model_entry
from optimizer.cli import main
from optimizer.model.cost import Work, causal_pairs, grid, integer_costs, layer_works, work_time_s
from optimizer.inputs.loader import load_scenario, scenario_from_dict, shipped_scenarios
from optimizer.model.measured import STEP_KINDS, cluster_for, kernel_sets, kernel_time_s, predict_row, reference_rows, step_parts
from optimizer.model.engines import memory_limits
from optimizer.model.memory import stage_memory
from optimizer.model.parallel import Layout
from optimizer.search.rules import MemoryCap
from optimizer.inputs.scenario import ComputeDtype, ModelSpec

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"


def one(value) -> float:
    """The single entry of a one-layout array (or a scalar)."""
    return float(np.asarray(value).ravel()[0])


def pct(predicted: float, measured: float) -> float:
    return 100 * abs(predicted - measured) / measured


@pytest.fixture(scope="module")
def predictions():
    cal = shipped_calibration()
    return {row: predict_row(row, cal) for row in reference_rows()}


# --- errors against measured data (pinned) ------------------------------------------------------------


def test_every_reference_collective_is_within_20_percent(predictions):
    collectives = [r for r in predictions if r.kind not in STEP_KINDS]
    assert len(collectives) == 8
    for row in collectives:
        assert pct(predictions[row], row.measured_s) <= 20, row.label


@pytest.mark.parametrize(("stack", "rows", "pinned_mape"), [("splitwise-2023", 224, 9.2), ("tensorrt-llm", 11, 15.0),
                                                          ("vllm-2024", 20, 7.5)])
def test_step_latency_errors_by_stack(predictions, stack, rows, pinned_mape):
    steps = [r for r in predictions if r.kind in STEP_KINDS and r.stack == stack]
    assert len(steps) == rows
    assert np.mean([pct(predictions[r], r.measured_s) for r in steps]) <= pinned_mape


def test_step_latency_errors_by_kind(predictions):
    for kind, pinned in (("decode_ms", 3.8), ("prefill_ms", 14.8), ("ttft_ms", 8.5), ("static_batch_ms", 19.0)):
        rows = [r for r in predictions if r.kind == kind]
        assert np.mean([pct(predictions[r], r.measured_s) for r in rows]) <= pinned, kind


def test_tp_comparisons_the_measurements_tell_apart_are_ordered_as_measured(predictions):
    """196 of 199 (the three vLLM Mixtral-8x22B TP4/TP8 pairs ordered): the three misordered pairs are measured
    within 6.2% of each other (two of them reverse the order their neighbours in batch or ISL have;
    scripts/validate_cost_model.py lists them)."""
    groups: dict[tuple, list] = {}
    for r in predictions:
        if r.kind in STEP_KINDS:
            groups.setdefault(r.group, []).append(r)
    pairs = wrong = 0
    for members in groups.values():
        for a, b in combinations(members, 2):
            if a.tp == b.tp or not a.distinct_from(b):
                continue
            pairs += 1
            if (predictions[a] < predictions[b]) != (a.measured_s < b.measured_s):
                wrong += 1
                assert abs(a.measured_s - b.measured_s) / min(a.measured_s, b.measured_s) < 0.065, (a.label, b.label)
    assert pairs == 199 and wrong <= 3


def test_tensorrt_llm_stack_leave_one_out():
    """Each of the 7 TensorRT-LLM step rows predicted by step parameters fitted without it."""
    sys.path.insert(0, str(SCRIPTS))
    import calibrate

    cal = shipped_calibration()
    steps = [r for r in reference_rows() if r.kind in STEP_KINDS and r.stack == "tensorrt-llm"]
    parts = {r: step_parts(r, cal.for_gpu(r.gpu)) for r in steps}
    errors = []
    for row in steps:
        fits = calibrate.fit_steps([r for r in steps if r is not row], {r.gpu: cal.for_gpu(r.gpu) for r in steps}, parts=parts)
        fit = fits["tensorrt-llm"].get(row.gpu, fits["tensorrt-llm"]["*"])
        c = replace(cal.for_gpu(row.gpu, "tensorrt-llm"), step=fit)
        errors.append(pct(predict_row(row, replace(cal, gpus={row.gpu: c}, default=c)), row.measured_s))
    assert np.mean(errors) <= 15


@pytest.mark.parametrize(("kind", "gpu", "pinned"), [("gemm:bf16", "h100-sxm", 26.0), ("gemm:bf16", "a100-sxm-80gb", 14.5),
                                                     ("attention_decode", "h100-sxm", 18.5), ("nccl", "a100-sxm-80gb", 10.5),
                                                     ("nccl", "h200-sxm", 13.0)])
def test_kernel_table_errors(kind, gpu, pinned):
    [ks] = [k for k in kernel_sets() if k.kind == kind and k.gpu == gpu]
    predicted = kernel_time_s(ks, shipped_calibration().for_gpu(gpu))
    assert 100 * np.mean(np.abs(predicted / ks.measured_s - 1)) <= pinned


def test_a_fresh_fit_reproduces_the_shipped_calibration():
    """scripts/calibrate.py fitted again gives the shipped parameters (to 1%): the file is what the data say."""
    sys.path.insert(0, str(SCRIPTS))
    import calibrate

    cals, step_fits = calibrate.fit_all()
    shipped = shipped_calibration()
    for gpu, cal in cals.items():
        old = shipped.gpus[gpu]
        for dtype, fit in cal.gemm.items():
            assert fit.compute_efficiency == pytest.approx(old.gemm[dtype].compute_efficiency, rel=0.01)
        assert cal.attention.decode_memory_efficiency == pytest.approx(old.attention.decode_memory_efficiency, rel=0.01)
        for stack, fit in cal.steps.items():
            assert fit.sustained_compute == pytest.approx(old.steps[stack].sustained_compute, rel=0.01)
            assert fit.sustained_memory == pytest.approx(old.steps[stack].sustained_memory, rel=0.01)
            assert fit.sequence_overhead_us == pytest.approx(old.steps[stack].sequence_overhead_us, rel=0.02, abs=0.5)
    assert set(step_fits) == set(shipped.stacks)


# --- the operator forms --------------------------------------------------------------------------------


def test_step_parts_are_exact_for_every_step_parameter():
    """The fit's shortcut (``StepParts``: the cost model tabulated once, the step parameters applied in
    closed form) equals the cost model itself, for parameters off the tabulation grid."""
    from optimizer.model.calibration import StepFit
    from optimizer.model.measured import step_fit_time_s

    cal = shipped_calibration()
    fit = StepFit(sustained_compute=0.83, layer_overhead_us=12.0, step_overhead_us=300.0, collective_skew_us=40.0,
                  sustained_memory=1.17, sequence_overhead_us=150.0)
    for row in [r for r in reference_rows() if r.kind in STEP_KINDS][::37]:
        base = cal.for_gpu(row.gpu, row.stack)
        exact = predict_row(row, replace(cal, gpus={row.gpu: replace(base, steps={row.stack: fit})}))
        assert step_fit_time_s(step_parts(row, base), fit) == pytest.approx(exact, rel=1e-9), row.label


def test_sustained_memory_scales_memory_bound_terms_and_sequence_overhead_counts_sequences():
    s = _scenario("Llama-3.1-8B", batch=1)
    cal = shipped_calibration().for_gpu("h100-sxm")
    gemm = Work("gemm", flops=2.0 * 1 * 4096 * 4096, bytes=2.0 * 4096 * 4096)  # a decode GEMV: memory bound
    fit = cal.gemm_fit("bf16")
    t1 = work_time_s(gemm, gpu=s.cluster.gpu, cluster=s.cluster, cal=replace(cal, step=replace(cal.step, sustained_memory=1.0)))
    t2 = work_time_s(gemm, gpu=s.cluster.gpu, cluster=s.cluster, cal=replace(cal, step=replace(cal.step, sustained_memory=2.0)))
    launch = fit.launch_us * 1e-6
    assert (t2 - launch) == pytest.approx((t1 - launch) / 2)
    seq = Work("overhead", dtype="sequence", repeat=np.asarray([1.0, 64.0]))
    t = work_time_s(seq, gpu=s.cluster.gpu, cluster=s.cluster, cal=replace(cal, step=replace(cal.step, sequence_overhead_us=250.0)))
    assert list(t) == pytest.approx([250e-6, 64 * 250e-6])


def test_causal_pairs_full_and_windowed():
    assert causal_pairs(4, None) == 10  # 1 + 2 + 3 + 4
    assert causal_pairs(6, 3) == 1 + 2 + 3 + 3 + 3 + 3
    assert causal_pairs(3, 8) == 6  # shorter than the window: the full triangle


def _scenario(model: str, *, isl: int = 8192, osl: int = 256, batch: int = 8, gpu: str = "h100-sxm", extra=None):
    return scenario_from_dict({
        "name": "t", "cluster": {"gpu": gpu, "num_nodes": 1},
        "model": {"name": model, **(extra or {})},
        "workload": {"concurrent_sequences": batch, "input_tokens": isl, "output_tokens": osl},
    })


def _works(scenario, layout, *, prefill: bool, dense: bool = False):
    g = grid(scenario, (layout,))
    one = np.ones(1)
    w = scenario.workload
    if prefill:
        return layer_works(scenario=scenario, g=g, tokens=one * w.input_tokens, seqs=one, context=w.input_tokens, prefill=True, dense=dense)
    return layer_works(scenario=scenario, g=g, tokens=one * w.concurrent_sequences, seqs=one * w.concurrent_sequences,
                       context=w.input_tokens, prefill=False, dense=dense)


def test_sliding_window_layers_attend_over_the_window_only():
    """gpt-oss: half the layers see 128 keys. At 8k context their attention is a sliver of the full one;
    dropping the window (a model with no sliding layers) makes every layer full."""
    windowed = _scenario("gpt-oss-120b")
    full = _scenario("gpt-oss-120b", extra={"sliding_window": None, "layer_types": None})
    lay = Layout(tp=1, pp=1, dp=1, ep=1, etp=1, edp=1)
    w, f = _works(windowed, lay, prefill=True), _works(full, lay, prefill=True)
    assert w["attention"].repeat == 0.5 and w["attention_sliding"].repeat == 0.5 and "attention_sliding" not in f
    assert one(w["attention_sliding"].flops) == pytest.approx(one(f["attention"].flops) * causal_pairs(8192, 128) / causal_pairs(8192, None))
    decode = _works(windowed, lay, prefill=False)
    assert one(decode["attention_sliding"].bytes) < one(decode["attention"].bytes) / 50


def test_mla_decode_reads_the_latent_cache_once_per_gpu():
    s = _scenario("DeepSeek-V3", gpu="h200-sxm", isl=4096)
    model = s.model
    for tp in (1, 8):
        works = _works(s, Layout(tp=tp, pp=1, dp=1, ep=1, etp=1, edp=1), prefill=False)
        latent = (model.kv_lora_rank + model.qk_rope_head_dim) * 2  # bf16 bytes per token per layer, every TP rank
        cache = 8 * 4096 * latent
        query_and_output = 2 * 8 * 2 * (model.num_attention_heads // tp) * model.v_head_dim  # this rank's heads only
        assert one(works["attention"].bytes) == cache + query_and_output


def test_routing_imbalance_scales_the_busiest_gpus_expert_flops():
    balanced = _scenario("Qwen3-30B-A3B", isl=1024)
    skewed = _scenario("Qwen3-30B-A3B", isl=1024)
    skewed = skewed.model_copy(update={"workload": skewed.workload.model_copy(update={"routing_imbalance": 1.5})})
    lay = Layout(tp=1, pp=1, dp=8, ep=8, etp=1, edp=1)
    a, b = _works(balanced, lay, prefill=True), _works(skewed, lay, prefill=True)
    assert one(b["experts"].flops) == pytest.approx(1.5 * one(a["experts"].flops))
    assert one(b["router"].flops) == one(a["router"].flops)


def test_gemm_efficiency_grows_with_size():
    """A fixed launch term: small GEMMs reach a small share of peak, large ones most of it."""
    cluster = cluster_for("h100-sxm", num_gpus=1)
    cal = shipped_calibration().for_gpu("h100-sxm")
    cal = replace(cal, step=replace(cal.step, sustained_compute=1.0))
    achieved = []
    for m in (16, 256, 4096):
        flops = 2.0 * m * 4096 * 4096
        t = work_time_s(Work("gemm", flops=flops, bytes=2.0 * (m * 4096 * 2 + 4096 * 4096)), gpu=cluster.gpu, cluster=cluster, cal=cal)
        achieved.append(flops / t / cluster.gpu.peak_flops_per_s(ComputeDtype.BF16))
    assert achieved[0] < achieved[1] < achieved[2] < 1


def test_collectives_cross_the_link_the_rank_map_says():
    cluster = cluster_for("h100-sxm", num_gpus=16)
    cal = shipped_calibration().for_gpu("h100-sxm")
    kw = dict(gpu=cluster.gpu, cluster=cluster, cal=cal)
    on = work_time_s(Work("allreduce", bytes=1 << 26, peers=8.0, offnode=0.0), **kw)
    off = work_time_s(Work("allreduce", bytes=1 << 26, peers=8.0, offnode=1.0), **kw)
    assert off > 3 * on  # 50 GB/s NICs against 450 GB/s NVLink
    assert work_time_s(Work("allreduce", bytes=1 << 26, peers=1.0), **kw) == 0
    small, large = (work_time_s(Work("alltoall", bytes=b, peers=4.0), **kw) for b in (1 << 12, 1 << 26))
    assert 0 < small < large


def test_speed_of_light_never_exceeds_the_estimate_in_any_shipped_scenario():
    for name in shipped_scenarios():
        s = load_scenario(name)
        table = integer_costs(scenario=s, layouts=(Layout(tp=1, pp=1, dp=s.cluster.num_gpus, ep=1, etp=1, edp=s.cluster.num_gpus),))
        for costs in (table.prefill, table.decode):
            for layer in (costs.dense_breakdown, costs.moe_breakdown, costs.last_breakdown):
                for op, t in layer.ops.items():
                    assert layer.sol[op][0] <= t[0] + 1e-15, (name, op)


def test_an_uncalibrated_gpu_uses_the_default_entry_and_says_so():
    s = load_scenario("16gpu-30b")  # generic-64gb: not a catalog GPU
    table = integer_costs(scenario=s, layouts=(Layout(tp=1, pp=1, dp=16, ep=16, etp=1, edp=1),))
    assert table.calibration.entry == "default" and not table.calibration.measured
    assert "no measurements" in table.calibration_text
    h800 = integer_costs(scenario=load_scenario("deepseek-v3-32xh800"), layouts=(Layout(tp=1, pp=1, dp=32, ep=32, etp=1, edp=1),))
    assert h800.calibration.entry == "h100-sxm" and "as h100-sxm" in h800.calibration_text


def test_the_calibration_stack_follows_the_engine_unless_set(tmp_path):
    base = {"name": "t", "cluster": {"gpu": "h100-sxm", "num_nodes": 1}, "model": "Llama-3.1-8B",
            "workload": {"concurrent_sequences": 4, "input_tokens": 512, "output_tokens": 64}}
    lay = (Layout(tp=1, pp=1, dp=8, ep=1, etp=1, edp=8),)
    default = integer_costs(scenario=scenario_from_dict({**base, "engine": {"name": "vllm"}}), layouts=lay)
    legacy = integer_costs(scenario=scenario_from_dict({**base, "engine": {"name": "vllm", "calibration_stack": "splitwise-2023"}}),
                           layouts=lay)
    assert default.calibration.stack == shipped_calibration().engine_stacks["vllm"]
    assert legacy.calibration.stack == "splitwise-2023" and legacy.decode.dense_layer_ns[0] > default.decode.dense_layer_ns[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**base, "engine": {"calibration_stack": "vllm-9"}}))
    result = CliRunner().invoke(main, ["--scenario", str(bad)])
    assert result.exit_code == 2 and "engine.calibration_stack" in result.output and "splitwise-2023" in result.output


# --- memory as the engines account for it -------------------------------------------------------------


def test_runtime_components_and_kv_capacity_are_exact():
    s = scenario_from_dict({
        "name": "t", "cluster": {"gpu": "h100-sxm", "num_nodes": 1}, "model": "Llama-3.1-8B",
        "workload": {"concurrent_sequences": 16, "input_tokens": 1000, "output_tokens": 24},
        "engine": {"reserve_bytes": 3 << 29, "cuda_graph_bytes": 1 << 28, "comm_buffer_bytes": 1 << 27},
    })
    [stage] = stage_memory(scenario=s, layout=Layout(tp=2, pp=1, dp=4, ep=1, etp=2, edp=4), layers_per_stage=(32,), batch=4)
    assert (stage.reserve_bytes, stage.cuda_graph_bytes, stage.comm_buffer_bytes) == (3 << 29, 1 << 28, 1 << 27)
    assert stage.total_bytes == (stage.weights_bytes + stage.kv_cache_bytes + stage.activation_bytes + (3 << 29) + (1 << 28) + (1 << 27))
    per_token = 32 * 2 * 4 * 128 * 2  # 32 layers x K and V x 4 of 8 KV heads x head_dim 128 x bf16
    assert stage.kv_bytes_per_token == per_token and stage.kv_cache_bytes == 4 * 1024 * per_token
    cap = MemoryCap.cap_bytes(s)
    assert stage.kv_capacity_tokens(memory_limits(s)) == (cap - (stage.total_bytes - stage.kv_cache_bytes)) // per_token


# --- optimize estimate ---------------------------------------------------------------------------------

ESTIMATE_KEYS = {"prefill_step_s", "decode_step_s", "ttft_s", "tpot_s", "output_tokens_per_s", "output_tokens_per_s_per_gpu",
                 "breakdown", "calibration", "kv_cache_capacity_tokens"}


def _estimate(*args: str) -> tuple[int, dict | str]:
    result = CliRunner().invoke(main, ["estimate", *args])
    if "--json" in args and result.exit_code == 0:
        return result.exit_code, json.loads(result.output)
    return result.exit_code, result.output


@pytest.mark.parametrize("name", sorted(shipped_scenarios()))
def test_estimate_works_on_every_shipped_scenario(name):
    """The optimizer's plan where there is one; a hand-written one (here TP = GPUs per node, PP over the
    nodes) where the scenario is infeasible: estimated anyway, with the broken rules named."""
    s = load_scenario(name)
    code, doc = _estimate("--scenario", name, "--json", "-")
    if code == 1:
        nodes = s.cluster.num_nodes
        code, doc = _estimate("--scenario", name, "--tp", str(s.cluster.gpus_per_node), "--pp", str(nodes), "--dp", "1", "--json", "-")
        assert code == 0 and doc["plan_holds"] is False and doc["failing_checks"]
    assert code == 0, doc
    assert ESTIMATE_KEYS <= set(doc)
    if doc["ttft_model"] == "isolated":  # Megatron: one prompt alone; else its chunks among the running decodes
        assert doc["ttft_s"] == pytest.approx(doc["prefill_step_s"])
    else:
        assert doc["ttft_model"] == "loaded" and doc["ttft_s"] > doc["prefill_step_s"]
    assert doc["tpot_s"] >= doc["decode_step_s"] > 0
    for phase, step in (("prefill", doc["prefill_step_s"]), ("decode", doc["decode_step_s"])):
        operators = doc["breakdown"][phase]["operators"]
        assert sum(op["total_s"] for op in operators) == pytest.approx(step, rel=1e-4, abs=1e-6)
        # the two-batch overlap is a credit (<= 0): at the speed of light less is hidden, as the parts are shorter
        assert all(op["speed_of_light_s"] <= op["total_s"] * (1 + 1e-5) + 1e-12 for op in operators if op["kind"] != "overlap")
        assert all(op["total_s"] <= op["speed_of_light_s"] <= 0 for op in operators if op["kind"] == "overlap")
        assert doc["breakdown"][phase]["speed_of_light_s"] < step


def test_estimate_of_a_plan_from_optimize_matches_its_json(tmp_path):
    plan = tmp_path / "plan.json"
    assert CliRunner().invoke(main, ["--scenario", "qwen3-30b-a3b-8xh100", "--json", str(plan)]).exit_code == 0
    optimized = json.loads(plan.read_text())
    code, doc = _estimate(str(plan), "--scenario", "qwen3-30b-a3b-8xh100", "--json", "-")
    assert code == 0 and doc["plan_holds"]
    for key in ("ttft_s", "tpot_s", "prefill_step_s", "decode_step_s", "output_tokens_per_s"):
        assert doc[key] == optimized["estimate"][key]
    assert doc["calibration"] == optimized["estimate"]["calibration"]
    code, text = _estimate(str(plan), "--scenario", "qwen3-30b-a3b-8xh100")
    assert code == 0 and "speed of light" in text and "ep_alltoall" in text and "x SOL" in text


def test_plan_json_records_the_calibration(tmp_path):
    out = tmp_path / "p.json"
    assert CliRunner().invoke(main, ["--scenario", "llama-3.1-70b-8xh100", "--json", str(out)]).exit_code == 0
    cal = json.loads(out.read_text())["estimate"]["calibration"]
    shipped = shipped_calibration()
    assert cal["id"] == shipped.id and cal["gpu_entry"] == "h100-sxm" and cal["measured"] is True
    assert shipped.engine_stacks["vllm"] in cal["text"]


def test_estimate_rejects_unreadable_input(tmp_path):
    code, text = _estimate("--scenario", "16gpu-30b", "--tp", "0")
    assert code == 2
    missing = tmp_path / "none.yaml"
    code, text = _estimate(str(missing), "--scenario", "16gpu-30b")
    assert code == 2 and "none.yaml" in text


def test_model_entry_gpt_oss_declares_its_windows():
    entry = model_entry("gpt-oss-120b")
    entry.pop("published_params")
    model = ModelSpec(**entry)
    assert model.num_sliding_layers == 18 and model.sliding_window == 128
    short = scenario_from_dict({"name": "t", "cluster": {"gpu": "h100-sxm", "num_nodes": 1},
                                "model": {"name": "gpt-oss-120b", "num_hidden_layers": 8},
                                "workload": {"concurrent_sequences": 1, "input_tokens": 8, "output_tokens": 8}})
    assert short.model.layer_types == ("sliding_attention", "full_attention") * 4
