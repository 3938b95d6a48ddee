"""Issue 13 item 6: each engine's own kernel tables (aiconfigurator-core's per-framework GEMM, attention,
fused-MoE and custom all-reduce tables, ``calibration/data/aiconfigurator_engine_*.csv``,
``aiconfigurator_moe.csv``, ``aiconfigurator_custom_allreduce.csv``) give per-engine kernel fits; a plan
uses its engine's and says so, or says which tables stand in."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from optimizer.cli import main
from optimizer.errors import OptimizerError
from optimizer.inputs.catalog import calibration_data
from optimizer.inputs.scenario import ComputeDtype
from optimizer.model.calibration import calibration_from_dict, shipped_calibration
from optimizer.model.cost import Work, custom_allreduce_s, work_time_s
from optimizer.model.measured import FRAMEWORK_ENGINES, cluster_for, engine_kernel_sets, kernel_time_s, microbenchmark

ENGINES = ("vllm", "sglang", "tensorrt-llm")
FITTED = ("h100-sxm", "h200-sxm", "a100-sxm-80gb", "b200", "l40s")
MIB = 1024 * 1024


def _mape(ks, cal) -> float:
    pred = kernel_time_s(ks, cal)
    ok = np.isfinite(pred)
    return float(100 * np.mean(np.abs(pred[ok] / ks.measured_s[ok] - 1)))


@pytest.mark.parametrize("gpu", FITTED)
def test_every_fitted_gpu_has_kernel_entries_for_the_three_engines(gpu):
    cal = shipped_calibration().gpus[gpu]
    assert set(cal.kernels) == set(ENGINES)
    for engine, k in cal.kernels.items():
        assert k.tables.startswith(f"aiconfigurator {engine} ")
        assert "bf16" in k.gemm and k.attention is not None and k.custom_allreduce is not None


def test_entries_differ_where_the_tables_differ():
    """SGLang's and vLLM's H100 decode-attention tables differ (FlashAttention 3 / Triton against vLLM's
    FlashAttention build), and so do their fits; TensorRT-LLM's FP8 GEMM table is not vLLM's either."""
    sets = {(k.engine, k.kind): k for k in engine_kernel_sets() if k.gpu == "h100-sxm"}
    vllm, sglang = sets["vllm", "attention_decode"], sets["sglang", "attention_decode"]
    assert vllm.labels == sglang.labels and not np.allclose(vllm.measured_s, sglang.measured_s, rtol=0.05)
    k = shipped_calibration().gpus["h100-sxm"].kernels
    assert k["vllm"].attention != k["sglang"].attention
    assert k["vllm"].gemm["fp8"] != k["tensorrt-llm"].gemm["fp8"]
    assert k["vllm"].moe["bf16"] != k["sglang"].moe["bf16"]


def test_each_engine_fits_its_own_fp8_gemm_table_better_than_the_shared_fit():
    """Where an engine's kernel differs (FP8 GEMM: vLLM's CUTLASS, SGLang's sgl-kernel, TensorRT-LLM's own),
    the shared fit (vLLM's tables) misses the others by more than their own fits do."""
    shipped = shipped_calibration()
    for ks in engine_kernel_sets():
        if ks.kind == "gemm:fp8" and ks.engine in ("sglang", "tensorrt-llm") and ks.gpu in ("h100-sxm", "h200-sxm", "b200"):
            own, shared = _mape(ks, shipped.for_gpu(ks.gpu, engine=ks.engine)), _mape(ks, shipped.for_gpu(ks.gpu))
            assert own < shared - 5, (ks.gpu, ks.engine, own, shared)


def test_for_gpu_puts_the_engine_fits_in_place_and_falls_back_to_the_shared_ones():
    shipped = shipped_calibration()
    shared = shipped.for_gpu("h100-sxm")
    sglang = shipped.for_gpu("h100-sxm", engine="sglang")
    megatron = shipped.for_gpu("h100-sxm", engine="megatron")
    assert sglang.kernel_engine == "sglang" and sglang.attention == shared.kernels["sglang"].attention
    assert sglang.moe_fit("bf16") == shared.kernels["sglang"].moe["bf16"] != shared.gemm_fit("bf16")
    assert shared.moe_fit("bf16") == shared.gemm_fit("bf16")  # no MoE tables in the shared fit: plain GEMM
    assert megatron.kernel_engine == "" and megatron.gemm == shared.gemm and megatron.custom_allreduce is None
    assert shipped.for_gpu("h800-sxm", engine="sglang").kernel_engine == "sglang"  # like: h100-sxm


def test_grouped_gemm_work_uses_the_moe_fit():
    cal = shipped_calibration().for_gpu("h100-sxm", engine="vllm")
    cluster = cluster_for("h100-sxm", num_gpus=8)
    w = Work("gemm", flops=2.0 * 64 * 3 * 2048 * 768 * 8, bytes=3 * 2048 * 768 * 2 * 100.0, kernels=2.0)
    plain = work_time_s(w, gpu=cluster.gpu, cluster=cluster, cal=cal)
    grouped = work_time_s(replace(w, grouped=True), gpu=cluster.gpu, cluster=cluster, cal=cal)
    fit = cal.moe_fit("bf16")
    peak, hbm = cluster.gpu.peak_flops_per_s(ComputeDtype.BF16), float(cluster.gpu.hbm_bytes_per_s)
    expected = 2 * fit.launch_us * 1e-6 + max(w.flops / (peak * fit.compute_efficiency * cal.step.sustained_compute),
                                              w.bytes / (hbm * fit.memory_efficiency * cal.step.sustained_memory))
    assert grouped == pytest.approx(expected, rel=1e-9) and grouped != pytest.approx(plain, rel=1e-3)


def test_custom_allreduce_speeds_up_small_tp_allreduces_only_below_its_cap():
    shipped = shipped_calibration()
    cluster = cluster_for("h100-sxm", num_gpus=8)

    def t(engine, message, peers=8):
        cal = microbenchmark(shipped.for_gpu("h100-sxm", engine=engine))  # no rank skew: the kernels alone
        return float(work_time_s(Work("allreduce", bytes=float(message), peers=float(peers)), gpu=cluster.gpu,
                                 cluster=cluster, cal=cal))

    small, big = 7168 * 2 * 8, 16 * MIB  # a decode step's hidden states; over vLLM's 8 MiB cap
    assert t("vllm", small) < 0.5 * t("megatron", small)  # NCCL's LL base + 14 hops against one kernel
    assert t("vllm", big) == t("megatron", big)  # over the cap: NCCL
    assert t("vllm", small, peers=3) == t("megatron", small, peers=3)  # world size 3 is not supported
    assert t("tensorrt-llm", big) <= t("megatron", big)  # AUTO strategy: no cap, the faster of the two


def test_custom_allreduce_fits_follow_their_tables():
    """The engines' own all-reduce fits predict their tables (the messages and groups they take it for)
    within 30%."""
    shipped = shipped_calibration()
    for ks in engine_kernel_sets():
        if ks.kind == "custom_allreduce":
            assert _mape(ks, shipped.for_gpu(ks.gpu, engine=ks.engine)) < 30, (ks.gpu, ks.engine)


def test_custom_allreduce_runs_on_two_gpus_only_over_pcie():
    """The L40S has no NVLink: vLLM and SGLang run their custom all-reduce on two PCIe GPUs, not more."""
    shipped = shipped_calibration()
    cluster = cluster_for("l40s", num_gpus=8)
    for engine in ("vllm", "sglang"):
        fit = shipped.for_gpu("l40s", engine=engine).custom_allreduce
        assert fit.max_gpus == 2
        t = custom_allreduce_s(message=np.array([4096.0, 4096.0]), peers=np.array([2.0, 4.0]), link=cluster.intra_node_link, fit=fit)
        assert np.isfinite(t[0]) and np.isinf(t[1])
    assert shipped.for_gpu("h100-sxm", engine="vllm").custom_allreduce.max_gpus == 8


def test_every_engine_row_names_its_file_framework_and_version():
    from optimizer.model.measured import read_rows

    for name in ("aiconfigurator_engine_gemm.csv", "aiconfigurator_engine_attention.csv", "aiconfigurator_moe.csv",
                 "aiconfigurator_custom_allreduce.csv"):
        rows = read_rows(name)
        assert rows
        for r in rows:
            assert r["framework"] in FRAMEWORK_ENGINES and r["version"] and r["file"].endswith(".parquet")
            assert f"/{r['framework']}/{r['version']}/" in r["file"]


def _plan_text(tmp_path, engine: str) -> str:
    out = tmp_path / f"{engine}.json"
    result = CliRunner().invoke(main, ["--model", "Qwen3-30B-A3B", "--gpu", "h100", "--gpus", "8", "--isl", "2048", "--osl", "512",
                                       "--ttft-ms", "2000", "--tpot-ms", "50", "--engine", engine, "--json", str(out)])
    assert result.exit_code == 0, result.output
    return _find_text(json.loads(out.read_text()))


def _find_text(doc) -> str:
    """The plan's calibration line (``calibration.text``: it starts with the calibration id)."""
    if isinstance(doc, dict):
        if "text" in doc and isinstance(doc["text"], str) and doc["text"].startswith("fit-"):
            return doc["text"]
        for v in doc.values():
            found = _find_text(v)
            if found:
                return found
    if isinstance(doc, list):
        for v in doc:
            found = _find_text(v)
            if found:
                return found
    return ""


@pytest.mark.parametrize("engine,tables", [("vllm", "kernel tables aiconfigurator vllm 0.24.0"),
                                           ("sglang", "kernel tables aiconfigurator sglang 0.5.14"),
                                           ("tensorrt-llm", "kernel tables aiconfigurator tensorrt-llm 1.3.0rc20")])
def test_a_plan_names_its_engine_kernel_tables(tmp_path, engine, tables):
    text = _plan_text(tmp_path, engine)
    assert tables in text, text
    assert "standing in" not in text.split(";")[-1]


def test_a_plan_for_an_engine_without_tables_says_which_stand_in(tmp_path):
    text = _plan_text(tmp_path, "megatron")
    assert "shared kernel tables" in text and "standing in for megatron" in text.split(";")[-1], text


def test_a_malformed_kernel_entry_is_named():
    data = copy.deepcopy(calibration_data())
    data["gpus"]["h100-sxm"]["kernels"]["sglang"]["moe"]["bf16"]["compute_efficiency"] = -1.0
    with pytest.raises(OptimizerError, match=r"gpus\.h100-sxm\.kernels\.sglang\.moe\.bf16\.compute_efficiency"):
        calibration_from_dict(data)
    del data["gpus"]["h100-sxm"]["kernels"]["sglang"]["tables"]
    with pytest.raises(OptimizerError, match="gpus.h100-sxm lacks 'tables'"):
        calibration_from_dict(data)


def test_a_gpu_without_measurements_gets_its_engine_kernels_averaged():
    """The default entry (a GPU with no tables) holds each engine's kernel fits as the geometric mean over the
    fitted GPUs, and the plan says so."""
    shipped = shipped_calibration()
    cal = shipped.for_gpu("mi300x", engine="sglang")
    assert not cal.measured and cal.kernel_engine == "sglang"
    fitted = [shipped.gpus[g].kernels["sglang"].moe["bf16"].compute_efficiency for g in FITTED]
    expected = float(np.exp(np.mean(np.log(fitted))))
    assert cal.moe_fit("bf16").compute_efficiency == pytest.approx(expected, rel=2e-3)  # 4 significant digits in the file
    assert cal.custom_allreduce.max_gpus == 8
    text = shipped.describe("mi300x", shipped.stack_for("sglang"), "sglang")
    assert "kernel tables aiconfigurator sglang (mean over the fitted GPUs)" in text


@pytest.mark.parametrize("name,grouped", [("qwen3-235b-a22b-16xh100", True), ("qwen3-235b-a22b-16xh100-sglang-deepep", False)])
def test_routed_experts_use_the_fused_moe_fit_except_under_deepep(name, grouped):
    """The fused-MoE tables time the engines' fused MoE op; SGLang with DeepEP runs DeepGEMM's grouped GEMMs,
    which they do not time, so its experts keep the plain GEMM fit."""
    from optimizer.inputs.loader import load_scenario
    from optimizer.model.cost import grid, layer_works
    from optimizer.model.parallel import Layout

    sc = load_scenario(name)
    layout = Layout(tp=1, pp=1, dp=sc.cluster.num_gpus, ep=sc.cluster.num_gpus, etp=1, edp=1)
    works = layer_works(scenario=sc, g=grid(sc, (layout,)), tokens=np.ones(1) * 8, seqs=np.ones(1) * 8, context=1024,
                        prefill=False, dense=False)
    assert works["experts"].grouped is grouped


def test_a_fresh_fit_reproduces_the_shipped_engine_kernels():
    """scripts/calibrate.py's per-engine kernel fits, run again on H100's tables, give the shipped entries (to
    1%: the file keeps 4 significant digits)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    import calibrate

    shipped = shipped_calibration().gpus["h100-sxm"]
    fresh = calibrate.fit_engine_kernels("h100-sxm", shipped)
    assert set(fresh) == set(shipped.kernels)
    for engine, k in fresh.items():
        old = shipped.kernels[engine]
        assert k.tables == old.tables
        for dtype, fit in k.moe.items():
            assert fit.compute_efficiency == pytest.approx(old.moe[dtype].compute_efficiency, rel=0.01)
        assert k.attention.decode_memory_efficiency == pytest.approx(old.attention.decode_memory_efficiency, rel=0.01)
        assert k.custom_allreduce.bandwidth_efficiency == pytest.approx(old.custom_allreduce.bandwidth_efficiency, rel=0.01)
