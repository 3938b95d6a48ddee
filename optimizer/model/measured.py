"""Measured rows (``calibration/data/``) and what the cost model predicts for each.

Used by ``scripts/calibrate.py`` (fit), ``scripts/validate_cost_model.py`` (errors, leave-one-out) and the
tests that pin the errors. The data files live in the repository, not in the installed package: these
functions need a source checkout.

Row kinds:
- ``gemm``, ``attention_prefill``, ``attention_decode``, ``nccl``: kernel and collective latencies from
  NVIDIA aiconfigurator-core 0.12.0's measured tables (``scripts/extract_aiconfigurator.py``).
- ``allreduce``, ``sendrecv_intranode``, ``sendrecv_internode``: collectives from ``measurements.csv``
  (microsoft/vidur profiles of an H100 DGX).
- ``prefill_ms``, ``decode_ms``, ``ttft_ms``: whole forward steps from ``measurements.csv``, the
  per-configuration medians of Mutinifni/splitwise-sim ``data/perf_model.csv``, and the rows this project
  added with their sources (``measurements_added.csv``: NVIDIA NIM 1.8.0 benchmarks).
- ``static_batch_ms``: a whole static-batch run (``measurements_static_batch.csv``: TensorRT-LLM's published
  peak-throughput table): the batch's prompts prefilled in one step, then ``OSL - 1`` decode steps of the
  whole batch, predicted as one prefill step plus ``OSL - 1`` decode steps at the mean context
  ``ISL + OSL / 2`` (exact for every term linear in the context: the KV-cache reads); also vLLM's own
  ``benchmarks/benchmark_latency.py`` runs (``measurements_engines.csv``: Mixtral on H100 and A100, from
  vLLM pull requests), the rows of the ``vllm-2024`` stack.

Rows of a stack measured on an engine profile's own runs (``ENGINE_OF_STACK``: ``vllm-2024`` is vLLM's,
``tensorrt-llm`` TensorRT-LLM's) are
costed with that engine's own kernel fits (``Calibration.for_gpu(..., engine=...)``), as a plan on that engine
is, so that its step parameters are fitted on the kernels they are used with.
"""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np

from optimizer.model.calibration import Calibration, GpuCalibration, StepFit
from optimizer.inputs.catalog import gpu_entry, model_entry
from optimizer.model.cost import (
    Work,
    _phase,
    causal_pairs,
    custom_allreduce_s,
    grid,
    work_time_s,
)
from optimizer.errors import OptimizerError
from optimizer.model.parallel import Layout
from optimizer.inputs.scenario import Cluster, Dtype, Engine, ModelSpec, Scenario, Workload

DATA_DIR = Path(__file__).resolve().parents[2] / "calibration" / "data"
ACT = 2  # BF16 activations, as the cost model counts them

# measurements.csv / splitwise hardware names -> catalog GPU names
GPU_NAMES = {"h100-sxm (DGX)": "h100-sxm", "h100-sxm": "h100-sxm", "h100-80gb": "h100-sxm",
             "a100-sxm-80gb": "a100-sxm-80gb", "a100-80gb": "a100-sxm-80gb"}
MODEL_NAMES = {"Llama-2-70B": "Llama-2-70B", "llama2-70b": "Llama-2-70B", "Llama-3.3-70B-Instruct": "Llama-3.1-70B",
               "Mixtral-8x7B-Instruct-v0.1": "Mixtral-8x7B-v0.1", "Mixtral-8x22B-v0.1": "Mixtral-8x22B-v0.1"}
PRECISIONS = {"fp8": Dtype.FP8, "fp16": Dtype.FP16, "bf16": Dtype.BF16, "unrecorded": Dtype.FP16}
STEP_KINDS = ("prefill_ms", "decode_ms", "ttft_ms", "static_batch_ms")

