"""Fit the cost model's parameters to measured data and write them to ``optimizer/inputs/catalog/calibration.yaml``.

    python scripts/calibrate.py            # fit, print a summary, write the catalog file
    python scripts/calibrate.py --check    # fit and compare with the shipped file (exit 1 if it differs)

Needs scipy (``pip install -e .[calibrate]``); the optimizer itself does not.

What is fitted to what (``calibration/data/``; ``optimizer/model/measured.py`` reads it):
1. Per GPU, GEMM ``launch_us``, ``compute_efficiency``, ``memory_efficiency`` (and FP8's quantisation
   cost per element) to aiconfigurator-core's measured GEMM tables (bf16, per-tensor FP8).
2. Per GPU, attention: prefill launch, compute and memory efficiency to the context-attention tables, decode
   launch and memory efficiency to the generation-attention tables (FlashAttention in vLLM; full and
   1024-token-window rows).
3. Per GPU, the intra-node link: two NCCL protocols (``base_us``, ``hop_us``, ``bandwidth_efficiency``
   each) and the link's ``contention_exponent`` to aiconfigurator's NCCL tables (all-reduce, all-gather, reduce-scatter, all-to-all on 2/4/8
   GPUs) plus, for H100, the vidur all-reduce rows of ``measurements.csv`` (weighted x20: they are the
   rows the targets name). Point-to-point: H100's intra- and inter-node send/recv rows.
4. Step parameters per software stack (``measured.STACKS``): ``sustained_compute``, ``sustained_memory``,
   ``layer_overhead_us``, ``step_overhead_us``, ``sequence_overhead_us`` and ``collective_skew_us`` to the
   whole-step rows (prefill, decode, TTFT, static batches) of that stack, with 1-3 fixed (and, for a stack
   measured on an engine's own runs, that engine's kernel fits of 5); per GPU where the stack has its rows,
   else the stack's; with a ranking hinge so that TP comparisons keep their measured order.
5. Per GPU and engine (vLLM, SGLang, TensorRT-LLM: ``measured.engine_kernel_sets``), the engine's own kernel
   fits, in the forms of 1-2, to its own aiconfigurator tables: GEMM (bf16, FP8), attention (prefill,
   decode), the fused MoE op (bf16, FP8; launch and efficiencies of the grouped GEMMs) and its custom
   all-reduce (``base_us``, ``hop_us``, ``bandwidth_efficiency`` on the messages it takes, 2/4/8 GPUs).
Every fit minimises squared log errors (relative error, symmetric in over/under) with
``scipy.optimize.least_squares``.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np
import yaml

from optimizer.model.calibration import (
    AttentionFit,
    Calibration,
    CustomAllReduceFit,
    EngineKernels,
    GemmFit,
    GpuCalibration,
    LinkFit,
    Protocol,
    StepFit,
    calibration_from_dict,
)
from optimizer.model.fit import least_squares_fit, log_error
from optimizer.model.measured import (
    CUSTOM_ALLREDUCE_MAX_BYTES,
    DATA_DIR,
    STACKS,
    STEP_KINDS,
    KernelSet,
    MeasuredRow,
    cluster_for,
    engine_kernel_sets,
    kernel_sets,
    kernel_time_s,
    predict_row,
    reference_rows,
    step_fit_time_s,
    step_parts,
)

ROOT = Path(__file__).resolve().parent.parent
CATALOG_FILE = ROOT / "optimizer" / "inputs" / "catalog" / "calibration.yaml"
FITTED_GPUS = ("h100-sxm", "h200-sxm", "a100-sxm-80gb", "b200", "l40s")
LIKE = {"h800-sxm": "h100-sxm", "a100-sxm-40gb": "a100-sxm-80gb"}  # same die, no measurements of their own
# No step rows of modern vLLM, SGLang or Megatron-Core yet: those engine profiles take the closest measured modern
# stack, TensorRT-LLM's own. vLLM's own rows (stack vllm-2024, calibration/data/measurements_engines.csv) are of
# vLLM v0.3-v0.4, before v0.6 removed most of its per-step host work (Ray workers, Python scheduling: the fit puts
# ~4 ms a step and ~80 us a sequence on them, the host time vLLM's v0.6 release notes measured and cut); as vLLM's
# default it would price every vLLM plan on that old host path (TPOT 1.7x the stand-in's on mixtral-8x7b-8xh100,
# 35.8 vs 20.7 ms; llama-3.1-70b-8xh100 gets no plan within its 50 ms TPOT), so it is opt-in
# (engine.calibration_stack: vllm-2024) until rows of a current vLLM arrive.
ENGINE_STACKS = {"vllm": "tensorrt-llm", "megatron": "tensorrt-llm", "sglang": "tensorrt-llm", "tensorrt-llm": "tensorrt-llm"}
REFERENCE_WEIGHT = 1000.0

PRIOR = GpuCalibration(
    entry="prior",
    measured=True,
    gemm={"bf16": GemmFit(4.0, 0.7, 0.8), "fp8": GemmFit(8.0, 0.6, 0.7, 0.001)},
    attention=AttentionFit(10.0, 0.5, 5.0, 0.7),
    elementwise_memory_efficiency=0.8,
    intra_node=LinkFit(protocols=(Protocol(5.0, 1.0, 0.3), Protocol(20.0, 0.5, 0.7)), p2p_base_us=None,
                       p2p_bandwidth_efficiency=0.8),
    inter_node=LinkFit(protocols=(), p2p_base_us=None, p2p_bandwidth_efficiency=0.8, bandwidth_efficiency=0.8),
    step=StepFit(1.0, 0.0, 0.0),
)


def _fit(residuals, x0, *, lower=None, upper=None, loss="linear"):
    """The package's fitting core (optimizer/model/fit.py, which optimize calibrate uses too), with the robust
    loss below for the fits that ask for it."""
    return least_squares_fit(residuals, x0, lower=lower, upper=upper, loss=loss,
                             f_scale=MOE_LOSS_SCALE if loss != "linear" else 1.0)


# Fused-MoE tables mix tuned and untuned kernel configurations: SGLang's Triton fused MoE runs 4-5x slower
# on shapes it ships no tuned config for (hidden 2048 / inter 5120 / 512 experts, hidden 2688 / inter 1856)
# and matches vLLM on those it has (hidden 2048 / inter 768 / 128 experts). A plan's model is mostly one
# the engine tunes for, so the MoE fits use a robust loss (``soft_l1`` on log errors, scale 0.2: squared
# below ~20%, linear above) that keeps those rows from dragging the efficiency of the tuned shapes down.
# The per-engine attention fits use it too: TensorRT-LLM's decode table has rows 10-20x off every other
# (64 query heads over one KV head at 16-32k tokens, read as if once per query head), which squared log
# errors let set the efficiency of the rest (H100 decode MAPE 58% with them, 33% robust).
MOE_LOSS_SCALE = 0.2
_log_err = log_error


def kernel_set(gpu: str, kind: str) -> KernelSet | None:
    return next((k for k in kernel_sets() if k.gpu == gpu and k.kind == kind), None)


def fit_gemm(gpu: str, cal: GpuCalibration) -> GpuCalibration:
    gemm = dict(cal.gemm)
    for dtype in ("bf16", "fp8"):
        ks = kernel_set(gpu, f"gemm:{dtype}")
        if ks is None:
            continue

        def make(x, dtype=dtype):
            launch, ce, me, q = np.exp(x)
            fit = GemmFit(float(launch), float(ce), float(me), float(q) if dtype == "fp8" else 0.0)
            return replace(cal, gemm={**gemm, dtype: fit})

        r = _fit(lambda x: _log_err(kernel_time_s(ks, make(x)), ks.measured_s), np.log([4.0, 0.7, 0.8, 0.001]))
        gemm[dtype] = make(r.x).gemm[dtype]
    return replace(cal, gemm=gemm)


def fit_attention(gpu: str, cal: GpuCalibration) -> GpuCalibration:
    decode, prefill = kernel_set(gpu, "attention_decode"), kernel_set(gpu, "attention_prefill")

    def make(x):
        pl, pc, dl, dm, pm = np.exp(x)
        return replace(cal, attention=AttentionFit(float(pl), float(pc), float(dl), float(dm), float(pm)),
                       elementwise_memory_efficiency=float(dm))

    def residuals(x):
        c = make(x)
        return np.concatenate([_log_err(kernel_time_s(ks, c), ks.measured_s) for ks in (decode, prefill) if ks is not None])

    r = _fit(residuals, np.log([10.0, 0.5, 5.0, 0.7, 0.7]))
    return make(r.x)


def _fit_gemm_set(ks: KernelSet, cal: GpuCalibration, *, moe: bool = False) -> GemmFit:
    """A ``GemmFit`` for one GEMM or fused-MoE table (``moe``: timed as ``Work.grouped``)."""
    dtype = ks.kind.split(":")[1]

    def make(x):
        launch, ce, me, q = np.exp(x)
        fit = GemmFit(float(launch), float(ce), float(me), float(q) if dtype == "fp8" else 0.0)
        return fit, (replace(cal, moe={**cal.moe, dtype: fit}) if moe else replace(cal, gemm={**cal.gemm, dtype: fit}))

    r = _fit(lambda x: _log_err(kernel_time_s(ks, make(x)[1]), ks.measured_s), np.log([4.0, 0.7, 0.8, 0.001]),
             loss="soft_l1" if moe else "linear")
    return make(r.x)[0]


def _fit_attention_sets(sets: list[KernelSet], cal: GpuCalibration) -> AttentionFit:
    """Prefill and decode attention together, with the robust loss (``MOE_LOSS_SCALE``): the five
    ``ATTENTION_NAMES``, the prefill kernel's memory efficiency apart from the decode kernel's (they share no
    parameter); without prefill rows the prefill parameters stay at their start and the prefill memory
    efficiency is left unset (the decode kernel's stands in)."""
    has_prefill = any(ks.kind == "attention_prefill" for ks in sets)

    def make(x):
        v = [float(t) for t in np.exp(x)]
        return replace(cal, attention=AttentionFit(*v[:4], v[4] if has_prefill else None))

    r = _fit(lambda x: np.concatenate([_log_err(kernel_time_s(ks, make(x)), ks.measured_s) for ks in sets]),
             np.log([10.0, 0.5, 5.0, 0.7, 0.7]), loss="soft_l1")
    return make(r.x).attention


def _fit_custom_allreduce(ks: KernelSet, cal: GpuCalibration, max_bytes: int) -> CustomAllReduceFit:
    """The engine's own all-reduce on the messages it takes (``max_bytes``, 0: all) and the groups it runs on:
    up to 8 GPUs, 2 where the link fit shows a shared PCIe fabric (``contention_exponent`` > 1: about 2 on
    the 8 x L40S server, under 0.1 behind an NVSwitch)."""
    max_gpus = 2 if cal.intra_node.contention_exponent > 1 else 8
    take = np.asarray(ks.work.peers) <= max_gpus
    if max_bytes:
        take &= np.asarray(ks.work.bytes) <= max_bytes
    sub = replace(ks, work=replace(ks.work, bytes=np.asarray(ks.work.bytes)[take], peers=np.asarray(ks.work.peers)[take]),
                  measured_s=ks.measured_s[take])

    def make(x):
        b, h, e = np.exp(x)
        return CustomAllReduceFit(float(b), float(h), float(e), float(max_bytes), float(max_gpus))

    r = _fit(lambda x: _log_err(kernel_time_s(sub, replace(cal, custom_allreduce=make(x))), sub.measured_s),
             np.log([5.0, 0.5, 0.5]), lower=np.log([0.1, 1e-3, 0.01]), upper=np.log([200.0, 50.0, 2.0]))
    return make(r.x)


def fit_engine_kernels(gpu: str, cal: GpuCalibration) -> dict[str, EngineKernels]:
    """Each engine's own kernel fits on ``gpu`` from its aiconfigurator tables (``measured.engine_kernel_sets``)."""
    out = {}
    for engine in sorted({k.engine for k in engine_kernel_sets() if k.gpu == gpu}):
        sets = {k.kind: k for k in engine_kernel_sets() if k.gpu == gpu and k.engine == engine}
        gemm = {k.split(":")[1]: _fit_gemm_set(ks, cal) for k, ks in sets.items() if k.startswith("gemm:")}
        attention = [sets[k] for k in ("attention_prefill", "attention_decode") if k in sets]
        moe = {k.split(":")[1]: _fit_gemm_set(ks, cal, moe=True) for k, ks in sets.items() if k.startswith("moe:")}
        custom = sets.get("custom_allreduce")
        main = next(iter(sets.values())).tables  # the GEMM table's framework and version, then other versions
        others = sorted({f"{kind.split(':')[0]} {ks.tables.split(' ', 1)[1]}" for kind, ks in sets.items() if ks.tables != main})
        out[engine] = EngineKernels(
            tables=f"aiconfigurator {main}" + (f" ({', '.join(others)})" if others else ""),
            gemm=gemm,
            attention=_fit_attention_sets(attention, cal) if attention else None,
            moe=moe,
            custom_allreduce=_fit_custom_allreduce(custom, cal, CUSTOM_ALLREDUCE_MAX_BYTES[engine]) if custom else None,
        )
    return out


def fit_intra_link(gpu: str, cal: GpuCalibration, *, exclude: frozenset[MeasuredRow] = frozenset()) -> GpuCalibration:
    """Two NCCL protocols for ``gpu``'s intra-node link (``exclude``: reference rows left out, for
    validation)."""
    ks = kernel_set(gpu, "nccl")
    refs = [r for r in reference_rows() if r.gpu == gpu and r.kind == "allreduce" and r not in exclude]

    def make(x):
        b1, h1, e1, b2, h2, e2 = np.exp(x[:6])
        link = replace(cal.intra_node, protocols=(Protocol(float(b1), float(h1), float(e1)), Protocol(float(b2), float(h2), float(e2))),
                       contention_exponent=float(x[6]) if x[6] >= 1e-3 else 0.0)  # below that: none (a switch)
        return replace(cal, intra_node=link)

    def residuals(x):
        c = make(x)
        parts = [] if ks is None else [_log_err(kernel_time_s(ks, c), ks.measured_s)]
        calib = Calibration(id="fit", sources=(), gpus={gpu: c}, default=c)
        parts.append(REFERENCE_WEIGHT ** 0.5 * np.array([_log_err(predict_row(r, calib), r.measured_s) for r in refs]))
        return np.concatenate(parts)

    lower = np.concatenate([np.log([0.5, 0.01, 0.02, 0.5, 0.01, 0.05]), [0.0]])
    upper = np.concatenate([np.log([100.0, 20.0, 1.5, 200.0, 20.0, 1.5]), [4.0]])
    r = _fit(residuals, np.concatenate([np.log([5.0, 1.0, 0.3, 20.0, 0.5, 0.7]), [0.1]]), lower=lower, upper=upper)
    fitted = make(r.x)
    protocols = tuple(sorted(fitted.intra_node.protocols, key=lambda p: p.base_us))
    return replace(fitted, intra_node=replace(fitted.intra_node, protocols=protocols))


def fit_p2p(gpu: str, cal: GpuCalibration) -> GpuCalibration:
    """Send/recv rows: intra-node bandwidth over the simple protocol's base latency; inter-node bandwidth
    over the scenario link's latency (no inter-node collectives were measured: they use that efficiency)."""
    for row in reference_rows():
        if row.gpu != gpu or row.kind not in ("sendrecv_intranode", "sendrecv_internode"):
            continue
        cluster = cluster_for(gpu, num_gpus=16)
        if row.kind == "sendrecv_intranode":
            base = max(p.base_us for p in cal.intra_node.protocols)
            eff = row.message_bytes / (cluster.intra_node_link.bandwidth_bytes_per_s * (row.measured_s - base * 1e-6))
            cal = replace(cal, intra_node=replace(cal.intra_node, p2p_base_us=base, p2p_bandwidth_efficiency=float(eff)))
        else:
            lat = cluster.inter_node_link.latency_us
            eff = row.message_bytes / (cluster.inter_node_link.bandwidth_bytes_per_s * (row.measured_s - lat * 1e-6))
            cal = replace(cal, inter_node=LinkFit(protocols=(), p2p_base_us=None, p2p_bandwidth_efficiency=float(eff),
                                                  bandwidth_efficiency=float(eff)))
    return cal


ATTENTION_NAMES = ("prefill_launch_us", "prefill_compute_efficiency", "decode_launch_us", "decode_memory_efficiency",
                   "prefill_memory_efficiency")
STEP_NAMES = ("sustained_compute", "layer_overhead_us", "step_overhead_us", "collective_skew_us", "sustained_memory",
              "sequence_overhead_us")
# The valley is not only flat but ridged: scipy's trust-region path from one start ends in different local
# minima on different BLAS kernels (the 2023 stack's batch < 64 fit: cost 2.41 with OpenBLAS's AVX2 kernels,
# 2.66 with its AVX-512 ones, 20.3% against 19.8% held-out MAPE at batch >= 64), so the shipped calibration
# and every held-out figure depended on the machine that ran them. Each stack is fitted from four starts
# (collective skew 1 or 30 us; per-layer/per-step overheads 50/1000 us or both near 0) and keeps the
# lowest cost: every start set tried (OPENBLAS_CORETYPE Haswell, SkylakeX, Prescott) then lands in the same
# minimum, the best of 32 grid starts.
STEP_STARTS = tuple(np.log([0.8, layer, step, skew, 1.0, 1.0]) for skew in (1.0, 30.0)  # STEP_NAMES order
                    for layer, step in ((50.0, 1000.0), (0.1, 0.1)))
# The per-layer and per-step overheads end at their lower bound (0.01 us) on both stacks: every step row
# is an 80-layer Llama at PP 1, so layers x per-layer + per-step (+ per-sequence at batch 1, + skew for two
# collectives per layer) is one constant to them and the fit's valley is flat (validate_cost_model.py
# prints the MAPE with the per-layer overhead held at 0-50 us: within a point). Kernel launches are
# counted per operator already (~65 us a layer in a TP2 decode step); what no row measures is a cost per
# pipeline stage beyond its send/recv.
STEP_LOWER = np.log([0.2, 0.01, 0.01, 0.001, 0.5, 0.01])
STEP_UPPER = np.log([2.0, 5000.0, 1e5, 1000.0, 2.0, 5000.0])
RIDGE = 1.0  # weight of the pull of a GPU's parameters towards its stack's (log space, like one row's error)
# Ranking (issue 3: where rows compare TP sizes of one workload, the estimate orders them as measured): a
# hinge on every pair the repeats tell apart, ``RANK_WEIGHT x max(0, RANK_MARGIN - log(t_slower / t_faster))``
# with the measured order; zero once a pair is ordered with a 2% margin, so it trades error for order only
# where the plain fit would misorder. Weight 10 and margin 2% order 193 of the 196 pairs at 8.7% in-sample
# MAPE (unweighted: 187 at 9.6%); a weight of 100 orders one pair more at 12.5%.
RANK_WEIGHT = 10.0
# No kernel streams HBM faster than a device-to-device copy: about 92% of the datasheet figure (H100 SXM:
# ~3.1 of 3.35 TB/s for a CUDA-event-timed copy or STREAM triad). A bound, not a fit.
HBM_CEILING = 0.92
RANK_MARGIN = 0.02


def ranking_pairs(rows: list[MeasuredRow]) -> list[tuple[MeasuredRow, MeasuredRow]]:
    """(faster, slower) as measured, for every two step rows of one workload, GPU and stack that differ in
    TP and whose repeats do not overlap."""
    groups: dict[tuple, list[MeasuredRow]] = {}
    for r in rows:
        groups.setdefault(r.group, []).append(r)
    pairs = []
    for members in groups.values():
        for a, b in combinations(sorted(members, key=lambda r: r.tp), 2):
            if a.tp != b.tp and a.distinct_from(b):
                pairs.append((a, b) if a.measured_s < b.measured_s else (b, a))
    return pairs


NEUTRAL = {"sustained_memory": 1.0, "sequence_overhead_us": 0.0}  # the values a parameter takes when not fitted


def free_parameters(rows: list[MeasuredRow]) -> tuple[str, ...]:
    """The step parameters a stack's rows can determine: ``sequence_overhead_us`` only where the rows span
    three batch sizes or more (else it is one with the step overhead), ``sustained_memory`` only with ten
    decode rows or more (the memory-bound steps that tell it from ``sustained_compute``); the others always."""
    free = ["sustained_compute", "layer_overhead_us", "step_overhead_us", "collective_skew_us"]
    if sum(r.kind == "decode_ms" for r in rows) >= 10:
        free.append("sustained_memory")
    if len({r.batch for r in rows}) >= 3:
        free.append("sequence_overhead_us")
    return tuple(name for name in STEP_NAMES if name in free)


def fit_steps(rows: list[MeasuredRow], cals: dict[str, GpuCalibration], parts=None, *,
              fixed: dict[str, float] | None = None) -> dict[str, dict[str, StepFit]]:
    """Step parameters per stack: ``{stack: {gpu: StepFit, "*": StepFit}}``.

    Each stack's free parameters (``free_parameters``; the rest take ``NEUTRAL``) are ``exp(shared +
    delta_gpu)``: one shared value per stack, and per GPU a deviation pulled towards 0 with weight
    ``RIDGE`` (a GPU with many rows gets its own values, a GPU with one row mostly the stack's, a GPU with
    none exactly the stack's ``"*"``). ``sustained_memory`` is capped per GPU so that weights stream at
    most at ``HBM_CEILING`` of the datasheet HBM rate (``HBM_CEILING / gemm memory_efficiency``). The residuals are each row's log
    error and the ranking hinges (``RANK_WEIGHT``); each stack is fitted from every ``STEP_STARTS`` start and
    keeps the lowest cost (one start ends in a BLAS-dependent local minimum). ``parts`` (row -> StepParts) may be passed in to reuse
    the tabulated base times. ``fixed`` (name -> value) holds parameters at a value instead of fitting
    them (validation: how much worse the rows fit with an overhead they leave at its bound)."""
    fixed = fixed or {}
    parts = parts or {r: step_parts(r, cals[r.gpu]) for r in rows}
    out: dict[str, dict[str, StepFit]] = {}
    for stack in sorted({r.stack for r in rows}):
        mine = [r for r in rows if r.stack == stack]
        free = tuple(name for name in free_parameters(mine) if name not in fixed)
        k = len(free)
        sel = [STEP_NAMES.index(name) for name in free]
        lower_p, upper_p = STEP_LOWER[sel], STEP_UPPER[sel]
        gpus = sorted({r.gpu for r in mine})
        index = {g: i for i, g in enumerate(gpus)}
        caps = {g: upper_p.copy() for g in gpus}
        if "sustained_memory" in free:
            for g in gpus:
                ceiling = HBM_CEILING / cals[g].gemm_fit("bf16").memory_efficiency if g in cals else 2.0
                caps[g][free.index("sustained_memory")] = min(upper_p[free.index("sustained_memory")], np.log(ceiling))
        position = {r: i for i, r in enumerate(mine)}
        pairs = [(position[a], position[b]) for a, b in ranking_pairs(mine)]

        def make(values, free=free) -> StepFit:
            named = {**NEUTRAL, **fixed, **{name: float(v) for name, v in zip(free, values)}}
            return StepFit(**named)

        def unpack(x, gpus=gpus, k=k):
            return x[:k], x[k:].reshape(len(gpus), k)

        def residuals(x, mine=mine, index=index, pairs=pairs, caps=caps, lower_p=lower_p):
            shared, deltas = unpack(x)
            log_t = np.empty(len(mine))
            for i, r in enumerate(mine):
                v = np.exp(np.clip(shared + deltas[index[r.gpu]], lower_p, caps[r.gpu]))
                log_t[i] = np.log(step_fit_time_s(parts[r], make(v)))
            err = log_t - np.log([r.measured_s for r in mine])
            hinge = [RANK_WEIGHT * max(0.0, RANK_MARGIN - (log_t[slow] - log_t[fast])) for fast, slow in pairs]
            return np.concatenate([err, np.asarray(hinge), RIDGE * deltas.ravel()])

        lower = np.concatenate([lower_p, np.full(k * len(gpus), -5.0)])
        upper = np.concatenate([upper_p, np.full(k * len(gpus), 5.0)])
        tries = [_fit(residuals, np.concatenate([start[sel], np.zeros(k * len(gpus))]), lower=lower, upper=upper)
                 for start in STEP_STARTS]
        r = min(tries, key=lambda t: t.cost)
        shared, deltas = unpack(r.x)
        fits = {g: make(np.exp(np.clip(shared + deltas[i], lower_p, caps[g]))) for g, i in index.items()}
        fits["*"] = make(np.exp(shared))
        out[stack] = fits
    return out


def fit_all() -> tuple[dict[str, GpuCalibration], dict[str, StepFit]]:
    cals = {}
    for gpu in FITTED_GPUS:
        cal = replace(PRIOR, entry=gpu)
        cal = fit_gemm(gpu, cal)
        cal = fit_attention(gpu, cal)
        cal = fit_intra_link(gpu, cal)
        cal = fit_p2p(gpu, cal)
        cals[gpu] = replace(cal, kernels=fit_engine_kernels(gpu, cal))
    steps = [r for r in reference_rows() if r.kind in STEP_KINDS]
    step_fits = fit_steps(steps, cals)
    for gpu in cals:
        cals[gpu] = replace(cals[gpu], steps={stack: fits[gpu] for stack, fits in step_fits.items() if gpu in fits})
    return cals, step_fits


def _geomean(values) -> float:
    return float(np.exp(np.mean(np.log(values))))


def _r(value: float) -> float:
    return float(f"{value:.4g}")


def entry_dict(cal: GpuCalibration, *, with_protocols: bool = True) -> dict:
    def link(l: LinkFit) -> dict:
        out: dict = {}
        if with_protocols and l.protocols:
            out["protocols"] = [{"base_us": _r(p.base_us), "hop_us": _r(p.hop_us), "bandwidth_efficiency": _r(p.bandwidth_efficiency)}
                                for p in l.protocols]
        if l.p2p_base_us is not None:
            out["p2p_base_us"] = _r(l.p2p_base_us)
        out["p2p_bandwidth_efficiency"] = _r(l.p2p_bandwidth_efficiency)
        out["bandwidth_efficiency"] = _r(l.bandwidth_efficiency)
        if l.contention_exponent:
            out["contention_exponent"] = _r(l.contention_exponent)
        return out

    return {
        "gemm": {d: {"launch_us": _r(f.launch_us), "compute_efficiency": _r(f.compute_efficiency),
                     "memory_efficiency": _r(f.memory_efficiency), **({"quant_ns_per_element": _r(f.quant_ns_per_element)} if f.quant_ns_per_element else {})}
                 for d, f in sorted(cal.gemm.items())},
        "attention": {k: _r(getattr(cal.attention, k)) for k in ATTENTION_NAMES if getattr(cal.attention, k) is not None},
        "elementwise_memory_efficiency": _r(cal.elementwise_memory_efficiency),
        "intra_node": link(cal.intra_node),
        "inter_node": link(cal.inter_node),
        "steps": {stack: {k: _r(getattr(f, k)) for k in STEP_NAMES} for stack, f in sorted(cal.steps.items())},
        **({"kernels": {engine: kernels_dict(k) for engine, k in sorted(cal.kernels.items())}} if cal.kernels else {}),
    }


def _gemm_dict(f: GemmFit) -> dict:
    return {"launch_us": _r(f.launch_us), "compute_efficiency": _r(f.compute_efficiency), "memory_efficiency": _r(f.memory_efficiency),
            **({"quant_ns_per_element": _r(f.quant_ns_per_element)} if f.quant_ns_per_element else {})}


def kernels_dict(k: EngineKernels) -> dict:
    out: dict = {"tables": k.tables, "gemm": {d: _gemm_dict(f) for d, f in sorted(k.gemm.items())}}
    if k.attention is not None:
        out["attention"] = {name: _r(getattr(k.attention, name)) for name in ATTENTION_NAMES
                            if getattr(k.attention, name) is not None}
    if k.moe:
        out["moe"] = {d: _gemm_dict(f) for d, f in sorted(k.moe.items())}
    if k.custom_allreduce is not None:
        c = k.custom_allreduce
        out["custom_allreduce"] = {"base_us": _r(c.base_us), "hop_us": _r(c.hop_us), "bandwidth_efficiency": _r(c.bandwidth_efficiency),
                                   "max_bytes": int(c.max_bytes), "max_gpus": int(c.max_gpus)}
    return out


def default_entry(cals: dict[str, GpuCalibration], step_fits: dict[str, dict[str, StepFit]]) -> GpuCalibration:
    """Geometric mean of the fitted GPUs. The intra-node link takes the geometric mean of each fitted
    protocol (by base latency: the low-latency one, then the high-bandwidth one) with no contention: NCCL's
    protocols cost about the same few microseconds a hop on every GPU measured (its tuning model,
    ``src/graph/tuning.cc``, has one latency table for all NVLink GPUs), where the scenario's link latency
    per hop (the form before) has no low-latency protocol and missed the held-out NCCL tables by 41-63%
    (``validate_cost_model.py --held-out-only``: 21-24% with these, 45% on the PCIe L40S). The inter-node
    link: the scenario's latency per hop at the measured efficiency."""
    fitted = list(cals.values())

    def gm(get) -> float:
        return _geomean([get(c) for c in fitted])

    gemm = {d: GemmFit(gm(lambda c: c.gemm[d].launch_us), gm(lambda c: c.gemm[d].compute_efficiency),
                       gm(lambda c: c.gemm[d].memory_efficiency),
                       gm(lambda c: c.gemm[d].quant_ns_per_element) if d == "fp8" else 0.0) for d in ("bf16", "fp8")}
    a = AttentionFit(*(gm(lambda c, k=k: getattr(c.attention, k) or c.attention.decode_memory_efficiency) for k in ATTENTION_NAMES))
    link_eff = gm(lambda c: max(p.bandwidth_efficiency for p in c.intra_node.protocols))
    protocols = tuple(Protocol(*(gm(lambda c, i=i, k=k: getattr(sorted(c.intra_node.protocols, key=lambda p: p.base_us)[i], k))
                                 for k in ("base_us", "hop_us", "bandwidth_efficiency"))) for i in range(2))
    inter = fitted[0].inter_node if fitted[0].inter_node.p2p_bandwidth_efficiency != 0.8 else PRIOR.inter_node
    inter_eff = next((c.inter_node.bandwidth_efficiency for c in fitted if c.inter_node.bandwidth_efficiency != 0.8), 0.8)
    return GpuCalibration(
        entry="default", measured=False, gemm=gemm, attention=a,
        elementwise_memory_efficiency=gm(lambda c: c.elementwise_memory_efficiency),
        intra_node=LinkFit(protocols=protocols, p2p_base_us=None, p2p_bandwidth_efficiency=link_eff, bandwidth_efficiency=link_eff),
        inter_node=replace(inter, protocols=(), p2p_base_us=None, p2p_bandwidth_efficiency=inter_eff, bandwidth_efficiency=inter_eff),
        step=StepFit(1.0, 0.0, 0.0, 0.0),
        steps={stack: fits["*"] for stack, fits in step_fits.items()},
        kernels=default_kernels(fitted),
    )


def default_kernels(fitted: list[GpuCalibration]) -> dict[str, EngineKernels]:
    """Per engine, the geometric mean of its kernel fits over the fitted GPUs that have them (each kind and
    dtype over the GPUs with that table); the custom all-reduce over the NVLink GPUs only (the default link
    has no PCIe contention), so a plan on a GPU without measurements still uses its engine's kernels."""
    out: dict[str, EngineKernels] = {}
    for engine in sorted({e for c in fitted for e in c.kernels}):
        mine = [c.kernels[engine] for c in fitted if engine in c.kernels]

        def gm(values) -> float:
            return _geomean(list(values))

        def gemm_mean(fits: list[GemmFit]) -> GemmFit:
            return GemmFit(*(gm(getattr(f, k) for f in fits) if any(getattr(f, k) for f in fits) else 0.0
                             for k in ("launch_us", "compute_efficiency", "memory_efficiency", "quant_ns_per_element")))

        gemm = {d: gemm_mean([k.gemm[d] for k in mine if d in k.gemm]) for d in sorted({d for k in mine for d in k.gemm})}
        moe = {d: gemm_mean([k.moe[d] for k in mine if d in k.moe]) for d in sorted({d for k in mine for d in k.moe})}
        attns = [k.attention for k in mine if k.attention is not None]
        attention = AttentionFit(*(gm((getattr(a, n) or a.decode_memory_efficiency) for a in attns)
                                   for n in ATTENTION_NAMES)) if attns else None
        cars = [k.custom_allreduce for k in mine if k.custom_allreduce is not None and k.custom_allreduce.max_gpus >= 8]
        custom = CustomAllReduceFit(gm(c.base_us for c in cars), gm(c.hop_us for c in cars), gm(c.bandwidth_efficiency for c in cars),
                                    cars[0].max_bytes, 8.0) if cars else None
        out[engine] = EngineKernels(tables=f"aiconfigurator {engine} (mean over the fitted GPUs)", gemm=gemm, attention=attention, moe=moe,
                                    custom_allreduce=custom)
    return out


def data_digest() -> str:
    """First 12 hex digits of the SHA-256 of every data file (name and bytes), in name order."""
    h = hashlib.sha256()
    for path in sorted(DATA_DIR.glob("*.csv")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def document(cals: dict[str, GpuCalibration], step_fits: dict[str, dict[str, StepFit]]) -> dict:
    files = sorted(p.name for p in DATA_DIR.glob("*.csv"))
    entries = {**{gpu: entry_dict(cal) for gpu, cal in cals.items()}, **{alias: {"like": target} for alias, target in LIKE.items()}}
    default = entry_dict(default_entry(cals, step_fits))
    params = hashlib.sha256(yaml.safe_dump([entries, default], sort_keys=True).encode()).hexdigest()[:8]
    return {
        "id": f"fit-{data_digest()}-{params}",
        "sources": [
            "calibration/data/measurements.csv: ../shared/reference/measurements.csv (microsoft/vidur, splitwise-sim, TensorRT-LLM docs; source per row)",
            "calibration/data/splitwise_perf_model.csv: Mutinifni/splitwise-sim data/perf_model.csv (verbatim; optimizer/model/measured.py takes the median per configuration)",
            "calibration/data/measurements_engines.csv: vLLM benchmark_latency.py runs from vllm-project/vllm pull requests 2542, 3240, 4002 "
            "(source per row)",
            "calibration/data/aiconfigurator_*.csv: NVIDIA aiconfigurator-core 0.12.0 (PyPI, Apache-2.0) measured tables, "
            "subsets by scripts/extract_aiconfigurator.py; file per row",
        ],
        "data_files": files,
        "fitted_by": "scripts/calibrate.py",
        "stacks": dict(STACKS),
        "engine_stacks": dict(ENGINE_STACKS),
        "gpus": entries,
        "default": default,
    }


HEADER = """\
# Cost-model calibration, written by scripts/calibrate.py: do not edit by hand (re-run the script).
# Forms and units: optimizer/model/calibration.py. Data: calibration/data/ (see `sources`); `id` is a digest of
# those files, and every plan names the id and the entry its GPU used.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the fit differs from the shipped file")
    args = parser.parse_args(argv)
    cals, step_fits = fit_all()
    doc = document(cals, step_fits)
    text = HEADER + yaml.safe_dump(doc, sort_keys=False, width=140)
    calibration_from_dict(yaml.safe_load(text))  # the file must load
    for gpu, cal in cals.items():
        g = cal.gemm["bf16"]
        print(f"{gpu:14s} bf16 GEMM launch {g.launch_us:5.2f} us eta_c {g.compute_efficiency:.3f} eta_m {g.memory_efficiency:.3f}; "
              "link protocols "
              + ", ".join(f"({p.base_us:.1f} us + {p.hop_us:.2f} us/step, {p.bandwidth_efficiency:.2f})" for p in cal.intra_node.protocols))
    for stack, fits in step_fits.items():
        for gpu, f in fits.items():
            print(f"{stack:15s} {gpu:14s} sustained {f.sustained_compute:.3f} compute / {f.sustained_memory:.3f} memory, "
                  f"layer overhead {f.layer_overhead_us:.1f} us, step overhead {f.step_overhead_us:.1f} us, "
                  f"{f.sequence_overhead_us:.1f} us per sequence, collective skew {f.collective_skew_us:.2f} us x log2(n)")
    if args.check:
        same = CATALOG_FILE.read_text(encoding="utf-8") == text
        print("calibration.yaml is up to date" if same else "calibration.yaml differs from a fresh fit")
        return 0 if same else 1
    CATALOG_FILE.write_text(text, encoding="utf-8")
    print(f"wrote {CATALOG_FILE.relative_to(ROOT)} ({doc['id']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
