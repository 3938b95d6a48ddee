"""Issue 13's validation: every source of measured rows predicted by a fit without it (leave-one-source-out),
and the regimes plans extrapolate into predicted from the rows outside them (leave-one-regime-out), the way
estimates are used: whole data sets and regimes held out, not neighbouring rows.

The figures are what ``python scripts/validate_cost_model.py --held-out-only`` prints for the shipped
calibration, computed here in full with the project's own fits (``scripts/calibrate.py``; nothing cached):
about 20 s, most of it tabulating the 255 step rows once. Each held-out MAPE is pinned to a band of 1.5
points around today's value in both directions, so that a change to the data or the fit that moves it
(better or worse) shows here and the pin and the closing table are updated with it. The issue's target,
held-out MAPE <= 20% per source, is one test per source; the sources that miss it today are strict xfails,
so an improvement that meets it fails the suite until the marker is removed. The aiconfigurator kernel
tables (one file per GPU and kind) are held out per GPU: each predicted by the default entry of the other
fitted GPUs, which is what a plan for a GPU without measurements gets.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from optimizer.model.calibration import shipped_calibration
from optimizer.model.measured import STEP_KINDS, MeasuredRow, predict_row, reference_rows

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

import validate_cost_model as vcm  # noqa: E402

SPLITWISE, TRTLLM, NIM, VIDUR = ("Mutinifni/splitwise-sim", "NVIDIA/TensorRT-LLM",
                                 "docs.nvidia.com/nim/benchmarking/llm/1.0.0/performance.md", "microsoft/vidur")
VLLM_2542, VLLM_3240, VLLM_4002 = (f"github.com/vllm-project/vllm/pull/{n}" for n in (2542, 3240, 4002))
VLLM_MISS = ("each vLLM pull request's rows, held out, are predicted by the vllm-2024 stack fitted on the other two, "
             "another model or GPU: {}")
BAND = 1.5  # percentage points either side of the pinned MAPE

# source -> (rows, held-out MAPE %, why it misses 20% or None)
SOURCES = {
    SPLITWISE: (224, 28.4, "no other source measures the 2023 stack: held out, it is predicted by the TensorRT-LLM "
                           "stand-in, which is ~2x faster per step (the gap a plan for an engine without rows carries)"),
    TRTLLM: (7, 21.9, "its v0.6.1 static-batch rows (batch 64-1024), held out, are predicted 23-34% slow: their masked-MHA "
                      "decode attention is costed as one KV read per query head at the GQA kernels' efficiency, an upper "
                      "bound (sibling heads' re-reads partly hit L2; no row measures by how much)"),
    NIM: (4, 19.1, None),  # 16.7 while its stack was fitted on the shared kernels
    VIDUR: (8, 16.7, None),
    VLLM_2542: (7, 26.1, VLLM_MISS.format("the only H100 rows (TP8) come out 20-31% fast from the A100 rows' step "
                                          "parameters (the stack's mean, no H100 row left)")),
    VLLM_3240: (7, 28.0, VLLM_MISS.format("Mixtral-8x7B at TP2 on A100 comes out up to 37% slow (6 of 7 rows "
                                          "over 20%) from the Mixtral-8x22B TP4/TP8 A100 rows and the H100 TP8 ones")),
    VLLM_4002: (6, 25.1, VLLM_MISS.format("the only Mixtral-8x22B rows, 32-token prompts and 128 decode steps, come out "
                                          "21-28% slow")),
}
# regime -> (rows, held-out MAPE %, why it misses 20% or None)
REGIMES = {
    # 20.3% on every machine since the step fit keeps the best of four starts (calibrate.STEP_STARTS); from
    # one start it was 20.3% on AVX2 BLAS kernels (this minimum) and 19.8% on AVX-512 ones (a worse minimum)
    "batch >= 64": (14, 20.3, "the 2023 stack's batch-64 prefills (32k tokens a step) come out 34-44% fast from its "
                              "batch 1-32 rows, and TensorRT-LLM's static batches of 64 and 480 sequences 36-37% slow "
                              "(decode attention charged as re-reading the KV cache per query head, an upper bound)"),
    # the large-scale EP check rows (no step row has EP > 1), not fitted: with the blog's data-parallel dense FFN
    # and LM head and the engines' two-batch-overlap stage order (cost.tbo_layer_s) every row still comes out
    # fast, the two EP 32 prefill rows of the default expert distribution by 21-23% (against a balanced
    # routing_imbalance 1.0), the blog's simulated perfect EPLB row by 6.5%, the EP 72 decode row by 13%
    "EP >= 16": (4, 15.7, None),
    "TP >= 8": (86, 13.3, None),
    "input >= 4096": (26, 10.6, None),
}
# the EP >= 16 rows, (kind, input length, expert distribution) -> error % of the predicted step time
# (scripts/large_scale_ep.py); the blog's balanced-placement prefill runs 18% faster than its default one, so the
# balanced routing_imbalance 1.0 predicts it to 6.5% and the default one 20.7% fast
LARGE_EP_ROWS = {("prefill", 2000, "default"): -22.5, ("prefill", 4096, "default"): -20.7,
                 ("prefill", 4096, "simulated perfect EPLB"): -6.5, ("decode", 2000, "default"): -12.9}


@pytest.fixture(scope="module")
def parts():
    return vcm.step_parts_for([r for r in reference_rows() if r.kind in STEP_KINDS], shipped_calibration())


@pytest.fixture(scope="module")
def held_out(parts):
    shipped = shipped_calibration()
    rows = list(reference_rows())
    sets = vcm.leave_one_source_out(rows, shipped, parts) + vcm.leave_one_regime_out(rows, shipped, parts)
    return {h.name: h for h in sets}


def test_every_source_and_regime_is_held_out(held_out):
    assert set(held_out) == set(SOURCES) | set(REGIMES)
    everything = list(reference_rows())
    assert sum(len(held_out[s].rows) for s in SOURCES) == len(everything)  # each row in exactly one source


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_held_out_source_mape_is_pinned(held_out, source):
    rows, pinned, _ = SOURCES[source]
    h = held_out[source]
    assert len(h.rows) == rows
    assert h.mape == pytest.approx(pinned, abs=BAND)


@pytest.mark.parametrize("source", [
    pytest.param(s, marks=pytest.mark.xfail(strict=True, reason=why)) if why else s
    for s, (_, _, why) in sorted(SOURCES.items())])
def test_held_out_source_mape_meets_the_20_percent_target(held_out, source):
    assert held_out[source].mape <= 20


@pytest.mark.parametrize("regime", sorted(REGIMES))
def test_held_out_regime_mape_is_pinned(held_out, regime):
    rows, pinned, _ = REGIMES[regime]
    h = held_out[regime]
    assert len(h.rows) == rows
    assert h.mape == pytest.approx(pinned, abs=BAND)


@pytest.mark.parametrize("regime", [
    pytest.param(r, marks=pytest.mark.xfail(strict=True, reason=why)) if why else r
    for r, (_, _, why) in sorted(REGIMES.items())])
def test_held_out_regime_mape_meets_the_20_percent_target(held_out, regime):
    assert held_out[regime].mape <= 20


def test_the_ep_regime_is_the_large_scale_ep_check_predicted_by_the_shipped_calibration(held_out):
    """No step row measures expert parallelism (each is a TP group with EP 1), so the EP >= 16 regime holds
    the lmsys.org large-scale-EP blog's throughputs (calibration/data/measurements_large_ep.csv), each
    predicted by scripts/large_scale_ep.py from the shipped scenario under its conditions. Nothing is fitted
    to them: the prediction is held out as it stands, and the table says so."""
    import large_scale_ep

    h = held_out["EP >= 16"]
    assert not any(isinstance(r, MeasuredRow) for r in h.rows)
    assert h.rows == large_scale_ep.large_ep_rows() and h.trained_on == vcm.LARGE_EP_PREDICTED_BY
    assert all(r.ep >= 16 and r.source_url == "https://lmsys.org/blog/2025-05-05-large-scale-ep/" for r in h.rows)
    errors = {(r.kind, r.input_len, r.expert_distribution): vcm.pct(h.predicted[r], r.measured_s) for r in h.rows}
    assert set(errors) == set(LARGE_EP_ROWS)
    for key, pinned in LARGE_EP_ROWS.items():
        assert errors[key] == pytest.approx(pinned, abs=BAND), key
    assert len(h.misses()) == 2  # the two prefill rows more than 20% off (fast)
    lines = vcm.held_out_table([h], {}, None)
    assert "not fitted (a check)" in lines[1] and "EP >= 16: DeepSeek-V3 sglang prefill EP32" in "\n".join(lines)


def test_a_held_out_source_is_really_left_out_of_its_fit(held_out):
    """Held out, the TensorRT-LLM docs' rows are predicted worse than in sample, and the 2023 rows, whose
    stack has no other source, by the stand-in stack a plan without measurements would use."""
    shipped = shipped_calibration()
    trt = held_out[TRTLLM]
    in_sample = vcm.mape(vcm.pct(predict_row(r, shipped), r.measured_s) for r in trt.rows)
    assert trt.mape > in_sample
    assert held_out[SPLITWISE].stacks == ("tensorrt-llm for splitwise-2023",)


def test_the_step_rows_do_not_determine_the_per_layer_overhead(parts):
    """Issue 13 item 6: the shipped per-layer and per-step overheads sit at the fit's lower bound (0.01 us)
    not because the rows measure 0 but because they cannot tell: every step row is an 80-layer Llama at
    PP 1, so per-layer, per-step and (at batch 1) per-sequence time are one constant to them. Held at 0 to
    50 us per layer with the rest refitted, the 2023 stack's MAPE moves by less than a point and
    TensorRT-LLM's by under three (2.5 points since its static-batch rows of 128-2048 steps joined the batch-1 ones).
    Rows of another depth or with PP > 1 should make this fail."""
    steps = [r for r in reference_rows() if r.kind in STEP_KINDS]
    profile = vcm.overhead_profile(steps, shipped_calibration(), parts)
    spread = {stack: max(e for *_, e in probes) - min(e for *_, e in probes) for stack, probes in profile.items()}
    assert spread["splitwise-2023"] < 1.0 and spread["tensorrt-llm"] < 3.0
    assert [layer for layer, *_ in profile["tensorrt-llm"]] == list(vcm.OVERHEAD_PROBES_US)


# (kind, gpu) -> held-out MAPE % of an aiconfigurator table predicted by the default entry of the other GPUs
KERNEL_TABLES = {
    ("gemm:bf16", "a100-sxm-80gb"): 22.2, ("gemm:bf16", "b200"): 14.1, ("gemm:fp8", "b200"): 22.4,
    ("gemm:bf16", "h100-sxm"): 12.5, ("gemm:fp8", "h100-sxm"): 20.2, ("gemm:bf16", "h200-sxm"): 12.6,
    ("gemm:fp8", "h200-sxm"): 21.0, ("gemm:bf16", "l40s"): 30.1, ("gemm:fp8", "l40s"): 37.9,
    ("attention_prefill", "a100-sxm-80gb"): 17.6, ("attention_decode", "a100-sxm-80gb"): 28.0,
    ("attention_prefill", "b200"): 24.1, ("attention_decode", "b200"): 26.0,
    ("attention_prefill", "h100-sxm"): 18.0, ("attention_decode", "h100-sxm"): 11.2,
    ("attention_prefill", "h200-sxm"): 18.7, ("attention_decode", "h200-sxm"): 11.5,
    ("attention_prefill", "l40s"): 101.6, ("attention_decode", "l40s"): 59.5,
    # NCCL: 41-63% while the default link took the scenario's latency per hop; the other GPUs' mean protocols now
    ("nccl", "a100-sxm-80gb"): 21.5, ("nccl", "b200"): 22.0, ("nccl", "h100-sxm"): 23.7, ("nccl", "h200-sxm"): 22.4,
    ("nccl", "l40s"): 45.3,
}
KERNEL_MISS = ("most tables miss 20% in sample too (one efficiency per kernel kind and GPU); NCCL held out takes the "
               "other GPUs' mean protocols, a few points over 20%; the PCIe L40S is unlike the NVLink GPUs averaged")


@pytest.fixture(scope="module")
def kernel_held_out():
    return {(kind, gpu): held for kind, gpu, _, _, held in vcm.kernel_leave_one_gpu_out(shipped_calibration())}


def test_every_kernel_table_is_held_out(kernel_held_out):
    assert set(kernel_held_out) == set(KERNEL_TABLES)


@pytest.mark.parametrize("table", sorted(KERNEL_TABLES))
def test_held_out_kernel_table_mape_is_pinned(kernel_held_out, table):
    assert kernel_held_out[table] == pytest.approx(KERNEL_TABLES[table], abs=BAND)


@pytest.mark.parametrize("table", [
    pytest.param(t, marks=pytest.mark.xfail(strict=True, reason=KERNEL_MISS)) if mape > 20 else t
    for t, mape in sorted(KERNEL_TABLES.items())])
def test_held_out_kernel_table_meets_the_20_percent_target(kernel_held_out, table):
    assert kernel_held_out[table] <= 20


def test_a_large_ep_row_with_an_unknown_expert_distribution_is_refused(tmp_path):
    """measurements_large_ep.csv names the blog's placement per row; a value outside the two it ran is an error
    that names the file and row, not a row silently costed as if balanced."""
    import large_scale_ep

    text = large_scale_ep.MEASUREMENTS.read_text(encoding="utf-8")
    bad = tmp_path / "rows.csv"
    bad.write_text(text.replace(",simulated perfect EPLB\n", ",perfect\n"), encoding="utf-8")
    with pytest.raises(ValueError, match=r"rows\.csv: data row 4: expert_distribution 'perfect'"):
        large_scale_ep.large_ep_rows(bad)
    assert len(large_scale_ep.large_ep_rows()) == 4