# Software stacks with whole-step measurements, and what each is.
STACKS = {
    "splitwise-2023": "Llama-2-70B, FP16, A100/H100, TP 2/4/8: the 2023 serving stack profiled for Splitwise "
                      "(Patel et al., ISCA 2024; Mutinifni/splitwise-sim data/perf_model.csv)",
    "tensorrt-llm": "TensorRT-LLM: the v0.5 TTFT table and v0.6.1 FP8 static-batch throughput table (NVIDIA/TensorRT-LLM "
                    "docs/source/performance.md) and NVIDIA NIM 1.8.0 FP8 benchmarks of Llama-3.3-70B on 2 x H100 "
                    "(docs.nvidia.com/nim/benchmarking)",
    "vllm-2024": "vLLM, early 2024 (v0.3.0 to main of April 2024): benchmarks/benchmark_latency.py static batches of Mixtral-8x7B "
            "(H100 TP8, A100-80GB TP2) and Mixtral-8x22B (A100-80GB TP4/TP8), BF16, batch 1-64, from vllm-project/vllm pull "
            "requests 2542, 3240 and 4002 (calibration/data/measurements_engines.csv)",
}
# Stacks measured on an engine profile's own runs -> that profile: their rows are costed with its kernel fits.
# TensorRT-LLM's own rows (its performance page, NIM's TensorRT-LLM backend) are costed with its kernel fits too,
# as a TensorRT-LLM plan is: a step fit on one kernel set applied over another mis-states both (review of issue 13).
ENGINE_OF_STACK = {"vllm-2024": "vllm", "tensorrt-llm": "tensorrt-llm"}


def stack_of(source: str, engine: str = "") -> str:
    """The stack a step row was measured on, from its source (and ``engine`` column, where given)."""
    if source.startswith("Mutinifni/splitwise-sim"):
        return "splitwise-2023"
    if source.startswith("NVIDIA/TensorRT-LLM") or engine.startswith("nim-"):
        return "tensorrt-llm"
    raise OptimizerError(f"no calibration stack for step rows from {source!r}")


