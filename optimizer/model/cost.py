"""Latency model v2: a per-operator model with calibrated, size-dependent efficiencies, vectorised with
numpy over layouts.

Each layer of each step is a list of operators (``Work``: FLOPs, bytes moved, kernels launched, or bytes
on a link). ``work_time_s`` turns an operator into seconds with the GPU's fitted parameters
(``calibration.py``); ``work_sol_s`` gives its speed of light (datasheet peak, no launch, no latency), so
a user sees the headroom of every term.

Floats (seconds) live only here. ``integer_costs`` rounds each per-layer and per-stage term up to whole
nanoseconds once; the solver, the exhaustive oracle and the certificate all add up those integers, so
they agree exactly.

Sources:
- Roofline ``t = max(flops / (peak x eta_c), bytes / (hbm x eta_m))``: Williams, Waterman, Patterson,
  "Roofline" (CACM 2009); applied per operator as in llm-analysis and NVIDIA aiconfigurator. Our
  ``launch + roofline`` form, with parameters fitted to aiconfigurator-core's measured GEMM tables, makes
  the efficiency a function of problem size (``calibration.py``).
- Linear-layer FLOPs ``2 x tokens x params``: Kaplan et al. 2020 (arXiv 2001.08361) section 2.1.
- Attention score and value products: ``4 x heads x head_dim`` FLOPs per (query, key) pair; causal
  prefill has ``L(L+1)/2`` pairs per sequence, a window of ``W`` tokens ``W x L - W(W-1)/2`` (Mistral 7B,
  arXiv 2310.06825, section 2; gpt-oss model card for the alternating 128-token window).
- MLA: prefill runs the decompressed (MHA) form, decode the absorbed form over the latent cache
  (DeepSeek-V2, arXiv 2405.04434, section 2.1; vLLM's MLA backend does the same).
- Expected experts touched by ``n`` tokens, top-k of E uniform: ``E x (1 - (1 - k/E)^n)``; the busiest GPU
  gets ``routing_imbalance`` times the mean routed tokens (scenario input; DeepSeek-V3 report section
  3.4 on EPLB for why it is above 1 in practice).
- Collectives: bus bytes of ring all-reduce ``2(n-1)/n x S``, all-gather and all-to-all ``(n-1)/n x S``
  (Thakur, Rabenseifner, Gropp, IJHPCA 2005), with NCCL's per-protocol latency/bandwidth form.
- Pipeline decode with ``m = min(PP, batch)`` micro-batches in flight (vLLM's virtual engines): time per
  output token ``max(m x (slowest stage + hop), sum of stages + (PP - 1) hops)``. Every stage runs its own
  forward step per micro-batch, so each stage pays the step's fixed cost (``stage_works``: launch and
  scheduling, the calibration's ``step_overhead_us``), and with PP > 1 a stage's GPU is busy with the
  micro-batch's send/recv before it takes the next (vLLM ``IntermediateTensors`` over
  ``get_pp_group().send_tensor_dict`` / ``recv_tensor_dict``, NCCL point-to-point on the stage's stream,
  v1/worker/gpu_worker.py ``execute_model``): one hop per micro-batch per stage in the steady state.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from optimizer.model.calibration import Calibration, CustomAllReduceFit, GpuCalibration, LinkFit, calibration_for
from optimizer.model.engines import (a2a_dispatch_dtype, chunked_prefill, deepep_mode, ffn_tp, lm_head_tp, physical_experts, prefill_rides_decode,
                                     tbo_expert_sm_share, tbo_order, ttft_model)
from optimizer.model.memory import ACTIVATION_BYTES, HIGH_PRECISION, LOGITS_BYTES, kv_cache_bytes_per_token_layer, kv_heads_per_rank
from optimizer.model.workload_features import (draft_layers, draft_passes, draft_scenario, expected_tokens_per_step, per_token_ns,
                                                uncached_pair_share, uncached_prompt_tokens, verify_tokens_per_sequence)
from optimizer.model.parallel import Layout, batch_per_replica, ep_offnode_fraction, pp_inter_node_boundaries, tp_intra_node
from optimizer.inputs.scenario import Cluster, ComputeDtype, DeepepMode, GpuSpec, Link, ModelSpec, Scenario, TtftModel, Workload
from optimizer.errors import OptimizerError
from optimizer.units import ceil_div

COMPUTE_KINDS = ("gemm", "attention_prefill", "attention_decode", "elementwise")
COLLECTIVE_KINDS = ("allreduce", "allgather", "alltoall", "p2p")


@dataclass(frozen=True)
class Work:
    """One operator on one GPU for one step; array fields have one entry per layout.

    - compute kinds: ``flops`` and ``bytes`` (HBM traffic) on one GPU, ``kernels`` launched, ``dtype``
      the GEMM format ("bf16", "fp8", "fp4"), ``quant_elements`` activations quantised (FP8: ``m x k``);
    - collective kinds: ``bytes`` is the message S (all-reduce: the buffer each rank holds; all-gather:
      the gathered output; all-to-all: what each rank holds before the exchange; p2p: what is sent),
      ``peers`` the group size n, ``offnode`` the share of the traffic that crosses nodes (0..1);
    - ``overhead``: the calibration's fixed term named by ``dtype`` ("layer" or "step");
    - ``repeat``: how many times it runs (a fraction for sliding-window layers mixed with full ones);
    - ``grouped``: a GEMM that is the routed experts' fused-MoE op (its own calibration fit).
    """

    kind: str
    flops: np.ndarray | float = 0.0
    bytes: np.ndarray | float = 0.0
    kernels: float = 1.0
    dtype: str = "bf16"
    quant_elements: np.ndarray | float = 0.0
    peers: np.ndarray | float = 1.0
    offnode: np.ndarray | float = 0.0
    repeat: np.ndarray | float = 1.0
    grouped: bool = False  # a fused-MoE grouped GEMM: timed with the calibration's MoE fit (``GpuCalibration.moe_fit``)


def _gemm_dtype(gpu: GpuSpec, compute: ComputeDtype) -> str:
    """The GEMM fit and peak a weight format runs at: FP8/FP4 where the GPU has that peak, else BF16."""
    return compute.value if compute in gpu.dense_tflops else "bf16"


def _collective_s(*, kind: str, message, peers, link: Link, fit: LinkFit):
    """One collective over one link kind (seconds, elementwise); 0 where ``peers <= 1`` or nothing moves."""
    n = np.maximum(np.asarray(peers, dtype=float), 1.0)
    message = np.asarray(message, dtype=float)
    if kind == "allreduce":
        bus, steps = 2 * (n - 1) / n * message, 2 * (n - 1)
    elif kind == "allgather":
        bus, steps = (n - 1) / n * message, n - 1
    elif kind == "alltoall":
        bus, steps = (n - 1) / n * message, np.ones_like(n)
    else:  # p2p
        bus, steps = message, np.ones_like(n)
    bandwidth = float(link.bandwidth_bytes_per_s) / np.maximum(n / 2, 1.0) ** fit.contention_exponent
    if kind == "p2p" and fit.p2p_base_us is not None:
        t = fit.p2p_base_us * 1e-6 + bus / (bandwidth * fit.p2p_bandwidth_efficiency)
    elif fit.protocols:
        t = np.min([p.base_us * 1e-6 + steps * p.hop_us * 1e-6 + bus / (bandwidth * p.bandwidth_efficiency)
                    for p in fit.protocols], axis=0)
    else:  # uncalibrated link: the scenario's latency per hop
        t = steps * link.latency_us * 1e-6 + bus / (bandwidth * fit.bandwidth_efficiency)
    active = (n > 1) if kind != "p2p" else np.ones_like(n, dtype=bool)
    return np.where(active & (message > 0), t, 0.0)


CUSTOM_ALLREDUCE_WORLD_SIZES = (2, 4, 6, 8)  # vLLM/SGLang CustomAllreduce._SUPPORTED_WORLD_SIZES


def custom_allreduce_s(*, message, peers, link: Link, fit: CustomAllReduceFit):
    """An engine's own intra-node all-reduce (seconds, elementwise; ``inf`` where the engine would not use
    it: a group size it does not support or over ``fit.max_gpus``, a message over ``fit.max_bytes``). Form:
    ``calibration.CustomAllReduceFit``."""
    n = np.maximum(np.asarray(peers, dtype=float), 1.0)
    message = np.asarray(message, dtype=float)
    t = (fit.base_us * 1e-6 + 2 * (n - 1) * fit.hop_us * 1e-6
         + 2 * (n - 1) / n * message / (float(link.bandwidth_bytes_per_s) * fit.bandwidth_efficiency))
    usable = np.isin(n, CUSTOM_ALLREDUCE_WORLD_SIZES) & (n <= fit.max_gpus) & ((fit.max_bytes <= 0) | (message <= fit.max_bytes))
    return np.where(usable, t, np.inf)


def work_time_s(work: Work, *, gpu: GpuSpec, cluster: Cluster, cal: GpuCalibration):
    """Seconds ``work`` takes on one GPU with calibration ``cal`` (array over layouts, or a float)."""
    repeat = work.repeat
    if work.kind == "overhead":  # ``dtype`` names which fixed term: "layer", "step" or "sequence" (x repeat)
        us = {"layer": cal.step.layer_overhead_us, "step": cal.step.step_overhead_us,
              "sequence": cal.step.sequence_overhead_us}[work.dtype]
        return repeat * 1e-6 * us
    if work.kind in COLLECTIVE_KINDS:
        off = np.asarray(work.offnode, dtype=float)
        message = np.asarray(work.bytes, dtype=float)
        peers = np.asarray(work.peers, dtype=float)
        skew = 0.0
        if work.kind != "p2p":  # the slowest of n ranks starts it: log2(n) x skew (calibration.StepFit)
            skew = np.where((peers > 1) & (message > 0), cal.step.collective_skew_us * 1e-6 * np.log2(np.maximum(peers, 1.0)), 0.0)
        if work.kind in ("allreduce", "allgather"):  # a ring is as slow as its slowest hop
            intra = _collective_s(kind=work.kind, message=message, peers=peers, link=cluster.intra_node_link, fit=cal.intra_node)
            if work.kind == "allreduce" and cal.custom_allreduce is not None:  # the engine's own kernel where faster
                custom = custom_allreduce_s(message=message, peers=peers, link=cluster.intra_node_link, fit=cal.custom_allreduce)
                intra = np.where((peers > 1) & (message > 0), np.minimum(intra, custom), intra)
            inter = _collective_s(kind=work.kind, message=message, peers=peers, link=cluster.inter_node_link, fit=cal.inter_node)
            return repeat * (np.where(off > 0, inter, intra) + skew)
        on_node = _collective_s(kind=work.kind, message=message * (1 - off), peers=peers,
                                link=cluster.intra_node_link, fit=cal.intra_node)
        off_node = _collective_s(kind=work.kind, message=message * off, peers=peers,
                                 link=cluster.inter_node_link, fit=cal.inter_node)
        if work.kind == "p2p":  # a hop across nodes is no faster than the same hop over NVLink: NCCL's send/recv
            # pays the same kernel and proxy setup (the fitted intra-node ``p2p_base_us``) before the network's
            # latency, which the scenario's inter-node alpha alone leaves out
            off_node = np.where(message * off > 0, np.maximum(off_node, _collective_s(
                kind="p2p", message=message * off, peers=peers, link=cluster.intra_node_link, fit=cal.intra_node)), off_node)
        return repeat * (np.maximum(on_node, off_node) + skew)
    hbm = float(gpu.hbm_bytes_per_s)
    sustained, streamed = cal.step.sustained_compute, cal.step.sustained_memory
    if work.kind == "gemm":
        fit = cal.moe_fit(work.dtype) if work.grouped else cal.gemm_fit(work.dtype)
        peak = gpu.peak_flops_per_s(ComputeDtype(work.dtype))
        t = (work.kernels * fit.launch_us * 1e-6
             + np.maximum(work.flops / (peak * fit.compute_efficiency * sustained), work.bytes / (hbm * fit.memory_efficiency * streamed))
             + fit.quant_ns_per_element * 1e-9 * work.quant_elements)
    elif work.kind == "attention_prefill":
        a = cal.attention
        peak = gpu.peak_flops_per_s(ComputeDtype.BF16)
        t = work.kernels * a.prefill_launch_us * 1e-6 + np.maximum(
            work.flops / (peak * a.prefill_compute_efficiency * sustained), work.bytes / (hbm * a.prefill_memory * streamed))
    elif work.kind == "attention_decode":
        a = cal.attention
        peak = gpu.peak_flops_per_s(ComputeDtype.BF16)
        t = work.kernels * a.decode_launch_us * 1e-6 + np.maximum(
            work.flops / (peak * a.prefill_compute_efficiency * sustained), work.bytes / (hbm * a.decode_memory_efficiency * streamed))
    elif work.kind == "elementwise":
        t = work.kernels * cal.gemm_fit("bf16").launch_us * 1e-6 + work.bytes / (hbm * cal.elementwise_memory_efficiency * streamed)
    else:
        raise OptimizerError(f"internal: unknown operator kind {work.kind!r}")
    return repeat * t


def work_sol_s(work: Work, *, gpu: GpuSpec, cluster: Cluster):
    """Speed of light: datasheet peak FLOP/s, HBM and link bandwidth, no launch or latency terms."""
    if work.kind == "overhead":
        return 0.0 * work.repeat
    if work.kind in COLLECTIVE_KINDS:
        n = np.maximum(np.asarray(work.peers, dtype=float), 1.0)
        message = np.asarray(work.bytes, dtype=float)
        factor = {"allreduce": 2 * (n - 1) / n, "allgather": (n - 1) / n, "alltoall": (n - 1) / n, "p2p": np.ones_like(n)}[work.kind]
        off = np.asarray(work.offnode, dtype=float)
        intra, inter = cluster.intra_node_link.bandwidth_bytes_per_s, cluster.inter_node_link.bandwidth_bytes_per_s
        if work.kind in ("allreduce", "allgather"):
            t = factor * message / np.where(off > 0, inter, intra)
        else:
            t = np.maximum(factor * message * (1 - off) / intra, factor * message * off / inter)
        active = (n > 1) if work.kind != "p2p" else True
        return work.repeat * np.where(active, t, 0.0)
    dtype = ComputeDtype(work.dtype) if work.kind == "gemm" else ComputeDtype.BF16
    return work.repeat * np.maximum(work.flops / gpu.peak_flops_per_s(dtype), work.bytes / float(gpu.hbm_bytes_per_s))


@dataclass(frozen=True)
class LayerTime:
    """Seconds of each operator (one layer, or a stage's extras, on one GPU), one entry per layout, with
    each operator's speed of light beside it."""

    ops: dict[str, np.ndarray]
    sol: dict[str, np.ndarray]
    kinds: dict[str, str] = dataclasses.field(default_factory=dict)  # operator -> Work.kind
    # collectives: operator -> (NVLink bytes, inter-node bytes) one GPU puts on its links (``wire_bytes``)
    wire: dict[str, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)

    @property
    def total_s(self) -> np.ndarray:
        return sum(self.ops.values()) if self.ops else np.zeros(0)

    def row(self, i: int) -> dict[str, float]:
        return {name: float(t[i]) for name, t in self.ops.items()}

    def sol_row(self, i: int) -> dict[str, float]:
        return {name: float(t[i]) for name, t in self.sol.items()}

    def wire_row(self, i: int) -> dict[str, tuple[float, float]]:
        return {name: (float(on[i]), float(off[i])) for name, (on, off) in self.wire.items()}


def wire_bytes(work: Work, *, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Bus bytes one GPU sends for a collective, ``(over NVLink, across nodes)``, repeats included: the
    ``(n-1)/n x S`` (all-to-all, all-gather) or ``2(n-1)/n x S`` (ring all-reduce) of ``_collective_s``, a ring
    wholly across nodes where any hop is (as ``work_time_s`` costs it), an all-to-all split by ``offnode``."""
    zero = np.zeros(size)
    n = np.maximum(np.asarray(work.peers, dtype=float), 1.0) + zero
    message = np.asarray(work.bytes, dtype=float) + zero
    off = np.asarray(work.offnode, dtype=float) + zero
    factor = {"allreduce": 2 * (n - 1) / n, "allgather": (n - 1) / n, "alltoall": (n - 1) / n, "p2p": np.ones_like(n)}[work.kind]
    bus = factor * message * work.repeat
    if work.kind in ("allreduce", "allgather"):
        return np.where(off > 0, 0.0, bus), np.where(off > 0, bus, 0.0)
    return bus * (1 - off), bus * off


def timed(works: dict[str, Work], *, scenario: Scenario, cal: GpuCalibration, size: int) -> LayerTime:
    """Time and speed of light of every operator, broadcast to ``size`` layouts."""
    gpu, cluster = scenario.cluster.gpu, scenario.cluster
    zero = np.zeros(size)
    return LayerTime(
        ops={k: zero + work_time_s(w, gpu=gpu, cluster=cluster, cal=cal) for k, w in works.items()},
        sol={k: zero + work_sol_s(w, gpu=gpu, cluster=cluster) for k, w in works.items()},
        kinds={k: w.kind for k, w in works.items()},
        wire={k: wire_bytes(w, size=size) for k, w in works.items() if w.kind in COLLECTIVE_KINDS},
    )


# --- the operators of a layer -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    """Layout sizes as float arrays (one entry per layout) and the per-layout facts the operators use."""

    tp: np.ndarray
    pp: np.ndarray
    dp: np.ndarray
    ep: np.ndarray
    etp: np.ndarray
    edp: np.ndarray
    batch: np.ndarray  # sequences per replica
    microbatches: np.ndarray  # decode micro-batches in flight per replica
    ffn_tp: np.ndarray  # tensor-parallel width of the dense FFN (engines.ffn_tp: TP, or SGLang's --tp-size)
    head_tp: np.ndarray  # vocab-parallel width of the LM head (engines.lm_head_tp)
    head_offnode: np.ndarray  # 1.0 where the LM head's group spans nodes
    kv_bytes_per_token: np.ndarray  # one layer, one GPU
    kv_heads_local: np.ndarray
    tp_offnode: np.ndarray  # 1.0 where a TP group spans nodes
    etp_offnode: np.ndarray
    ffn_offnode: np.ndarray  # 1.0 where the dense FFN's group (ffn_tp consecutive ranks) spans nodes
    ep_offnode: np.ndarray  # share of EP peers on other nodes
    pp_offnode: np.ndarray  # 1.0 where some PP hop crosses nodes


def grid(scenario: Scenario, layouts: tuple[Layout, ...], batches: tuple[int, ...] | None = None) -> _Grid:
    """Per-layout facts; ``batches`` (sequences per replica) default to ``ceil(concurrent_sequences / DP)``."""
    model, workload, cluster = scenario.model, scenario.workload, scenario.cluster
    gpn = cluster.gpus_per_node

    def col(values) -> np.ndarray:
        return np.asarray(list(values), dtype=float)

    if batches is None:
        batches = tuple(batch_per_replica(concurrent_sequences=workload.concurrent_sequences, dp=lay.dp) for lay in layouts)
    return _Grid(
        tp=col(lay.tp for lay in layouts),
        pp=col(lay.pp for lay in layouts),
        dp=col(lay.dp for lay in layouts),
        ep=col(lay.ep for lay in layouts),
        etp=col(lay.etp for lay in layouts),
        edp=col(lay.edp for lay in layouts),
        batch=col(batches),
        microbatches=col(min(lay.pp, b) for lay, b in zip(layouts, batches)),
        ffn_tp=col(ffn_tp(scenario, lay) for lay in layouts),
        head_tp=col(lm_head_tp(scenario, lay) for lay in layouts),
        head_offnode=col(0.0 if tp_intra_node(tp=lm_head_tp(scenario, lay), gpus_per_node=gpn) else 1.0 for lay in layouts),
        kv_bytes_per_token=col(kv_cache_bytes_per_token_layer(model=model, workload=workload, tp=lay.tp) for lay in layouts),
        kv_heads_local=col(kv_heads_per_rank(model=model, tp=lay.tp) for lay in layouts),
        tp_offnode=col(0.0 if tp_intra_node(tp=lay.tp, gpus_per_node=gpn) else 1.0 for lay in layouts),
        etp_offnode=col(0.0 if tp_intra_node(tp=lay.etp, gpus_per_node=gpn) else 1.0 for lay in layouts),
        ffn_offnode=col(0.0 if tp_intra_node(tp=ffn_tp(scenario, lay), gpus_per_node=gpn) else 1.0 for lay in layouts),
        ep_offnode=col(ep_offnode_fraction(ep=lay.ep, etp=lay.etp, gpus_per_node=gpn) for lay in layouts),
        pp_offnode=col(1.0 if pp_inter_node_boundaries(tp=lay.tp, dp=lay.dp, pp=lay.pp, gpus_per_node=gpn) else 0.0 for lay in layouts),
    )


def causal_pairs(length, window: int | None):
    """(query, key) pairs one causal sequence of ``length`` tokens scores: ``L(L+1)/2``, or with a
    window of ``W`` keys ``W x L - W(W-1)/2`` once ``L > W``."""
    length = np.asarray(length, dtype=float)
    full = length * (length + 1) / 2
    if window is None:
        return full
    return np.where(length > window, window * length - window * (window - 1) / 2, full)


def _bytes(values, dtype_bits) -> np.ndarray:
    return np.asarray(values, dtype=float) * float(dtype_bits) / 8


def attention_works(*, model: ModelSpec, workload: Workload, gpu: GpuSpec, g: _Grid, tokens, seqs, context,
                    prefill: bool, tp_allreduces=2.0, shares_kv: bool = True) -> dict[str, Work]:
    """QKV projection, attention core (full and sliding-window layers in their shares), output
    projection, norms and elementwise work, and the two TP all-reduces, for ``tokens`` tokens from
    ``seqs`` sequences attending over ``context`` tokens each (prefill: the prompt; decode: the cache).

    Decode attention reads this rank's KV cache once (``shares_kv``: GQA-aware kernels), or once per query
    head, ``ceil(heads / TP) / kv_heads_local`` times (``engine.decode_attention_shares_kv`` false: TensorRT-LLM's
    masked MHA kernel before the XQA kernel of v0.8, which its blog credits with 2.4x Llama-70B throughput at
    ISL/OSL 128/2048 on H200, "reducing data loading": NVIDIA/TensorRT-LLM docs/source/blogs/XQA-kernel.md)."""
    h, nh = model.hidden_size, model.num_attention_heads
    act = ACTIVATION_BYTES
    wbits = workload.weight_dtype.bits
    dtype = _gemm_dtype(gpu, workload.weight_dtype.compute)
    heads = np.ceil(nh / g.tp)
    quant = tokens * h if dtype == "fp8" else 0.0
    if model.is_mla:
        qk, v = model.qk_nope_head_dim + model.qk_rope_head_dim, model.v_head_dim  # type: ignore[operator]
        replicated = h * (model.kv_lora_rank + model.qk_rope_head_dim)  # type: ignore[operator]
        sharded = model.kv_lora_rank * nh * (model.qk_nope_head_dim + v)  # type: ignore[operator]
        if model.q_lora_rank is None:
            sharded += h * nh * qk
        else:
            replicated += h * model.q_lora_rank
            sharded += model.q_lora_rank * nh * qk
        qkv_params = replicated + sharded / g.tp
        qkv_kernels = 4.0
        o_in = heads * v
    else:
        d = model.attn_head_dim
        qkv_params = h * (heads + 2 * g.kv_heads_local) * d
        qkv_kernels = 1.0
        o_in = heads * d
    works = {
        "qkv_proj": Work("gemm", flops=2.0 * tokens * qkv_params, kernels=qkv_kernels, dtype=dtype, quant_elements=quant,
                         bytes=_bytes(qkv_params, wbits) + act * tokens * (h + qkv_params / h)),
        "o_proj": Work("gemm", flops=2.0 * tokens * o_in * h, dtype=dtype, quant_elements=tokens * o_in if dtype == "fp8" else 0.0,
                       bytes=_bytes(o_in * h, wbits) + act * tokens * (o_in + h)),
    }
    # Attention core over this rank's heads; sliding-window layers take their share.
    sliding = model.num_sliding_layers / model.num_hidden_layers
    windows = [("attention", None, 1.0 - sliding)]
    if sliding:
        windows.append(("attention_sliding", model.local_attention_window, sliding))
    for name, window, share in windows:
        if share <= 0:
            continue
        if prefill:
            if model.is_mla:
                qk_dim, v_dim = model.qk_nope_head_dim + model.qk_rope_head_dim, model.v_head_dim  # type: ignore[operator]
                kv_width = heads * (qk_dim + v_dim)
            else:
                qk_dim = v_dim = model.attn_head_dim
                kv_width = 2 * g.kv_heads_local * qk_dim
            pairs = seqs * causal_pairs(context, window)
            flops = 2.0 * heads * (qk_dim + v_dim) * pairs
            moved = act * tokens * (heads * (qk_dim + v_dim) + kv_width)
            works[name] = Work("attention_prefill", flops=flops, bytes=moved, repeat=share)
        else:
            span = np.minimum(context, window) if window is not None else context
            if model.is_mla:  # absorbed: scores over the latent + rope width, values over the latent
                per_pair = 2.0 * (2 * model.kv_lora_rank + model.qk_rope_head_dim)  # type: ignore[operator]
            else:
                per_pair = 4.0 * model.attn_head_dim
            # every query token scores the cache: ``tokens`` (= seqs, or seqs x (1 + k) when a speculative verify
            # step checks k drafts per sequence); the cache is read once per sequence (``rereads`` times for a
            # kernel that reads each KV head once per query head)
            flops = per_pair * heads * tokens * span
            rereads = 1.0 if shares_kv or model.is_mla else np.maximum(heads / g.kv_heads_local, 1.0)
            moved = seqs * span * g.kv_bytes_per_token * rereads + act * tokens * 2 * o_in
            works[name] = Work("attention_decode", flops=flops, bytes=moved, repeat=share)
    # RMSNorm x2 (residual add fused), rotary on q and k, plus the KV-cache write.
    works["norms_elementwise"] = Work("elementwise", kernels=3.0,
                                      bytes=act * tokens * (8 * h + 2 * qkv_params / h) + tokens * g.kv_bytes_per_token)
    # After o_proj and after the FFN (or MoE block); ``tp_allreduces`` is 1 where the dense FFN reduces
    # over its own, wider group (``ffn_works``).
    works["tp_allreduce"] = Work("allreduce", bytes=tokens * h * act, peers=g.tp, offnode=g.tp_offnode, repeat=tp_allreduces)
    return works


def hit_probability(*, slots: int, group_slots, k: int):
    """Probability that a token's ``k`` distinct experts, drawn uniformly from ``slots`` expert slots, include
    at least one of a group of ``group_slots`` slots (a GPU's or a node's): ``1 - C(P - s, k) / C(P, k)``,
    the hypergeometric form of ``1 - (1 - s/P)^k``. Elementwise over ``group_slots``."""
    s = np.minimum(np.asarray(group_slots, dtype=float), slots)
    miss = np.ones_like(s)
    for i in range(k):
        miss = miss * np.maximum(slots - s - i, 0.0) / (slots - i)
    return 1.0 - miss


@dataclass(frozen=True)
class EpExchange:
    """Parameters of the MoE token exchange of one step (``engines.deepep_mode``, ``a2a_dispatch_dtype``)."""

    mode: DeepepMode | None  # None: the engine's default all-to-all (every top-k copy, BF16)
    dispatch_bits: float  # per hidden value on the wire (FP8: 8 + 32/128 for the per-128 FP32 scales)
    slots: int  # expert slots per layer, num_experts + num_redundant_experts


def ep_exchange(scenario: Scenario, *, prefill: bool) -> EpExchange:
    return EpExchange(mode=deepep_mode(scenario, prefill=prefill), dispatch_bits=float(a2a_dispatch_dtype(scenario).bits),
                      slots=physical_experts(scenario))


def ep_nodes(g: _Grid, gpus_per_node: int) -> np.ndarray:
    """Nodes one EP group spans (``ep x etp`` ranks, ``etp`` consecutive), as ``parallel.ep_offnode_fraction``
    places them: 1 inside a node; ``ep x etp / gpus_per_node`` when the group tiles whole nodes; else every
    peer on its own node (conservative, as ``ep_offnode_fraction`` is)."""
    block = g.ep * g.etp
    tiles = (np.mod(block, gpus_per_node) == 0) & (np.mod(gpus_per_node, g.etp) == 0)
    return np.where(np.mod(gpus_per_node, block) == 0, 1.0, np.where(tiles, block / gpus_per_node, g.ep))


def _a2a(*, intra_bytes, inter_bytes, peers) -> Work:
    """An all-to-all whose bus bytes are ``intra_bytes`` on NVLink and ``inter_bytes`` across nodes (per GPU):
    the message ``S`` and off-node share that ``work_time_s``'s ``(n-1)/n x S`` form turns back into them."""
    n = np.maximum(np.asarray(peers, dtype=float), 1.0)
    total = np.asarray(intra_bytes, dtype=float) + np.asarray(inter_bytes, dtype=float)
    message = np.where(n > 1, total * n / np.maximum(n - 1, 1.0), 0.0)
    off = np.where(total > 0, np.asarray(inter_bytes, dtype=float) / np.where(total > 0, total, 1.0), 0.0)
    return Work("alltoall", bytes=message, peers=n, offnode=off)


def ep_exchange_works(*, model: ModelSpec, g: _Grid, tokens, exchange: EpExchange, gpus_per_node: int) -> dict[str, Work]:
    """The MoE token exchange of one layer on one GPU, which sends its ``tokens / TP`` tokens:

    - no DeepEP (``ep_alltoall``): every top-k copy, BF16, dispatch and combine alike (the engines' default
      collectives: vLLM ``allgather_reducescatter``/naive, SGLang's standard dispatcher);
    - DeepEP low-latency (``ep_dispatch``, ``ep_combine``): one RDMA write per (token, expert), so every
      top-k copy still travels, the dispatch at ``exchange.dispatch_bits`` (DeepEP ``low_latency_dispatch(...,
      use_fp8=True)``, SGLang ``token_dispatcher/deepep.py``), the combine in BF16;
    - DeepEP normal (``ep_dispatch``, ``ep_combine``): a token goes once to each destination *node* over RDMA
      and is forwarded there over NVLink once per destination *GPU* (DeepEP ``get_dispatch_layout``:
      ``num_tokens_per_rdma_rank``, ``is_token_in_rank``; README "asymmetric-domain bandwidth forwarding"), the
      combine reduces on the node before the one RDMA send back. Off-node bytes per token: ``(N - 1) x
      p(node)``, NVLink bytes ``(EP - 1) x p(GPU)``, with ``p`` the ``hit_probability`` of a node's and a GPU's
      expert slots under uniform routing (DeepSeek-V3's node-limited routing, at most 4 nodes a token, is not
      modelled: conservative where EP spans more than 4 nodes).

    Units: bytes per GPU per layer. Shapes: arrays over layouts."""
    h, k = model.hidden_size, model.num_experts_per_tok
    sent = tokens / g.tp
    if exchange.mode is None:
        return {"ep_alltoall": Work("alltoall", bytes=sent * k * h * ACTIVATION_BYTES, peers=g.ep, offnode=g.ep_offnode, repeat=2.0)}
    dispatch_bytes, combine_bytes = exchange.dispatch_bits / 8, float(ACTIVATION_BYTES)
    if exchange.mode is DeepepMode.LOW_LATENCY:
        return {"ep_dispatch": Work("alltoall", bytes=sent * k * h * dispatch_bytes, peers=g.ep, offnode=g.ep_offnode),
                "ep_combine": Work("alltoall", bytes=sent * k * h * combine_bytes, peers=g.ep, offnode=g.ep_offnode)}
    nodes = ep_nodes(g, gpus_per_node)
    node_copies = (nodes - 1) * hit_probability(slots=exchange.slots, group_slots=exchange.slots / nodes, k=k)
    gpu_copies = (g.ep - 1) * hit_probability(slots=exchange.slots, group_slots=exchange.slots / g.ep, k=k)
    works = {}
    for name, width in (("ep_dispatch", dispatch_bytes), ("ep_combine", combine_bytes)):
        works[name] = _a2a(intra_bytes=sent * gpu_copies * h * width, inter_bytes=sent * node_copies * h * width, peers=g.ep)
    return works


def ffn_works(*, model: ModelSpec, workload: Workload, gpu: GpuSpec, g: _Grid, tokens, dense: bool,
              routing_imbalance: float, exchange: EpExchange | None = None, gpus_per_node: int = 8) -> dict[str, Work]:
    """A dense SwiGLU FFN over TP, or a MoE block: router, routed experts (grouped GEMMs over the experts
    this GPU holds, the busiest GPU's tokens), shared experts over TP, the EP token exchange
    (``ep_exchange_works``; default: the engines' plain all-to-all) and the ETP all-reduce."""
    h, act = model.hidden_size, ACTIVATION_BYTES
    wbits = workload.weight_dtype.bits
    dtype = _gemm_dtype(gpu, workload.weight_dtype.compute)
    if dense:
        # Over ``ffn_tp`` ranks; where that is wider than TP (SGLang's attention DP) each rank first gathers
        # the tokens of the ``ffn_tp / TP`` attention-DP ranks, and the output is reduced over ``ffn_tp``.
        # Every rank is taken to bring as many tokens as this one: the loaded case (SGLang steps its DP
        # ranks together), conservative for a lone prompt's prefill.
        w = model.dense_ffn_width / g.ffn_tp
        gathered = tokens * g.ffn_tp / g.tp
        works = {
            "gate_up_proj": Work("gemm", flops=2.0 * gathered * h * 2 * w, dtype=dtype,
                                 quant_elements=gathered * h if dtype == "fp8" else 0.0,
                                 bytes=_bytes(2 * h * w, wbits) + act * gathered * (h + 2 * w)),
            "act_elementwise": Work("elementwise", bytes=act * gathered * 3 * w),
            "down_proj": Work("gemm", flops=2.0 * gathered * w * h, dtype=dtype, quant_elements=gathered * w if dtype == "fp8" else 0.0,
                              bytes=_bytes(w * h, wbits) + act * gathered * (w + h)),
        }
        if np.any(g.ffn_tp > g.tp):  # gather + reduce-scatter over the FFN group: one all-reduce's bus bytes
            works["ffn_allreduce"] = Work("allreduce", bytes=gathered * h * act, peers=g.ffn_tp, offnode=g.ffn_offnode,
                                          repeat=np.where(g.ffn_tp > g.tp, 1.0, 0.0))
        return works
    k, num_experts = model.num_experts_per_tok, model.num_experts
    exchange = exchange or EpExchange(mode=None, dispatch_bits=16.0, slots=num_experts)
    slots = exchange.slots  # with R redundant replicas the E + R slots share the routed tokens
    edtype = _gemm_dtype(gpu, workload.experts_dtype.compute)
    width = model.expert_width / g.etp
    # Tokens whose experts sit on this GPU: the pool's tokens x k spread over its EP ranks (the TP ranks
    # of one replica hold the same tokens; with EP x ETP > TP they are split, not repeated).
    # The busiest EP rank holds ceil(P / EP) of the P = E + R expert slots (vLLM spreads a remainder of
    # E / EP over the first ranks: fused_moe/layer.py determine_expert_map), so it gets that share of the
    # routed tokens. EPLB's replicas are taken to spread the load no better than ``routing_imbalance`` says:
    # no source gives a figure for how much they shrink it, so the scenario's input stands.
    busiest = np.ceil(slots / g.ep) * g.ep / slots  # exactly 1.0 when EP divides the slots
    routed = tokens * k * np.maximum(g.tp, g.ep * g.etp) / (g.tp * g.ep) * routing_imbalance * busiest
    pool_tokens = tokens * g.dp / g.edp
    touched = np.ceil(slots / g.ep) * (1 - (1 - k / slots) ** pool_tokens)
    works = {
        "router": Work("gemm", flops=2.0 * tokens * h * num_experts, dtype="bf16",
                       bytes=_bytes(h * num_experts, HIGH_PRECISION.bits) + act * tokens * h),
        # The fused-MoE fit (``grouped``) is fitted to the engines' fused MoE op (Triton / CUTLASS, tokens
        # dispatched on the GPU); with DeepEP, SGLang runs DeepGEMM's grouped GEMMs on the exchanged tokens,
        # which those tables do not time: the plain GEMM fit, as before.
        "experts": Work("gemm", kernels=2.0, dtype=edtype, grouped=exchange.mode is None, flops=2.0 * routed * 3 * h * width,
                        quant_elements=routed * (h + width) if edtype == "fp8" else 0.0,
                        bytes=touched * _bytes(3 * h * width, workload.experts_dtype.bits) + act * routed * (2 * h + 3 * width)),
        "experts_elementwise": Work("elementwise", bytes=act * routed * 3 * width),
    }
    if model.shared_ffn_width:
        # Over the FFN group (``ffn_tp``): SGLang shards the shared experts over its whole --tp-size, on the
        # tokens gathered from its attention-DP ranks (models/deepseek_v2.py); elsewhere ffn_tp = TP.
        # With DeepEP SGLang keeps a whole copy on every GPU over its own tokens (engines.shared_experts_tp).
        deepep = exchange.mode is not None
        ws = model.shared_ffn_width / (1.0 if deepep else g.ffn_tp)
        shared_tokens = tokens if deepep else tokens * g.ffn_tp / g.tp
        works["shared_experts"] = Work("gemm", kernels=2.0, dtype=dtype, flops=2.0 * shared_tokens * 3 * h * ws,
                                       quant_elements=shared_tokens * (h + ws) if dtype == "fp8" else 0.0,
                                       bytes=_bytes(3 * h * ws, wbits) + act * shared_tokens * (2 * h + 3 * ws))
    # Each TP rank sends its 1/TP share of the tokens to the EP ranks that hold their experts.
    works.update(ep_exchange_works(model=model, g=g, tokens=tokens, exchange=exchange, gpus_per_node=gpus_per_node))
    # The fused MoE kernels of vLLM (fused_moe: moe_sum of the top-k outputs, then one tensor_model_parallel_
    # all_reduce in FusedMoE.forward) and SGLang (the same, in its FusedMoE layer) combine a token's top-k
    # expert outputs on each rank before reducing, so the ETP all-reduce carries each token once:
    # tokens x hidden, not tokens x top-k x hidden. With EP > 1 a rank reduces only the tokens routed to
    # it, at most its ``routed`` (token, expert) pairs, at most the group's tokens.
    group_tokens = tokens * np.maximum(g.tp, g.ep * g.etp) / g.tp
    combined = np.minimum(routed, group_tokens)
    works["etp_allreduce"] = Work("allreduce", bytes=combined * h * act, peers=g.etp, offnode=g.etp_offnode)
    return works


def layer_time(*, scenario: Scenario, g: _Grid, tokens, seqs, context, prefill: bool, dense: bool, cal: GpuCalibration) -> LayerTime:
    """One layer on one GPU for a step of ``tokens`` tokens from ``seqs`` sequences whose attention spans
    ``context`` tokens (prefill: the prompt, causal; decode: one new token over the KV cache)."""
    works = layer_works(scenario=scenario, g=g, tokens=tokens, seqs=seqs, context=context, prefill=prefill, dense=dense)
    whole = timed(works, scenario=scenario, cal=cal, size=len(g.tp))
    if dense or not scenario.engine.enable_two_batch_overlap or not scenario.model.is_moe:
        return whole
    halves = layer_works(scenario=scenario, g=g, tokens=tokens / 2, seqs=seqs / 2, context=context, prefill=prefill, dense=dense)
    return two_batch_overlap(whole=whole, half=timed(halves, scenario=scenario, cal=cal, size=len(g.tp)),
                             split=np.asarray(tokens, dtype=float) + np.zeros(len(g.tp)) >= 2,
                             order=tbo_order(scenario, prefill=prefill), expert_sm_share=tbo_expert_sm_share(scenario, prefill=prefill))


EP_EXCHANGE_OPS = ("ep_alltoall", "ep_dispatch", "ep_combine")
# The operators of a MoE layer by the stage of a micro-batch they run in (``two_batch_overlap``): the
# routed experts between the dispatch and the combine, the shared experts beside them, the attention
# block (split in decode at the core attention: SGLang's ``op_prepare`` / ``op_core``) before the dispatch.
TBO_EXPERT_OPS = ("experts", "experts_elementwise", "etp_allreduce")
TBO_SHARED_OPS = ("shared_experts",)
TBO_ATTENTION_PREPARE_OPS = ("qkv_proj", "norms_elementwise")

# Each micro-batch's stages of one MoE layer, as the engines split them at their yield points; an action
# is ("compute", group), ("send", "dispatch" | "combine") (the exchange starts on the communication
# stream once the compute stream has reached it) or ("wait", ...) (the compute stream waits for it).
# The stages of the two micro-batches alternate, the second starting ``delta`` stages behind.
TBO_ORDERS: dict[str, tuple[int, tuple[tuple[tuple[str, str], ...], ...]]] = {
    # SGLang prefill (batch_overlap/operations_strategy.py _compute_moe_deepseek_blog_prefill,
    # tbo_delta_stages=0): [attention, gate, dispatch_a] | [dispatch_b, experts, combine_a] | [shared
    # experts, combine_b, output]. vLLM --enable-dbo yields at the same points (FusedMoEModularKernel:
    # prepare_async, dbo_yield; experts; finalize_async with the shared experts under the combine; dbo_yield).
    "prefill_order": (0, ((("compute", "attention"), ("send", "dispatch")),
                          (("wait", "dispatch"), ("compute", "experts"), ("send", "combine")),
                          (("compute", "shared"), ("wait", "combine")))),
    # SGLang decode (_compute_moe_deepseek_blog_decode, tbo_delta_stages=2): [attention prepare] |
    # [core attention, gate] | [dispatch_a, shared experts] | [dispatch_b, experts, combine_a] |
    # [combine_b] (the output joins the next layer's first stage). DeepSeek's decode profile
    # (github.com/deepseek-ai/profile-data, decode.jpg) runs the same order.
    "decode_order": (2, ((("compute", "attention_prepare"),),
                         (("compute", "attention"),),
                         (("send", "dispatch"), ("compute", "shared")),
                         (("wait", "dispatch"), ("compute", "experts"), ("send", "combine")),
                         (("wait", "combine"),))),
}


def tbo_layer_s(groups: dict[str, np.ndarray], comm: dict[str, np.ndarray], order: str, *, layers: tuple[int, int] = (4, 8)) -> np.ndarray:
    """Seconds per MoE layer in the steady state of two micro-batches run in ``TBO_ORDERS[order]``: one
    compute stream (in program order, waiting where a stage waits for an exchange) and one communication
    stream (the exchanges in the order they are sent); ``groups`` and ``comm`` hold one micro-batch's
    compute and exchange seconds per layout. The schedule is played over ``layers`` identical layers
    and the per-layer time is the difference over the last ones (the start-up of the first layers
    excluded). At least ``max(compute, exchange)`` of the two micro-batches, at most their sum."""
    delta, stages = TBO_ORDERS[order]

    def finish(n: int) -> np.ndarray:
        a = [stage for _ in range(n) for stage in stages]
        seq = [(0, s) for s in a[:delta]]
        for i in range(len(a) - delta):
            seq += [(0, a[delta + i]), (1, a[i])]
        seq += [(1, s) for s in a[len(a) - delta:]]
        zero = np.zeros_like(next(iter(comm.values())))
        compute_t, comm_t, done = zero, zero, {}
        for mb, stage in seq:
            for action, name in stage:
                if action == "compute":
                    compute_t = compute_t + groups[name]
                elif action == "send":
                    comm_t = np.maximum(compute_t, comm_t) + comm[name]
                    done[(mb, name)] = comm_t
                else:
                    compute_t = np.maximum(compute_t, done.pop((mb, name)))
        return np.maximum(compute_t, comm_t)

    first, last = layers
    return (finish(last) - finish(first)) / (last - first)


def two_batch_overlap(*, whole: LayerTime, half: LayerTime, split: np.ndarray, order: str = "prefill_order",
                      expert_sm_share: float = 1.0) -> LayerTime:
    """A MoE layer run as two micro-batches of half the tokens, one's EP exchange under the other's
    compute (SGLang ``--enable-two-batch-overlap``, ``batch_overlap/two_batch_overlap.py``; vLLM
    ``--enable-dbo``; DeepSeek's "dual micro-batch overlap", DeepSeek-V3 report section 3.4). Each
    micro-batch pays every operator at its own size, launches and per-layer overheads included (the
    calibration's fixed terms, twice: the cost of splitting). The two micro-batches run the engine's
    stage order (``TBO_ORDERS``, ``tbo_layer_s``): an exchange hides only under the compute the engine
    places beside it, so where the exchange is longer the routed experts, which wait for the dispatch,
    stay in the open. The ``tbo_overlap`` term takes back what the schedule hides: the layer costs the
    schedule plus the overheads, at most perfect overlap (``max(compute, exchange)``), never more than
    running the parts one after another. Where the engine runs the routed experts on fewer SMs so that the
    exchange has its own (``expert_sm_share``, ``engines.tbo_expert_sm_share``), their GEMMs take
    ``1 / expert_sm_share`` as long (the ``experts`` term says so). The ETP and TP collectives are not
    overlapped (conservative). Layouts where ``split`` is false (fewer than 2 tokens) run whole.

    Units: seconds per layer, per layout; the speed of light overlaps the same way."""
    def merged(whole_t: dict[str, np.ndarray], half_t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "experts" in half_t:
            half_t = {**half_t, "experts": half_t["experts"] / expert_sm_share}
        ops = {k: np.where(split, 2 * half_t[k], whole_t[k]) for k in whole_t}
        zero = np.zeros_like(split, dtype=float)
        exchange = {k: half_t[k] for k in EP_EXCHANGE_OPS if k in half_t}
        compute = {k: v for k, v in half_t.items() if k not in EP_EXCHANGE_OPS and whole.kinds[k] != "overhead"}
        # the engines' plain all-to-all (``ep_alltoall``) is the dispatch and the combine in one term
        comm = {"dispatch": exchange.get("ep_dispatch", exchange.get("ep_alltoall", zero) / 2),
                "combine": exchange.get("ep_combine", exchange.get("ep_alltoall", zero) / 2)}
        groups = {"experts": sum((compute.pop(k) for k in TBO_EXPERT_OPS if k in compute), zero),
                  "shared": sum((compute.pop(k) for k in TBO_SHARED_OPS if k in compute), zero),
                  "attention_prepare": sum((compute.pop(k) for k in TBO_ATTENTION_PREPARE_OPS if k in compute), zero) if order == "decode_order" else zero}
        groups["attention"] = sum(compute.values(), zero)
        serial = 2 * (sum(groups.values(), zero) + comm["dispatch"] + comm["combine"])
        ops["tbo_overlap"] = np.where(split, np.minimum(tbo_layer_s(groups, comm, order) - serial, 0.0), 0.0)
        return ops

    return LayerTime(ops=merged(whole.ops, half.ops), sol=merged(whole.sol, half.sol),
                     kinds={**whole.kinds, "tbo_overlap": "overlap"}, wire=whole.wire)


def layer_works(*, scenario: Scenario, g: _Grid, tokens, seqs, context, prefill: bool, dense: bool) -> dict[str, Work]:
    """Every operator of one layer (attention block, FFN or MoE block, the per-layer overhead)."""
    model, workload, gpu = scenario.model, scenario.workload, scenario.cluster.gpu
    works = attention_works(model=model, workload=workload, gpu=gpu, g=g, tokens=tokens, seqs=seqs, context=context, prefill=prefill,
                            tp_allreduces=np.where(g.ffn_tp > g.tp, 1.0, 2.0) if dense else 2.0,
                            shares_kv=scenario.engine.decode_attention_shares_kv)
    works.update(ffn_works(model=model, workload=workload, gpu=gpu, g=g, tokens=tokens, dense=dense,
                           routing_imbalance=workload.routing_imbalance, exchange=ep_exchange(scenario, prefill=prefill),
                           gpus_per_node=scenario.cluster.gpus_per_node))
    works["layer_overhead"] = Work("overhead", dtype="layer")
    return works


def first_stage_works(*, model: ModelSpec, tokens) -> dict[str, Work]:
    """The embedding lookup: one row of ``hidden`` values read and written per token."""
    return {"embedding": Work("elementwise", bytes=2.0 * tokens * model.hidden_size * ACTIVATION_BYTES)}


def last_stage_works(*, model: ModelSpec, g: _Grid, seqs, requests=None) -> dict[str, Work]:
    """Final norm, the vocab-parallel LM head for ``seqs`` sampled positions, the gather of FP32 logits
    over TP (vLLM gathers them for the sampler) and the step's per-sequence host work (sampling, scheduling)
    for ``requests`` sequences (default ``seqs``; a speculative verify step scores 1 + k positions of each
    sequence but schedules and samples it once)."""
    # The LM head is vocab-parallel over ``head_tp`` (engines.lm_head_tp): SGLang's ParallelLMHead uses its
    # whole --tp-size unless --enable-dp-lm-head (models/deepseek_v2.py: use_attn_tp_group=enable_dp_lm_head),
    # on the positions gathered from the attention-DP ranks; elsewhere (and with that switch) the attention TP.
    h, shard = model.hidden_size, np.ceil(model.vocab_size / g.head_tp)
    gathered = seqs * g.head_tp / g.tp
    return {
        "final_norm": Work("elementwise", bytes=2.0 * seqs * h * ACTIVATION_BYTES),
        "lm_head": Work("gemm", dtype="bf16", flops=2.0 * gathered * h * shard,
                        bytes=_bytes(shard * h, HIGH_PRECISION.bits) + gathered * shard * LOGITS_BYTES),
        "logits_gather": Work("allgather", bytes=gathered * shard * g.head_tp * LOGITS_BYTES, peers=g.head_tp,
                              offnode=g.head_offnode),
        "sequence_overhead": Work("overhead", dtype="sequence", repeat=seqs if requests is None else requests),
    }


def stage_works() -> dict[str, Work]:
    """What every pipeline stage pays per forward step besides its layers: the step's fixed launch and
    scheduling cost (the calibration's ``step_overhead_us``). Each PP rank runs its own ``execute_model``
    (input preparation, graph replay or launches, its send/recv bookkeeping) for every micro-batch (vLLM
    v1/worker/gpu_model_runner.py; SGLang's PP event loop in managers/scheduler_pp_mixin.py), so a plan
    with PP stages pays it PP times per micro-batch, not once."""
    return {"step_overhead": Work("overhead", dtype="step")}


def boundary_works(*, model: ModelSpec, g: _Grid, tokens) -> dict[str, Work]:
    """One pipeline hop of ``tokens`` hidden states (off-node if any of the layout's hops is)."""
    return {"pp_send": Work("p2p", bytes=tokens * model.hidden_size * ACTIVATION_BYTES * np.where(g.pp > 1, 1.0, 0.0),
                            offnode=g.pp_offnode, repeat=np.where(g.pp > 1, 1.0, 0.0))}


# Largest per-term time in ns the integer tables accept (~146 years): beyond it the cast to int64 would
# wrap silently, and no real step takes that long.
MAX_TERM_NS = 1 << 62


def _ceil_ns(seconds: np.ndarray) -> np.ndarray:
    """Seconds -> whole ns, rounded up (conservative), as int64.

    Raises:
        OptimizerError: a time is not finite or exceeds ``MAX_TERM_NS`` (absurd hardware or model numbers).
    """
    ns = np.ceil(np.asarray(seconds, dtype=float) * 1e9)
    if not np.all(np.isfinite(ns)) or np.any(ns >= MAX_TERM_NS):
        worst = float(np.nanmax(np.where(np.isfinite(ns), ns, np.inf)))
        raise OptimizerError(f"an estimated step time of {worst / 1e9:.3g} s leaves the cost model's integer range; "
                             "check the scenario for bandwidths, FLOPS or sizes far outside real hardware and models")
    return ns.astype(np.int64)


@dataclass(frozen=True)
class PhaseCosts:
    """Integer nanoseconds per layout for one phase (prefill of the whole batch, or one decode step of
    one micro-batch): per dense layer, per MoE layer, first-stage and last-stage extras, one PP hop, and
    the fixed cost every stage pays per step (``stage_extra_ns``)."""

    dense_layer_ns: np.ndarray
    moe_layer_ns: np.ndarray
    first_extra_ns: np.ndarray
    last_extra_ns: np.ndarray
    boundary_ns: np.ndarray
    dense_breakdown: LayerTime
    moe_breakdown: LayerTime
    first_breakdown: LayerTime
    last_breakdown: LayerTime
    boundary_breakdown: LayerTime
    # Every stage's own fixed cost per step (one micro-batch): its launch and scheduling (``stage_works``).
    stage_extra_ns: np.ndarray
    stage_breakdown: LayerTime

    def stage_fixed_ns(self, c: int, pp: int) -> int:
        """What every stage of layout ``c`` pays per micro-batch besides its layers and first/last extras:
        its own step overhead, plus one hop (its send/recv) where ``pp > 1`` (ns)."""
        return int(self.stage_extra_ns[c]) + (int(self.boundary_ns[c]) if pp > 1 else 0)


@dataclass(frozen=True)
class CostTable:
    """What the solver, the oracle and the certificate read: integer costs per layout, in grid order."""

    layouts: tuple[Layout, ...]
    batch: tuple[int, ...]
    microbatches: tuple[int, ...]
    prefill: PhaseCosts
    decode: PhaseCosts
    calibration: GpuCalibration
    calibration_id: str  # the calibration file's id
    calibration_text: str  # which calibration file and entry produced these numbers

    num_dense_layers: int
    num_moe_layers: int
    prefill_share_ns: tuple[int, ...]  # added to every decode step: the prefills that keep the batch full
    # TTFT (``ttft_ns``): a prompt is prefilled in ``ttft_chunks[c]`` steps of the ``chunk`` phase; each of
    # those steps also carries the batch's decode step where ``ttft_rides_decode[c]`` is 1 and the other
    # prompts' prefill share where ``ttft_waits[c]`` is 1. Isolated model: ``chunk`` is ``prefill``, one
    # chunk, both flags 0.
    chunk: PhaseCosts | None = None
    chunk_tokens: tuple[int, ...] = ()
    ttft_chunks: tuple[int, ...] = ()
    ttft_rides_decode: tuple[int, ...] = ()
    ttft_waits: tuple[int, ...] = ()
    ttft_model: str = "isolated"
    # speculative decoding (workload_features): ``decode`` is then charged per emitted token (each term of the
    # whole verify + draft step divided by the expected tokens per step, rounded up) and ``decode_step`` is
    # the whole step, which is what rides along with a prompt's chunk in the loaded TTFT; None without
    decode_step: PhaseCosts | None = None
    draft_ns: tuple[int, ...] = ()  # per layout: the draft module's k passes in one step (last stage), () without

    @property
    def ride_phase(self) -> PhaseCosts:
        """The decode step that shares a scheduler step with a prompt's chunk (``ttft_ns``)."""
        return self.decode_step or self.decode

    def phase_total_ns(self, phase: PhaseCosts, c: int) -> int:
        """All stages of layout ``c`` back to back (each with its own step overhead) plus its PP hops:
        independent of the layer split."""
        pp = self.layouts[c].pp
        return (
            self.num_dense_layers * int(phase.dense_layer_ns[c])
            + self.num_moe_layers * int(phase.moe_layer_ns[c])
            + int(phase.first_extra_ns[c])
            + int(phase.last_extra_ns[c])
            + pp * int(phase.stage_extra_ns[c])
            + (pp - 1) * int(phase.boundary_ns[c])
        )

    def decode_cycle_ns(self, c: int, slowest_ns: int) -> int:
        """Time between two tokens of one sequence in layout ``c`` (ns), without the prefill share: ``max(m x
        (slowest + stage fixed), all stages + hops)`` where ``slowest_ns`` is the slowest stage's layers and
        first/last extras (``PhaseCosts.stage_fixed_ns`` adds its step overhead and, for PP > 1, its hop)."""
        pp = self.layouts[c].pp
        return max(self.microbatches[c] * (slowest_ns + self.decode.stage_fixed_ns(c, pp)), self.phase_total_ns(self.decode, c))

    def prompt_prefill_ns(self, c: int) -> int:
        """One prompt's prefill work in layout ``c``: its chunks through every stage (ns); the isolated
        prefill of ``ISL`` tokens under the isolated model."""
        return self.ttft_chunks[c] * self.phase_total_ns(self.chunk, c)

    def ttft_ns(self, c: int) -> int:
        """TTFT of layout ``c`` (ns): ``chunks x (chunk + rides x decode step + waits x prefill share)``,
        each step through every stage and hop (``integer_costs``). A decode step that rides along with the
        chunk is the same scheduler step (one forward of chunk and decode tokens), so its stages' step
        overheads are not charged twice. Independent of the layer split."""
        ride = self.ride_phase
        own = self.layouts[c].pp * int(ride.stage_extra_ns[c])
        step = self.phase_total_ns(self.chunk, c) + self.ttft_rides_decode[c] * (self.phase_total_ns(ride, c) - own)
        return self.ttft_chunks[c] * (step + self.ttft_waits[c] * self.prefill_share_ns[c])


def _phase(*, scenario: Scenario, g: _Grid, tokens, seqs, context, prefill: bool, cal: GpuCalibration,
           head_seqs=None) -> PhaseCosts:
    """One phase's costs: layers for ``tokens`` tokens whose attention scores ``seqs`` sequences' pairs over
    ``context``, and the last stage's LM head and per-sequence work for ``head_seqs`` sequences (default
    ``seqs``; with prefix caching the attention share is the uncached pairs', while every prompt still
    samples its one position)."""
    model = scenario.model
    kw = dict(scenario=scenario, g=g, tokens=tokens, seqs=seqs, context=context, prefill=prefill, cal=cal)
    dense = layer_time(**kw, dense=True)
    moe = layer_time(**kw, dense=False) if model.is_moe else dense
    size = len(g.tp)
    first = timed(first_stage_works(model=model, tokens=tokens), scenario=scenario, cal=cal, size=size)
    last = timed(last_stage_works(model=model, g=g, seqs=seqs if head_seqs is None else head_seqs), scenario=scenario,
                 cal=cal, size=size)
    stage = timed(stage_works(), scenario=scenario, cal=cal, size=size)
    boundary = timed(boundary_works(model=model, g=g, tokens=tokens), scenario=scenario, cal=cal, size=size)
    return PhaseCosts(
        dense_layer_ns=_ceil_ns(dense.total_s),
        moe_layer_ns=_ceil_ns(moe.total_s),
        first_extra_ns=_ceil_ns(first.total_s),
        last_extra_ns=_ceil_ns(last.total_s),
        boundary_ns=_ceil_ns(boundary.total_s),
        dense_breakdown=dense,
        moe_breakdown=moe,
        first_breakdown=first,
        last_breakdown=last,
        boundary_breakdown=boundary,
        stage_extra_ns=_ceil_ns(stage.total_s),
        stage_breakdown=stage,
    )


def integer_costs(*, scenario: Scenario, layouts: tuple[Layout, ...], batches: tuple[int, ...] | None = None,
                  calibration: Calibration | None = None) -> CostTable:
    """Cost tables for every candidate (``layouts[c]`` serving ``batches[c]`` sequences per replica;
    default ``ceil(concurrent_sequences / DP)``), rounded up to nanoseconds term by term, with
    ``calibration`` (default: the shipped one) for the scenario's GPU.

    Serving with continuous batching (vLLM, SGLang, TensorRT-LLM): a replica keeps ``batch`` sequences in
    flight; every decode step of one micro-batch (``ceil(batch / m)`` sequences at the mean context ``ISL +
    ceil(OSL / 2)``) also carries its share of the prefills that keep the batch full: ``batch / OSL``
    prompts per step, each costing ``prompt_prefill_ns`` (its chunks), spread over the PP stages
    (``prefill_share_ns = ceil(batch x prompt_prefill / (OSL x PP))``).

    TTFT, by ``engines.ttft_model``:

    - ``isolated``: the prompt alone, ``ISL`` tokens in one step through every stage and hop.
    - ``loaded`` (steady state at the scenario's concurrency, as the engines' schedulers produce it): the
      step's token budget ``C = engine.max_num_batched_tokens`` is shared with the decode tokens of the
      running sequences where the engine mixes them into a prefill step (``engines.prefill_rides_decode``:
      vLLM V1, TensorRT-LLM; ``d = ceil(batch / m)`` tokens, 0 when ``batch = 1``: no other sequence runs),
      leaving ``p = max(C - d, 1)`` prompt tokens per step. With chunked prefill
      (``engines.chunked_prefill``) the prompt takes ``n = ceil(ISL / p)`` steps of ``min(ISL, p)`` tokens
      (a chunk costed by the prefill operators for ``chunk / ISL`` of a sequence over ``ISL`` tokens of
      context, as ``batched_prefill`` costs its steps); without, one step of ``ISL`` tokens. Each of its
      steps is a mixed step, approximated conservatively as the chunk's prefill *plus* a whole decode
      step of the micro-batch (two passes' launches and weight reads where the engine runs one),
      where the engine mixes; and, when ``batch > 1``, plus the prefill share of the other prompts that
      arrive at ``batch / OSL`` per step and go first (FCFS: the chunks ahead of it). So
      ``TTFT = n x (chunk + rides x decode step + waits x prefill share)``, every term through every
      stage and hop. At ``batch = 1`` with ``ISL <= C`` it equals the isolated TTFT. It does not depend on
      the layer split (the decode step is the sum of the stages, not the pipeline cycle ``max(m x
      slowest, ...)``, which is larger by the bubble for PP > 1 with uneven stages), so the search's
      bounding by the slowest stage is unchanged. Left out: a queue that grows when the prompts' mean
      demand ``batch x ISL / OSL`` tokens per step exceeds ``p`` (an overloaded replica has no steady
      state), and queueing from bursty arrivals beyond the mean share.
    """
    workload = scenario.workload
    calibration = calibration or calibration_for(scenario)  # the shipped one unless engine.calibration_file
    stack = calibration.stack_for(scenario.engine.name.value, scenario.engine.calibration_stack)
    cal = calibration.for_gpu(scenario.cluster.gpu.name, stack, scenario.engine.name.value)
    g = grid(scenario, layouts, batches)
    context_decode = workload.input_tokens + ceil_div(workload.output_tokens, 2)
    micro_seqs = np.ceil(g.batch / g.microbatches)
    one = np.ones_like(g.tp)
    # prefix caching (workload_features): only the uncached tokens are computed, over the whole prompt's context
    new_tokens, pair_share = uncached_prompt_tokens(scenario), float(uncached_pair_share(scenario))
    prefill = _prefill_phase(scenario=scenario, g=g, tokens=one * new_tokens, seqs=one * pair_share,
                             context=workload.input_tokens, cal=cal, head_seqs=one)
    decode, decode_step, draft_ns = _decode_phases(scenario=scenario, g=g, micro_seqs=micro_seqs, context=context_decode, cal=cal)
    table = CostTable(
        layouts=layouts,
        batch=tuple(int(b) for b in g.batch),
        microbatches=tuple(int(m) for m in g.microbatches),
        prefill=prefill,
        decode=decode,
        calibration=cal,
        calibration_id=calibration.id,
        calibration_text=calibration.describe(scenario.cluster.gpu.name, stack, scenario.engine.name.value),
        num_dense_layers=scenario.model.num_dense_layers,
        num_moe_layers=scenario.model.num_moe_layers,
        prefill_share_ns=(),
        decode_step=decode_step,
        draft_ns=draft_ns,
    )
    table = _with_ttft(scenario=scenario, table=table, g=g, micro_seqs=micro_seqs * verify_tokens_per_sequence(scenario), cal=cal)
    osl = max(workload.output_tokens, 1)
    share = tuple(
        ceil_div(table.batch[c] * table.prompt_prefill_ns(c), osl * layouts[c].pp) for c in range(len(layouts))
    )
    return dataclasses.replace(table, prefill_share_ns=share)


def _layouts(g: _Grid) -> tuple[Layout, ...]:
    return tuple(Layout(tp=int(t), pp=int(p), dp=int(d), ep=int(e), etp=int(et), edp=int(ed))
                 for t, p, d, e, et, ed in zip(g.tp, g.pp, g.dp, g.ep, g.etp, g.edp))


def _draft_model_pass_ns(*, whole: Scenario, g: _Grid, tokens, seqs, context, prefill: bool, cal: GpuCalibration) -> np.ndarray:
    """One pass of a separate draft model (``workload_features.draft_scenario``) at the target's layouts: all
    its layers, its embedding and its LM head, on one GPU of the last stage, and its own step overhead
    (``PhaseCosts.stage_extra_ns``: each pass is a forward of its own) (ns per layout)."""
    dg = grid(whole, _layouts(g), tuple(int(b) for b in g.batch))
    phase = _phase(scenario=whole, g=dg, tokens=tokens, seqs=seqs, context=context, prefill=prefill, cal=cal)
    return (whole.model.num_dense_layers * phase.dense_layer_ns + whole.model.num_moe_layers * phase.moe_layer_ns
            + phase.first_extra_ns + phase.last_extra_ns + phase.stage_extra_ns)


def _prefill_phase(*, scenario: Scenario, g: _Grid, tokens, seqs, context, cal: GpuCalibration, head_seqs=None) -> PhaseCosts:
    """A prefill phase; with a speculative draft network, plus its own prefill of the same tokens on the last
    stage (the draft keeps a KV cache of the prompt too: MTP / EAGLE one layer per draft layer, a draft
    model all of its layers, vLLM's proposers run over the prefill's hidden states / tokens)."""
    phase = _phase(scenario=scenario, g=g, tokens=tokens, seqs=seqs, context=context, prefill=True, cal=cal, head_seqs=head_seqs)
    layers = draft_layers(scenario)
    if not layers:
        return phase
    whole = draft_scenario(scenario)
    if whole is not None:
        extra = _draft_model_pass_ns(whole=whole, g=g, tokens=tokens, seqs=seqs, context=context, prefill=True, cal=cal)
    else:
        extra = layers * (phase.moe_layer_ns if scenario.model.is_moe else phase.dense_layer_ns)
    return dataclasses.replace(phase, last_extra_ns=phase.last_extra_ns + extra)


def _decode_phases(*, scenario: Scenario, g: _Grid, micro_seqs: np.ndarray, context: int,
                   cal: GpuCalibration) -> tuple[PhaseCosts, PhaseCosts | None, tuple[int, ...]]:
    """The decode phase the tables carry, the whole speculative step (None without speculation) and the
    draft's share of that step per layout (ns; () without).

    With ``engine.speculative`` (``workload_features``): the target's pass runs ``(1 + k)`` tokens per
    sequence (its LM head scores all of them); the draft module's ``k`` passes, each one layer of the
    target's kind plus the LM head over the micro-batch's sequences and a step overhead of its own (a
    separate draft model: the whole model, ``_draft_model_pass_ns``), are added to the last stage; every
    term of that step is then divided by the expected tokens per step ``E`` and rounded up, so the tables'
    decode time is per emitted token and TPOT = step / E. The attention core scores ``1 + k`` queries per
    sequence and reads each sequence's cache once. The prefill share added to TPOT stays as it is: a step
    finishes E times as many tokens, so E times as many prompts arrive per step, the same share per emitted
    token. Left out: the draft's sampling and tree bookkeeping, and the rejection sampler."""
    plain = _phase(scenario=scenario, g=g, tokens=micro_seqs, seqs=micro_seqs, context=context, prefill=False, cal=cal)
    width = verify_tokens_per_sequence(scenario)
    if scenario.engine.speculative is None:
        return plain, None, ()
    size = len(g.tp)
    verify = _phase(scenario=scenario, g=g, tokens=micro_seqs * width, seqs=micro_seqs, context=context, prefill=False, cal=cal)
    heads = timed(last_stage_works(model=scenario.model, g=g, seqs=micro_seqs * width, requests=micro_seqs), scenario=scenario,
                  cal=cal, size=size)
    whole = draft_scenario(scenario)
    if whole is not None:  # a separate draft model: every layer, its embedding and its LM head, per pass
        one_pass = _draft_model_pass_ns(whole=whole, g=g, tokens=micro_seqs, seqs=micro_seqs, context=context,
                                        prefill=False, cal=cal)
    else:
        draft_layer_ns = plain.moe_layer_ns if scenario.model.is_moe else plain.dense_layer_ns
        one_pass = draft_layer_ns + plain.last_extra_ns + plain.stage_extra_ns  # each pass is a forward of its own
    draft_ns = draft_passes(scenario) * one_pass
    step = dataclasses.replace(verify, last_extra_ns=_ceil_ns(heads.total_s) + draft_ns, last_breakdown=heads)
    expected = expected_tokens_per_step(scenario)

    def per_token(ns: np.ndarray) -> np.ndarray:
        return np.asarray([per_token_ns(int(v), expected) for v in ns], dtype=np.int64)

    decode = dataclasses.replace(step, **{f: per_token(getattr(step, f)) for f in (
        "dense_layer_ns", "moe_layer_ns", "first_extra_ns", "last_extra_ns", "stage_extra_ns", "boundary_ns")})
    return decode, step, tuple(int(v) for v in draft_ns)


def _with_ttft(*, scenario: Scenario, table: CostTable, g: _Grid, micro_seqs: np.ndarray, cal: GpuCalibration) -> CostTable:
    """``table`` with the TTFT model's chunk phase, chunk counts and flags (``integer_costs``)."""
    isl, n = uncached_prompt_tokens(scenario), len(table.layouts)  # the prompt tokens prefill computes
    pair_share = float(uncached_pair_share(scenario))
    model = ttft_model(scenario)
    if model is TtftModel.ISOLATED:
        return dataclasses.replace(table, chunk=table.prefill, chunk_tokens=(isl,) * n, ttft_chunks=(1,) * n,
                                   ttft_rides_decode=(0,) * n, ttft_waits=(0,) * n, ttft_model=model.value)
    budget, rides = scenario.engine.max_num_batched_tokens, prefill_rides_decode(scenario)
    busy = [b > 1 for b in table.batch]
    decode_tokens = [int(d) if rides and on else 0 for d, on in zip(micro_seqs, busy)]
    room = [max(budget - d, 1) for d in decode_tokens]
    if chunked_prefill(scenario):
        sizes, chunks = [min(isl, r) for r in room], [ceil_div(isl, r) for r in room]
    else:
        sizes, chunks = [isl] * n, [1] * n
    tokens = np.asarray(sizes, dtype=float)
    chunk = table.prefill if all(t == isl for t in sizes) else _prefill_phase(
        scenario=scenario, g=g, tokens=tokens, seqs=tokens / isl * pair_share, context=scenario.workload.input_tokens, cal=cal,
        head_seqs=tokens / isl)
    return dataclasses.replace(table, chunk=chunk, chunk_tokens=tuple(sizes), ttft_chunks=tuple(chunks),
                               ttft_rides_decode=tuple(int(rides and on) for on in busy), ttft_waits=tuple(int(on) for on in busy),
                               ttft_model=model.value)


@dataclass(frozen=True)
class Estimate:
    """Latencies of a concrete plan in integer nanoseconds (sums of the table's rounded terms)."""

    prefill_stage_ns: tuple[int, ...]
    decode_stage_ns: tuple[int, ...]
    ttft_ns: int
    tpot_ns: int
    request_latency_ns: int
    concurrent_sequences: int
    output_tokens: int

    @property
    def output_tokens_per_s(self) -> float:
        """Steady-state output rate of the whole deployment: ``B x OSL / request latency``."""
        if self.request_latency_ns == 0:
            return 0.0
        return self.concurrent_sequences * self.output_tokens * 1e9 / self.request_latency_ns


def stage_ns(phase: PhaseCosts, i: int, kinds: list[tuple[int, int]]) -> tuple[int, ...]:
    """Time of each stage's layers (one GPU) for layout ``i`` with ``(dense, moe)`` layers per stage, with
    the first and last stages' extras; every stage's own step overhead (``PhaseCosts.stage_extra_ns``) and
    the hops come on top (``estimate``), the same for every stage, so they do not move the split."""
    last = len(kinds) - 1
    return tuple(
        d * int(phase.dense_layer_ns[i]) + m * int(phase.moe_layer_ns[i])  # Python ints: no int64 wrap
        + (int(phase.first_extra_ns[i]) if s == 0 else 0)
        + (int(phase.last_extra_ns[i]) if s == last else 0)
        for s, (d, m) in enumerate(kinds)
    )


def estimate(*, table: CostTable, i: int, kinds: list[tuple[int, int]], concurrent_sequences: int, output_tokens: int) -> Estimate:
    """TTFT = ``table.ttft_ns(i)`` (isolated: one prompt through all prefill stages + (PP-1) hops; loaded:
    its chunks among the running decodes, ``integer_costs``); TPOT = ``CostTable.decode_cycle_ns`` + prefill
    share: ``max(m x (slowest stage + its step overhead + hop), all stages + PP step overheads + (PP-1) hops)``,
    the hop only where PP > 1; request latency = TTFT + max(OSL - 1, 0) x TPOT. ``decode_stage_ns`` and
    ``prefill_stage_ns`` are the stages' layers and first/last extras (``stage_ns``)."""
    prefill = stage_ns(table.prefill, i, kinds)
    decode = stage_ns(table.decode, i, kinds)
    ttft = table.ttft_ns(i)
    cycle = table.decode_cycle_ns(i, max(decode))
    tpot = cycle + table.prefill_share_ns[i]
    return Estimate(
        prefill_stage_ns=prefill,
        decode_stage_ns=decode,
        ttft_ns=ttft,
        tpot_ns=tpot,
        request_latency_ns=ttft + max(output_tokens - 1, 0) * tpot,
        concurrent_sequences=concurrent_sequences,
        output_tokens=output_tokens,
    )


@dataclass(frozen=True)
class BatchedPrefill:
    """A replica's ``batch`` prompts prefilled together, as the engines' schedulers batch them."""

    steps: int  # scheduler steps (forward passes) that prefill them
    step_tokens: int  # tokens per full step: engine.max_num_batched_tokens
    batched_prefill_ns: int  # from the first step's start to the last prompt's first token


def batched_prefill(*, scenario: Scenario, table: CostTable, index: int, kinds: list[tuple[int, int]]) -> BatchedPrefill:
    """The ``batch`` prompts of one replica (``ISL`` tokens each) prefilled as vLLM's and SGLang's schedulers
    batch them: steps of at most ``engine.max_num_batched_tokens`` tokens (vLLM ``--max-num-batched-tokens``,
    SGLang ``--chunked-prefill-size``: a prompt longer than the budget is chunked over steps, shorter ones
    share a step). A step of ``T`` tokens is costed by the same operators as a prompt's prefill, for
    ``T / ISL`` prompts attending over ``ISL`` tokens. Steps follow one another through the pipeline: the
    first takes every stage (each with its step overhead) and ``PP - 1`` hops, each later one its slowest
    stage, that stage's step overhead and its hop.

    Shapes: ``kinds`` the ``(dense, moe)`` layers per stage of the plan. Units: ns, rounded up per term as
    the cost tables are.
    """
    workload, layout, batch = scenario.workload, table.layouts[index], table.batch[index]
    budget = scenario.engine.max_num_batched_tokens
    total = batch * workload.input_tokens
    full, rest = divmod(total, budget)
    sizes = [budget if full else rest, rest or budget]
    g = grid(scenario, (layout, layout), (batch, batch))
    tokens = np.asarray(sizes, dtype=float)
    phase = _phase(scenario=scenario, g=g, tokens=tokens, seqs=tokens / workload.input_tokens, context=workload.input_tokens,
                   prefill=True, cal=table.calibration)
    first, last = stage_ns(phase, 0, kinds), stage_ns(phase, 1, kinds)
    pp = len(kinds)
    hops = (pp - 1) * int(phase.boundary_ns[0]) + pp * int(phase.stage_extra_ns[0])
    fixed_full, fixed_rest = phase.stage_fixed_ns(0, pp), phase.stage_fixed_ns(1, pp)
    later = max(full - 1, 0) * (max(first) + fixed_full) + (max(last) + fixed_rest if full and rest else 0)
    return BatchedPrefill(steps=full + (1 if rest else 0), step_tokens=budget, batched_prefill_ns=sum(first) + hops + later)
