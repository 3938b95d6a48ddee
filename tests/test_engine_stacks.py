"""Issue 13: step parameters fitted on an engine's own measured runs (``calibration/data/measurements_engines.csv``:
vLLM's ``benchmark_latency.py`` static batches from vllm-project/vllm pull requests), the stack they make
(``vllm-2024``), how a plan takes it, and what a plan says when another stack stands in."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest

from optimizer.inputs.loader import scenario_from_dict
from optimizer.model.calibration import shipped_calibration
from optimizer.model.measured import DATA_DIR, STACKS, STEP_KINDS, predict_row, reference_rows, step_scenario
from optimizer.search.result import build_tables

ENGINE_FILE = DATA_DIR / "measurements_engines.csv"
VLLM_PRS = ("github.com/vllm-project/vllm/pull/2542", "github.com/vllm-project/vllm/pull/3240",
            "github.com/vllm-project/vllm/pull/4002")


def _file_rows() -> list[dict[str, str]]:
    with ENGINE_FILE.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def _vllm_rows():
    return [r for r in reference_rows() if r.stack == "vllm-2024"]


def _scenario(engine: str, **engine_fields) -> object:
    return scenario_from_dict({
        "name": "t", "cluster": {"gpu": "h100-sxm", "num_nodes": 1, "gpus_per_node": 8}, "model": "Mixtral-8x7B-v0.1",
        "workload": {"concurrent_sequences": 32, "input_tokens": 1000, "output_tokens": 50},
        "engine": {"name": engine, **engine_fields}})


def test_every_engine_row_names_its_source_engine_and_stack():
    rows = _file_rows()
    assert len(rows) == 20
    for r in rows:
        assert r["source"].startswith(VLLM_PRS), r["source"]
        assert "benchmark_latency.py" in r["source"]
        assert r["engine"].startswith("vllm-") and r["stack"] == "vllm-2024"
        assert float(r["measured_ms"]) > 0 and int(r["batch"]) >= 1 and int(r["tp"]) in (2, 4, 8)


def test_the_rows_are_read_as_vllm_static_batches_costed_with_vllm_kernels():
    rows = _vllm_rows()
    assert len(rows) == 20 and {r.kind for r in rows} == {"static_batch_ms"}
    assert {r.model for r in rows} == {"Mixtral-8x7B-v0.1", "Mixtral-8x22B-v0.1"}
    assert {r.gpu for r in rows} == {"h100-sxm", "a100-sxm-80gb"}
    assert all(r.kernel_engine == "vllm" for r in rows)
    # TensorRT-LLM's own rows take its kernels (as its plans do); the 2023 stack and vidur's the shared ones
    assert all(r.kernel_engine == {"tensorrt-llm": "tensorrt-llm"}.get(r.stack, "")
               for r in reference_rows() if r.stack != "vllm-2024")
    assert step_scenario(rows[0]).model.num_experts == 8  # Mixtral: a MoE step, experts sharded over TP


def test_vllm_kernel_tables_change_what_a_vllm_row_costs():
    """The row is priced with vLLM's own kernel fits (as a vLLM plan is), not the shared ones."""
    cal = shipped_calibration()
    row = next(r for r in _vllm_rows() if r.gpu == "h100-sxm" and r.batch == 64)
    assert predict_row(row, cal) != pytest.approx(predict_row(replace(row, stack="tensorrt-llm"), cal), rel=1e-3)


def test_the_vllm_stack_is_fitted_and_describes_its_rows():
    cal = shipped_calibration()
    assert "vllm-2024" in cal.stacks and "vllm-2024" in STACKS
    assert "benchmark_latency.py" in cal.stacks["vllm-2024"] and "2542" in cal.stacks["vllm-2024"]
    for gpu in ("h100-sxm", "a100-sxm-80gb"):  # both measured GPUs get their own fit
        entry = cal.for_gpu(gpu, "vllm-2024")
        assert entry.step_measured and entry.step == cal.gpus[gpu].steps["vllm-2024"]
    # early-2024 vLLM: a host cost per step and per sequence that TensorRT-LLM's stack does not carry
    assert cal.for_gpu("h100-sxm", "vllm-2024").step.step_overhead_us > 1000
    assert cal.for_gpu("h100-sxm", "tensorrt-llm").step.step_overhead_us < 1


def test_the_vllm_stack_fits_its_own_rows():
    cal = shipped_calibration()
    errors = [abs(predict_row(r, cal) / r.measured_s - 1) for r in _vllm_rows()]
    assert 100 * sum(errors) / len(errors) <= 7.5
    assert max(errors) < 0.25


def test_a_vllm_plan_on_the_vllm_stack_does_not_say_standing_in():
    own = build_tables(_scenario("vllm", calibration_stack="vllm-2024")).cost
    assert own.calibration.stack == "vllm-2024" and own.calibration.step_measured
    assert "stack vllm-2024;" in own.calibration_text and "standing in" not in own.calibration_text
    default = build_tables(_scenario("vllm")).cost
    assert default.calibration.stack == shipped_calibration().stack_for("vllm") == "tensorrt-llm"
    assert "standing in for vllm (its own stack vllm-2024 opt-in with engine.calibration_stack)" in default.calibration_text


def test_the_2024_vllm_stack_prices_a_vllm_decode_slower_than_the_stand_in():
    """The opt-in stack carries early-2024 vLLM's host work per step: the same plan's TPOT is higher on it."""
    def decode_step_ns(engine_fields):
        d = build_tables(_scenario("vllm", **engine_fields)).cost.decode
        return d.moe_layer_ns * 32 + d.first_extra_ns + d.last_extra_ns + d.stage_extra_ns  # Mixtral-8x7B: 32 layers

    own, default = decode_step_ns({"calibration_stack": "vllm-2024"}), decode_step_ns({})
    assert (own > default).all() and own.min() > 1.3 * default.min()  # every layout; the fastest by over 30%


def test_engines_without_own_rows_keep_the_stand_in():
    cal = shipped_calibration()
    for engine in ("sglang", "megatron"):
        assert cal.stack_for(engine) == "tensorrt-llm"
        text = cal.describe("h100-sxm", cal.stack_for(engine), engine)
        assert f"standing in for {engine} (no {engine} measurements in this calibration)" in text
    assert "standing in" not in cal.describe("h100-sxm", "tensorrt-llm", "tensorrt-llm").split(";")[0]


def test_every_step_row_of_every_stack_is_a_stack_of_the_calibration():
    assert {r.stack for r in reference_rows() if r.kind in STEP_KINDS} == set(STACKS) == set(shipped_calibration().stacks)


def test_the_plan_line_says_what_stood_in_and_what_was_missing():
    """Review of issue 13: a TensorRT-LLM scenario that asks for another stack is not told its own stack is
    opt-in (it is its default), and a GPU whose engine tables have no fused-MoE table says the experts use
    the GEMM fit."""
    cal = shipped_calibration()
    chosen = cal.describe("h100-sxm", "vllm-2024", "tensorrt-llm")
    assert "engine.calibration_stack chose it over tensorrt-llm's own tensorrt-llm" in chosen and "opt-in" not in chosen
    assert "no fused-MoE table here" in cal.describe("a100-sxm-80gb", cal.stack_for("vllm"), "vllm")
    assert "no fused-MoE table" not in cal.describe("h100-sxm", cal.stack_for("vllm"), "vllm")