def read_rows(name: str) -> list[dict[str, str]]:
    """A CSV under ``calibration/data`` as dicts; lines starting with ``#`` are comments.

    Raises:
        OptimizerError: the file is missing (the data ship with the repository, not the package).
    """
    path = DATA_DIR / name
    if not path.is_file():
        raise OptimizerError(f"{path}: calibration data not found (run from a source checkout of the repository)")
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def cluster_for(gpu: str, *, num_gpus: int) -> Cluster:
    """One node of the catalog GPU ``gpu`` (links and GPUs per node from the catalog)."""
    entry = gpu_entry(gpu)
    if entry is None:
        raise OptimizerError(f"unknown catalog GPU {gpu!r}")
    per_node = entry.pop("gpus_per_node")
    intra, inter = entry.pop("intra_node_link"), entry.pop("inter_node_link")
    return Cluster(gpu=entry, num_nodes=max(1, -(-num_gpus // per_node)), gpus_per_node=per_node,
                   intra_node_link=intra, inter_node_link=inter)


# --- kernel rows (vectorised per file and GPU) -----------------------------------------------------


@dataclass(frozen=True)
class KernelSet:
    """Measured kernels of one kind on one GPU, as one vectorised ``Work`` and the measured seconds."""

    kind: str  # gemm:bf16 | gemm:fp8 | attention_prefill | attention_decode | nccl | moe:bf16 | moe:fp8 | custom_allreduce
    gpu: str
    work: Work
    measured_s: np.ndarray
    labels: tuple[str, ...]
    ops: tuple[str, ...] = ()  # nccl: op per row
    engine: str = ""  # engine profile whose tables these are ("": the shared tables)
    tables: str = ""  # engine tables: "framework version" as aiconfigurator names them


# aiconfigurator framework folder -> engine profile (``EngineName``)
FRAMEWORK_ENGINES = {"vllm": "vllm", "sglang": "sglang", "trtllm": "tensorrt-llm"}
# Largest message each engine's own all-reduce takes (0: any): vLLM's CustomAllreduce(max_size=8192 * 1024)
# (vllm/distributed/device_communicators/custom_all_reduce.py), SGLang's port of it
# (sglang/srt/distributed/device_communicators/custom_all_reduce.py); TensorRT-LLM's AllReduce with
# AllReduceStrategy.AUTO (what aiconfigurator's collector measures) chooses per size, NCCL included.
CUSTOM_ALLREDUCE_MAX_BYTES = {"vllm": 8 * 1024 * 1024, "sglang": 8 * 1024 * 1024, "tensorrt-llm": 0}


def _col(rows, key, dtype=float) -> np.ndarray:
    return np.asarray([dtype(r[key]) for r in rows], dtype=float)


@cache
def kernel_sets() -> tuple[KernelSet, ...]:
    """Every aiconfigurator GEMM, attention and NCCL table, grouped by GPU and kind."""
    sets: list[KernelSet] = []
    gemm = read_rows("aiconfigurator_gemm.csv")
    for gpu in sorted({r["gpu"] for r in gemm}):
        for dtype in ("bf16", "fp8"):
            rows = [r for r in gemm if r["gpu"] == gpu and r["dtype"] == dtype]
            if not rows:
                continue
            m, n, k = _col(rows, "m"), _col(rows, "n"), _col(rows, "k")
            wbytes = 2 if dtype == "bf16" else 1
            work = Work("gemm", flops=2 * m * n * k, bytes=wbytes * k * n + ACT * (m * k + m * n), dtype=dtype,
                        quant_elements=m * k if dtype == "fp8" else 0.0)
            sets.append(KernelSet(f"gemm:{dtype}", gpu, work, _col(rows, "latency_ms") * 1e-3,
                                  tuple(f"m={r['m']} n={r['n']} k={r['k']}" for r in rows)))
    attention = read_rows("aiconfigurator_attention.csv")
    d = 128.0
    for gpu in sorted({r["gpu"] for r in attention}):
        for phase in ("context", "generation"):
            rows = [r for r in attention if r["gpu"] == gpu and r["phase"] == phase]
            b, length = _col(rows, "batch"), _col(rows, "kv_len")
            heads, kv_heads, window = _col(rows, "num_heads"), _col(rows, "num_kv_heads"), _col(rows, "window_size")
            if phase == "context":
                pairs = np.where((window > 0) & (length > window), window * length - window * (window - 1) / 2,
                                 causal_pairs(length, None))
                work = Work("attention_prefill", flops=2 * heads * 2 * d * b * pairs,
                            bytes=ACT * b * length * (heads * 2 * d + 2 * kv_heads * d))
            else:
                span = np.where(window > 0, np.minimum(length, window), length)
                work = Work("attention_decode", flops=4 * d * heads * b * span,
                            bytes=b * span * 2 * kv_heads * d * ACT + ACT * b * 2 * heads * d)
            kind = "attention_prefill" if phase == "context" else "attention_decode"
            sets.append(KernelSet(kind, gpu, work, _col(rows, "latency_ms") * 1e-3,
                                  tuple(f"b={r['batch']} len={r['kv_len']} heads={r['num_heads']}/{r['num_kv_heads']} "
                                        f"window={r['window_size']}" for r in rows)))
    nccl = read_rows("aiconfigurator_nccl.csv")
    kinds = {"all_reduce": "allreduce", "all_gather": "allgather", "reduce_scatter": "allgather", "alltoall": "alltoall"}
    for gpu in sorted({r["gpu"] for r in nccl}):
        rows = [r for r in nccl if r["gpu"] == gpu]
        sets.append(KernelSet("nccl", gpu, Work("allreduce", bytes=_col(rows, "message_bytes"), peers=_col(rows, "num_gpus")),
                              _col(rows, "latency_ms") * 1e-3,
                              tuple(f"{r['op']} n={r['num_gpus']} {r['message_bytes']} B" for r in rows),
                              ops=tuple(kinds[r["op"]] for r in rows)))
    return tuple(sets)


def _gemm_work(rows, dtype: str) -> Work:
    m, n, k = _col(rows, "m"), _col(rows, "n"), _col(rows, "k")
    wbytes = 2 if dtype == "bf16" else 1
    return Work("gemm", flops=2 * m * n * k, bytes=wbytes * k * n + ACT * (m * k + m * n), dtype=dtype,
                quant_elements=m * k if dtype == "fp8" else 0.0)


def _attention_work(rows, phase: str) -> Work:
    d = 128.0
    b, length = _col(rows, "batch"), _col(rows, "kv_len")
    heads, kv_heads = _col(rows, "num_heads"), _col(rows, "num_kv_heads")
    window = _col(rows, "window_size") if rows and "window_size" in rows[0] else np.zeros(len(rows))
    if phase == "context":
        pairs = np.where((window > 0) & (length > window), window * length - window * (window - 1) / 2,
                         causal_pairs(length, None))
        return Work("attention_prefill", flops=2 * heads * 2 * d * b * pairs,
                    bytes=ACT * b * length * (heads * 2 * d + 2 * kv_heads * d))
    span = np.where(window > 0, np.minimum(length, window), length)
    return Work("attention_decode", flops=4 * d * heads * b * span,
                bytes=b * span * 2 * kv_heads * d * ACT + ACT * b * 2 * heads * d)


def moe_work(rows, dtype: str) -> Work:
    """The cost model's routed-experts work (``cost.ffn_works``) for aiconfigurator's fused-MoE rows: tokens
    T over E experts, top-k, balanced routing; a GPU holds E / EP experts of width inter / moe_TP, gets
    ``T x k / EP`` (token, expert) pairs and reads the weights of the ``E/EP x (1 - (1 - k/E)^T)`` experts
    they touch (expected, uniform routing)."""
    t, h, inter = _col(rows, "tokens"), _col(rows, "hidden_size"), _col(rows, "inter_size")
    k, e, tp, ep = _col(rows, "top_k"), _col(rows, "num_experts"), _col(rows, "moe_tp"), _col(rows, "moe_ep")
    width = inter / tp
    routed = t * k / ep
    touched = e / ep * (1 - (1 - k / e) ** t)
    wbytes = 2 if dtype == "bf16" else 1
    return Work("gemm", kernels=2.0, dtype=dtype, grouped=True, flops=2.0 * routed * 3 * h * width,
                quant_elements=routed * (h + width) if dtype == "fp8" else 0.0,
                bytes=touched * 3 * h * width * wbytes + ACT * routed * (2 * h + 3 * width))


def _tables(rows) -> str:
    """``framework version[/version]`` of a group of rows (several versions where ops come from several)."""
    fw = FRAMEWORK_ENGINES[rows[0]["framework"]]
    versions = "/".join(sorted({r["version"] for r in rows}))
    return f"{fw} {versions}"


@cache
def engine_kernel_sets() -> tuple[KernelSet, ...]:
    """Per-engine aiconfigurator tables (``aiconfigurator_engine_*.csv``, ``aiconfigurator_moe.csv``,
    ``aiconfigurator_custom_allreduce.csv``), grouped by GPU, engine and kind; ``tables`` names the
    framework and version of each."""
    sets: list[KernelSet] = []

    def groups(name: str, *keys: str):
        rows = read_rows(name)
        out: dict[tuple, list] = {}
        for r in rows:
            out.setdefault(tuple(r[k] for k in ("gpu", "framework", *keys)), []).append(r)
        return sorted(out.items())

    for (gpu, fw, dtype), rows in groups("aiconfigurator_engine_gemm.csv", "dtype"):
        sets.append(KernelSet(f"gemm:{dtype}", gpu, _gemm_work(rows, dtype), _col(rows, "latency_ms") * 1e-3,
                              tuple(f"m={r['m']} n={r['n']} k={r['k']}" for r in rows),
                              engine=FRAMEWORK_ENGINES[fw], tables=_tables(rows)))
    for (gpu, fw, phase), rows in groups("aiconfigurator_engine_attention.csv", "phase"):
        kind = "attention_prefill" if phase == "context" else "attention_decode"
        sets.append(KernelSet(kind, gpu, _attention_work(rows, phase), _col(rows, "latency_ms") * 1e-3,
                              tuple(f"b={r['batch']} len={r['kv_len']} heads={r['num_heads']}/{r['num_kv_heads']}" for r in rows),
                              engine=FRAMEWORK_ENGINES[fw], tables=_tables(rows)))
    for (gpu, fw, dtype), rows in groups("aiconfigurator_moe.csv", "dtype"):
        sets.append(KernelSet(f"moe:{dtype}", gpu, moe_work(rows, dtype), _col(rows, "latency_ms") * 1e-3,
                              tuple(f"T={r['tokens']} h={r['hidden_size']} i={r['inter_size']} k={r['top_k']} E={r['num_experts']} "
                                    f"tp={r['moe_tp']} ep={r['moe_ep']}" for r in rows),
                              engine=FRAMEWORK_ENGINES[fw], tables=_tables(rows)))
    for (gpu, fw), rows in groups("aiconfigurator_custom_allreduce.csv"):
        sets.append(KernelSet("custom_allreduce", gpu, Work("allreduce", bytes=_col(rows, "message_bytes"), peers=_col(rows, "num_gpus")),
                              _col(rows, "latency_ms") * 1e-3, tuple(f"n={r['num_gpus']} {r['message_bytes']} B" for r in rows),
                              engine=FRAMEWORK_ENGINES[fw], tables=_tables(rows)))
    return tuple(sets)


def microbenchmark(cal: GpuCalibration) -> GpuCalibration:
    """``cal`` as a kernel or collective micro-benchmark sees it: no full-model sustained-clock factor,
    no rank skew (every rank starts together), no step overheads."""
    return replace(cal, step=replace(cal.step, sustained_compute=1.0, sustained_memory=1.0, collective_skew_us=0.0,
                                     layer_overhead_us=0.0, step_overhead_us=0.0))


def kernel_time_s(ks: KernelSet, cal: GpuCalibration) -> np.ndarray:
    """The cost model's time for every row of ``ks`` under ``cal`` as a micro-benchmark (NCCL rows by
    their own op)."""
    cal = microbenchmark(cal)
    cluster = cluster_for(ks.gpu, num_gpus=8)
    if ks.kind == "custom_allreduce":  # the engine's kernel alone, where it takes the message (else inf)
        if cal.custom_allreduce is None:
            return np.full(len(ks.measured_s), np.inf)
        return custom_allreduce_s(message=ks.work.bytes, peers=ks.work.peers, link=cluster.intra_node_link, fit=cal.custom_allreduce)
    if ks.kind != "nccl":
        return np.asarray(work_time_s(ks.work, gpu=cluster.gpu, cluster=cluster, cal=cal), dtype=float)
    out = np.zeros(len(ks.measured_s))
    ops = np.asarray(ks.ops)
    for op in set(ks.ops):
        mask = ops == op
        w = replace(ks.work, kind=op, bytes=np.asarray(ks.work.bytes)[mask], peers=np.asarray(ks.work.peers)[mask])
        out[mask] = work_time_s(w, gpu=cluster.gpu, cluster=cluster, cal=cal)
    return out


# --- reference rows (measurements.csv and splitwise medians) -------------------------------------


@dataclass(frozen=True)
class MeasuredRow:
    """One measured collective or step. ``group`` ties rows that compare layouts of one workload."""

    kind: str
    gpu: str
    measured_s: float
    source: str
    tp: int = 1
    batch: int = 1
    input_len: int = 0
    output_len: int = 0
    model: str = ""
    precision: str = ""
    peers: int = 1
    message_bytes: int = 0
    low_s: float | None = None  # fastest and slowest repeat, where the source gives repeats
    high_s: float | None = None
    stack: str = ""  # software stack of a step row (calibration stacks)
    kv_precision: str = ""  # KV-cache format where the source names one (else the workload default, BF16)
    decode_attention: str = ""  # "mmha": the engine's decode attention reads the KV once per query head

    @property
    def kernel_engine(self) -> str:
        """The engine profile whose kernel fits cost this row: its stack's engine, for a stack measured on an
        engine profile's own runs (``ENGINE_OF_STACK``); else "" (the shared tables)."""
        return ENGINE_OF_STACK.get(self.stack, "")

    @property
    def label(self) -> str:
        if self.kind in STEP_KINDS:
            return (f"{self.kind} {self.model} {self.gpu} {self.precision} TP{self.tp} b={self.batch} "
                    f"isl={self.input_len} osl={self.output_len}")
        return f"{self.kind} {self.gpu} n={self.peers} {self.message_bytes} B"

    def distinct_from(self, other: MeasuredRow) -> bool:
        """True when the measurements tell the two apart: their repeat ranges do not overlap (rows
        without repeats count as points)."""
        lo_a, hi_a = self.low_s or self.measured_s, self.high_s or self.measured_s
        lo_b, hi_b = other.low_s or other.measured_s, other.high_s or other.measured_s
        return hi_a < lo_b or hi_b < lo_a

    @property
    def group(self) -> tuple:
        """Rows equal in everything but TP: the same workload on the same GPU kind and stack."""
        return (self.kind, self.model, self.gpu, self.precision, self.batch, self.input_len, self.output_len, self.stack)


def _int(value: str, default: int = 0) -> int:
    return int(value) if value not in ("", None) else default


def _stack(r: dict[str, str]) -> str:
    """A step row's stack: its ``stack`` column (``measurements_engines.csv``), else from its source.

    Raises:
        OptimizerError: the column names no stack of ``STACKS``.
    """
    stack = r.get("stack") or stack_of(r["source"], r.get("engine") or "")
    if stack not in STACKS:
        raise OptimizerError(f"measured row {r['source']!r}: stack {stack!r} is not one of {', '.join(STACKS)}")
    return stack


@cache
def reference_rows() -> tuple[MeasuredRow, ...]:
    """``measurements.csv`` rows, then the splitwise medians not already among them (``splitwise_rows``
    says which configurations are left out and why)."""
    rows: list[MeasuredRow] = []
    for r in (read_rows("measurements.csv") + read_rows("measurements_added.csv") + read_rows("measurements_static_batch.csv")
              + read_rows("measurements_engines.csv")):
        gpu = GPU_NAMES[r["gpu"]]
        kind = r["kind"]
        if kind in STEP_KINDS:
            rows.append(MeasuredRow(kind=kind, gpu=gpu, measured_s=float(r["measured_ms"]) * 1e-3, source=r["source"],
                                    tp=_int(r["tp"], 1), batch=_int(r["batch"], 1), input_len=_int(r["input_len"]),
                                    output_len=_int(r["output_len"]), model=MODEL_NAMES[r["model"]], precision=r["precision"],
                                    stack=_stack(r),
                                    kv_precision=r.get("kv_cache_precision") or "", decode_attention=r.get("decode_attention") or ""))
        else:
            rows.append(MeasuredRow(kind=kind, gpu=gpu, measured_s=float(r["measured_ms"]) * 1e-3, source=r["source"],
                                    peers=_int(r["gpus_in_group"], 2), message_bytes=_int(r["bytes"])))
    seen = {(r.kind, r.gpu, r.tp, r.batch, r.input_len, r.output_len, r.model) for r in rows}
    for r in splitwise_rows():
        if (r.kind, r.gpu, r.tp, r.batch, r.input_len, r.output_len, r.model) not in seen:
            rows.append(r)
    return tuple(rows)


SPLITWISE_SOURCE = "Mutinifni/splitwise-sim data/perf_model.csv (median of 5 repeats)"


def splitwise_rows() -> list[MeasuredRow]:
    """Prefill (``prompt_time``: the whole batch's prompts in one step) and decode (``token_time``) rows,
    the median of each configuration's repeats in splitwise-sim's ``perf_model.csv``. Left out:
    BLOOM-176B (GELU MLP and ALiBi, an architecture this planner does not model); ``h100-80gb-pcap``
    (its prompt times are exactly 1.3x ``h100-80gb``'s and its token times copies: derived, not
    measured); and Llama-2-70B at TP2, batch 64, whose prompt time is below batch 32's on every GPU
    (0.36 s vs 2.40 s on H100 for twice the tokens) and disagrees with its own end-to-end time."""
    groups: dict[tuple, list[dict[str, str]]] = {}
    seen: set[tuple] = set()
    for r in read_rows("splitwise_perf_model.csv"):
        if r["model"] not in MODEL_NAMES or r["hardware"] not in GPU_NAMES:
            continue
        if r["tensor_parallel"] == "2" and r["batch_size"] == "64":
            continue
        key = tuple(r.values())
        if key in seen:  # some blocks appear more than once in the file, row for row
            continue
        seen.add(key)
        groups.setdefault((r["model"], r["hardware"], r["tensor_parallel"], r["batch_size"], r["prompt_size"], r["token_size"]),
                          []).append(r)
    out = []
    for (model, hardware, tp, batch, prompt, tokens), members in sorted(groups.items(), key=lambda kv: tuple(
            int(v) if v.isdigit() else v for v in kv[0])):
        common = dict(gpu=GPU_NAMES[hardware], source=SPLITWISE_SOURCE, tp=int(tp), batch=int(batch), input_len=int(prompt),
                      output_len=int(tokens), model=MODEL_NAMES[model], precision="unrecorded", stack="splitwise-2023")
        for kind, column in (("prefill_ms", "prompt_time"), ("decode_ms", "token_time")):
            values = [float(m[column]) * 1e-3 for m in members]
            out.append(MeasuredRow(kind=kind, measured_s=statistics.median(values), low_s=min(values), high_s=max(values), **common))
    return out


def step_scenario(row: MeasuredRow) -> Scenario:
    """The scenario a step row measured: its model and GPU, one TP group, its batch and lengths."""
    model = model_entry(row.model)
    if model is None:
        raise OptimizerError(f"unknown catalog model {row.model!r}")
    for key in ("published_params",):
        model.pop(key, None)
    dtype = PRECISIONS[row.precision]
    return Scenario(
        name=row.label,
        cluster=cluster_for(row.gpu, num_gpus=row.tp),
        model=ModelSpec(**model),
        engine=Engine(decode_attention_shares_kv=row.decode_attention != "mmha"),
        workload=Workload(concurrent_sequences=row.batch, input_tokens=max(row.input_len, 1),
                          output_tokens=max(row.output_len, 0), weight_dtype=dtype,
                          kv_cache_dtype=PRECISIONS[row.kv_precision] if row.kv_precision else Dtype.BF16),
    )


@dataclass(frozen=True)
class StepParts:
    """A step row's predicted time split so the step-level parameters can be fitted cheaply:
    ``time = fixed + (base(sustained_compute / sustained_memory) - fixed) / sustained_memory + layers x
    layer_overhead + steps x step_overhead + sequences x sequence_overhead + skew`` (a static-batch row is
    ``steps`` forward steps: ``layers`` and ``sequences`` count over all of them).

    Exact because every roofline term is ``max(a / sustained_compute, b / sustained_memory) = max(a x r, b)
    / sustained_memory`` with ``r = sustained_memory / sustained_compute``, and the rest (launches,
    quantisation passes, collectives: ``fixed_s``) scales with neither. ``base_s`` is the real cost model
    over ``SUSTAINED_GRID`` at ``sustained_memory = 1`` (linear in 1/x between grid points)."""

    base_s: np.ndarray
    fixed_s: float
    layers: int
    sequences: int
    skew_s_per_us: float  # seconds added per microsecond of ``collective_skew_us``
    steps: int = 1  # forward steps the row times


SUSTAINED_GRID = np.linspace(0.1, 4.0, 79)  # sustained_compute / sustained_memory


def _step_base_s(row: MeasuredRow, cal: GpuCalibration) -> float:
    """The row's step time with ``cal`` (overheads included as ``cal`` has them; the kernel fits of the row's
    ``kernel_engine`` in place, where ``cal`` has them)."""
    cal = cal.with_engine_kernels(row.kernel_engine or None)
    scenario = step_scenario(row)
    layout = Layout(tp=row.tp, pp=1, dp=1, ep=1, etp=row.tp, edp=1)
    g = grid(scenario, (layout,))
    one = np.ones(1)
    model = scenario.model

    def step_s(*, tokens, seqs, context, prefill) -> float:
        phase = _phase(scenario=scenario, g=g, tokens=tokens, seqs=seqs, context=context, prefill=prefill, cal=cal)
        total = (model.num_dense_layers * phase.dense_breakdown.total_s + model.num_moe_layers * phase.moe_breakdown.total_s
                 + phase.first_breakdown.total_s + phase.last_breakdown.total_s + phase.stage_breakdown.total_s)
        return float(total[0])

    decode = dict(tokens=one * row.batch, seqs=one * row.batch, prefill=False)
    prefill = dict(tokens=one * row.batch * row.input_len, seqs=one * row.batch, context=row.input_len, prefill=True)
    if row.kind == "decode_ms":
        return step_s(**decode, context=row.input_len + row.output_len // 2)
    if row.kind == "static_batch_ms":
        return step_s(**prefill) + (row.output_len - 1) * step_s(**decode, context=row.input_len + row.output_len / 2)
    return step_s(**prefill)


def step_parts(row: MeasuredRow, cal: GpuCalibration) -> StepParts:
    """``StepParts`` of ``row`` with ``cal``'s kernel and link parameters (its step parameters ignored)."""
    zero = replace(cal.step, layer_overhead_us=0.0, step_overhead_us=0.0, collective_skew_us=0.0, sustained_memory=1.0,
                   sequence_overhead_us=0.0)

    def at(**step) -> float:
        return _step_base_s(row, replace(cal, step=replace(zero, **step)))

    base = [at(sustained_compute=float(x)) for x in SUSTAINED_GRID]
    fixed = at(sustained_compute=1e12, sustained_memory=1e12)  # every roofline term gone
    skew = at(sustained_compute=1.0, collective_skew_us=1.0) - at(sustained_compute=1.0)
    steps = max(row.output_len, 1) if row.kind == "static_batch_ms" else 1
    return StepParts(base_s=np.asarray(base), fixed_s=fixed, layers=steps * step_scenario(row).model.num_hidden_layers,
                     sequences=steps * row.batch, skew_s_per_us=skew, steps=steps)


def step_time_s(parts: StepParts, *, sustained: float, layer_overhead_us: float, step_overhead_us: float,
                collective_skew_us: float = 0.0, sustained_memory: float = 1.0, sequence_overhead_us: float = 0.0) -> float:
    """Evaluate ``StepParts`` (interpolated in 1/x, exact at the grid points)."""
    inv = 1.0 / SUSTAINED_GRID
    ratio = sustained / sustained_memory
    base = float(np.interp(1.0 / ratio, inv[::-1], parts.base_s[::-1]))
    return (parts.fixed_s + (base - parts.fixed_s) / sustained_memory + parts.layers * layer_overhead_us * 1e-6
            + parts.steps * step_overhead_us * 1e-6 + parts.sequences * sequence_overhead_us * 1e-6
            + parts.skew_s_per_us * collective_skew_us)


def step_fit_time_s(parts: StepParts, fit: StepFit) -> float:
    """``step_time_s`` with a ``StepFit``'s parameters."""
    return step_time_s(parts, sustained=fit.sustained_compute, layer_overhead_us=fit.layer_overhead_us,
                       step_overhead_us=fit.step_overhead_us, collective_skew_us=fit.collective_skew_us,
                       sustained_memory=fit.sustained_memory, sequence_overhead_us=fit.sequence_overhead_us)


def predict_row(row: MeasuredRow, calibration: Calibration) -> float:
    """The cost model's seconds for a reference row under ``calibration`` (no interpolation)."""
    cal = calibration.for_gpu(row.gpu, row.stack or None)
    if row.kind in STEP_KINDS:
        return _step_base_s(row, cal)
    cal = microbenchmark(cal)
    cluster = cluster_for(row.gpu, num_gpus=2 * row.peers if row.kind == "sendrecv_internode" else row.peers)
    if row.kind == "allreduce":
        work = Work("allreduce", bytes=float(row.message_bytes), peers=float(row.peers))
    else:
        work = Work("p2p", bytes=float(row.message_bytes), peers=2.0, offnode=1.0 if row.kind == "sendrecv_internode" else 0.0)
    return float(np.asarray(work_time_s(work, gpu=cluster.gpu, cluster=cluster, cal=cal)))
