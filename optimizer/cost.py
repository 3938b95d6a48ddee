"""Latency model v1: per-operator roofline plus alpha-beta collectives, vectorised with numpy over layouts.

Floats (seconds) live only here. ``integer_costs`` rounds each per-layer and per-stage term up to whole
nanoseconds once; the solver, the exhaustive oracle and the certificate all add up those integers, so
they agree exactly.

Sources:
- Roofline ``t = max(flops / (peak x eta_c), bytes / (hbm x eta_m))``: Williams, Waterman, Patterson,
  "Roofline" (CACM 2009); applied per operator as in llm-analysis and NVIDIA aiconfigurator.
- Transformer FLOPs ``2 x params x tokens`` plus attention ``4 x b x s^2 x heads x d`` halved for causal
  masking: Kaplan et al. 2020 (arXiv 2001.08361) section 2.1; Narayanan et al. 2021 (arXiv 2104.04473).
- Expected experts touched by ``n`` tokens, top-k of E uniform: ``E x (1 - (1 - k/E)^n)``.
- Ring all-reduce ``2(n-1) alpha + 2(n-1)/n x S/B``; all-to-all ``(n-1) alpha + (n-1)/n x S/B``;
  point-to-point ``alpha + S/B``: Thakur, Rabenseifner, Gropp, "Optimization of Collective Communication
  Operations in MPICH" (IJHPCA 2005).
- Pipeline decode with ``m = min(PP, batch)`` micro-batches in flight (vLLM's virtual engines): time per
  output token ``max(m x slowest stage, sum of stages + (PP - 1) hops)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

import numpy as np

from optimizer.memory import (
    ACTIVATION_BYTES,
    HIGH_PRECISION,
    attention_weight_bytes,
    ffn_weight_bytes,
    kv_cache_bytes_per_token_layer,
)
from optimizer.parallel import Layout, batch_per_replica, ep_offnode_fraction, pp_inter_node_boundaries, tp_intra_node
from optimizer.scenario import ComputeDtype, Link, Scenario
from optimizer.errors import OptimizerError
from optimizer.units import ceil_div


@dataclass(frozen=True)
class Efficiency:
    """Shares of peak a real kernel reaches. Defaults are v1 guesses in the range aiconfigurator's
    measured H100 tables show for large GEMMs (~0.7 of dense peak) and bandwidth-bound decode (~0.8 of
    HBM); NCCL bus bandwidth reaches ~0.8 of link bandwidth for large messages (nccl-tests). Issue #3
    replaces them with fitted, size-dependent curves."""

    compute: float = 0.7
    memory: float = 0.8
    link: float = 0.8


DEFAULT_EFFICIENCY = Efficiency()


@dataclass(frozen=True)
class LayerTime:
    """Seconds one layer takes on one GPU, by term; arrays with one entry per layout."""

    attention_proj_s: np.ndarray
    attention_core_s: np.ndarray
    ffn_s: np.ndarray
    tp_allreduce_s: np.ndarray
    ep_alltoall_s: np.ndarray
    etp_allreduce_s: np.ndarray

    @property
    def total_s(self) -> np.ndarray:
        return sum(getattr(self, f.name) for f in fields(self))

    def row(self, i: int) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)[i]) for f in fields(self)}


def roofline_s(*, flops, bytes_moved, peak_flops_per_s: float, hbm_bytes_per_s: float, eff: Efficiency):
    """``max(flops / (peak x eta_c), bytes / (hbm x eta_m))`` in seconds (elementwise)."""
    return np.maximum(flops / (peak_flops_per_s * eff.compute), bytes_moved / (hbm_bytes_per_s * eff.memory))


def ring_allreduce_s(*, n, message_bytes, link: Link, eff: Efficiency):
    """Ring all-reduce of ``message_bytes`` over ``n`` ranks; 0 where n == 1."""
    n = np.asarray(n, dtype=float)
    t = 2 * (n - 1) * link.latency_us * 1e-6 + 2 * (n - 1) / n * message_bytes / (link.bandwidth_bytes_per_s * eff.link)
    return np.where(n > 1, t, 0.0)


def alltoall_s(*, n, bytes_per_rank, offnode_fraction, intra: Link, inter: Link, eff: Efficiency):
    """All-to-all where each rank holds ``bytes_per_rank`` and sends ``(n-1)/n`` of it; the on-node and
    off-node shares move in parallel, so the slower one decides. 0 where n == 1."""
    n = np.asarray(n, dtype=float)
    sent = (n - 1) / n * bytes_per_rank
    alpha = (n - 1) * np.where(offnode_fraction > 0, inter.latency_us, intra.latency_us) * 1e-6
    on_node = sent * (1 - offnode_fraction) / (intra.bandwidth_bytes_per_s * eff.link)
    off_node = sent * offnode_fraction / (inter.bandwidth_bytes_per_s * eff.link)
    return np.where(n > 1, alpha + np.maximum(on_node, off_node), 0.0)


@dataclass(frozen=True)
class _Grid:
    """Layout sizes as float arrays (one entry per layout) and the per-layout integer facts."""

    tp: np.ndarray
    pp: np.ndarray
    dp: np.ndarray
    ep: np.ndarray
    etp: np.ndarray
    edp: np.ndarray
    batch: np.ndarray  # sequences per replica
    microbatches: np.ndarray  # decode micro-batches in flight per replica
    attn_weight_bytes: np.ndarray
    dense_ffn_bytes: np.ndarray
    moe_ffn_bytes: np.ndarray  # local experts + shared + router, all resident
    kv_bytes_per_token: np.ndarray


def _grid(scenario: Scenario, layouts: tuple[Layout, ...]) -> _Grid:
    model, workload = scenario.model, scenario.workload

    def col(values) -> np.ndarray:
        return np.asarray(list(values), dtype=float)

    batches = [batch_per_replica(concurrent_sequences=workload.concurrent_sequences, dp=lay.dp) for lay in layouts]
    return _Grid(
        tp=col(lay.tp for lay in layouts),
        pp=col(lay.pp for lay in layouts),
        dp=col(lay.dp for lay in layouts),
        ep=col(lay.ep for lay in layouts),
        etp=col(lay.etp for lay in layouts),
        edp=col(lay.edp for lay in layouts),
        batch=col(batches),
        microbatches=col(min(lay.pp, b) for lay, b in zip(layouts, batches)),
        attn_weight_bytes=col(attention_weight_bytes(model=model, workload=workload, tp=lay.tp) for lay in layouts),
        dense_ffn_bytes=col(
            ffn_weight_bytes(model=model, workload=workload, layout=lay, dense=True) if model.num_dense_layers else 0
            for lay in layouts
        ),
        moe_ffn_bytes=col(
            ffn_weight_bytes(model=model, workload=workload, layout=lay, dense=False) if model.is_moe else 0
            for lay in layouts
        ),
        kv_bytes_per_token=col(kv_cache_bytes_per_token_layer(model=model, workload=workload, tp=lay.tp) for lay in layouts),
    )


def layer_time(
    *, scenario: Scenario, g: _Grid, layouts: tuple[Layout, ...], tokens, seqs, context, prefill: bool, dense: bool, eff: Efficiency
) -> LayerTime:
    """One layer on one GPU for a step of ``tokens`` tokens from ``seqs`` sequences whose attention spans
    ``context`` tokens (prefill: the prompt, causal; decode: one new token over the KV cache)."""
    model, workload, cluster = scenario.model, scenario.workload, scenario.cluster
    gpu = cluster.gpu
    h, nh = model.hidden_size, model.num_attention_heads
    peak = gpu.peak_flops_per_s(workload.weight_dtype.compute)
    hbm = gpu.hbm_bytes_per_s
    act = ACTIVATION_BYTES

    # Attention projections: weights read once per step, activations in and out.
    attn_flops = 2.0 * tokens * g.attn_weight_bytes * 8 / float(workload.weight_dtype.bits)
    attention_proj = roofline_s(
        flops=attn_flops, bytes_moved=g.attn_weight_bytes + 2 * tokens * h * act, peak_flops_per_s=peak, hbm_bytes_per_s=hbm, eff=eff
    )

    # Attention core (QK^T and PV) over this rank's heads.
    if model.is_mla and not prefill:  # absorbed MLA decode attends in the latent space
        width = 2 * model.kv_lora_rank + model.qk_rope_head_dim  # type: ignore[operator]
    elif model.is_mla:
        width = model.qk_nope_head_dim + model.qk_rope_head_dim + model.v_head_dim  # type: ignore[operator]
    else:
        width = 2 * model.attn_head_dim
    heads_per_rank = np.ceil(nh / g.tp)
    if prefill:
        core_flops = 2.0 * seqs * context * context * heads_per_rank * width / 2  # causal: half the matrix
        core_bytes = 3 * tokens * heads_per_rank * width / 2 * act
    else:
        core_flops = 2.0 * seqs * context * heads_per_rank * width
        core_bytes = seqs * context * g.kv_bytes_per_token
    attention_core = roofline_s(
        flops=core_flops, bytes_moved=core_bytes, peak_flops_per_s=gpu.peak_flops_per_s(ComputeDtype.BF16), hbm_bytes_per_s=hbm, eff=eff
    )

    intra, inter = cluster.intra_node_link, cluster.inter_node_link
    tp_link_intra = np.array([tp_intra_node(tp=lay.tp, gpus_per_node=cluster.gpus_per_node) for lay in layouts])
    tp_message = tokens * h * act
    tp_allreduce = 2 * np.where(
        tp_link_intra,
        ring_allreduce_s(n=g.tp, message_bytes=tp_message, link=intra, eff=eff),
        ring_allreduce_s(n=g.tp, message_bytes=tp_message, link=inter, eff=eff),
    )
    zero = np.zeros_like(g.tp)
    if dense:
        ffn_flops = 2.0 * tokens * 3 * h * model.dense_ffn_width / g.tp
        ffn = roofline_s(flops=ffn_flops, bytes_moved=g.dense_ffn_bytes, peak_flops_per_s=peak, hbm_bytes_per_s=hbm, eff=eff)
        return LayerTime(attention_proj, attention_core, ffn, tp_allreduce, zero, zero)

    # MoE: the pool's tokens (tokens x DP per stage) are spread over TP x DP GPUs.
    k, num_experts = model.num_experts_per_tok, model.num_experts
    expert_params = 3 * h * model.expert_width
    expert_bytes = expert_params * float(workload.experts_dtype.bits) / 8 / g.etp
    tokens_per_replica_group = tokens * g.dp / g.edp
    touched = 1 - (1 - k / num_experts) ** tokens_per_replica_group
    local_experts = np.ceil(num_experts / g.ep)
    routed_flops = 2.0 * tokens * k * expert_params / g.tp
    shared_params = 3 * h * model.shared_ffn_width
    shared_bytes = shared_params * float(workload.weight_dtype.bits) / 8 / g.tp
    router_bytes = h * num_experts * float(HIGH_PRECISION.bits) / 8
    ffn = roofline_s(
        flops=routed_flops,
        bytes_moved=local_experts * touched * expert_bytes,
        peak_flops_per_s=gpu.peak_flops_per_s(workload.experts_dtype.compute),
        hbm_bytes_per_s=hbm,
        eff=eff,
    ) + roofline_s(
        flops=2.0 * tokens * (shared_params / g.tp + h * num_experts),
        bytes_moved=shared_bytes + router_bytes,
        peak_flops_per_s=peak,
        hbm_bytes_per_s=hbm,
        eff=eff,
    )
    offnode = np.array([ep_offnode_fraction(ep=lay.ep, etp=lay.etp, gpus_per_node=cluster.gpus_per_node) for lay in layouts])
    dispatch_bytes = tokens / g.tp * k * h * act  # each TP rank sends its 1/TP share of the tokens
    ep_alltoall = 2 * alltoall_s(n=g.ep, bytes_per_rank=dispatch_bytes, offnode_fraction=offnode, intra=intra, inter=inter, eff=eff)
    routed_tokens = tokens * k * np.maximum(g.tp, g.ep * g.etp) / (g.tp * g.ep)
    etp_intra = np.array([tp_intra_node(tp=lay.etp, gpus_per_node=cluster.gpus_per_node) for lay in layouts])
    etp_message = routed_tokens * h * act
    etp_allreduce = np.where(
        etp_intra,
        ring_allreduce_s(n=g.etp, message_bytes=etp_message, link=intra, eff=eff),
        ring_allreduce_s(n=g.etp, message_bytes=etp_message, link=inter, eff=eff),
    )
    return LayerTime(attention_proj, attention_core, ffn, tp_allreduce, ep_alltoall, etp_allreduce)


def lm_head_s(*, scenario: Scenario, g: _Grid, seqs, eff: Efficiency):
    """Vocab-parallel LM head for ``seqs`` sampled positions on one TP rank."""
    model, gpu = scenario.model, scenario.cluster.gpu
    shard = np.ceil(model.vocab_size / g.tp)
    return roofline_s(
        flops=2.0 * seqs * model.hidden_size * shard,
        bytes_moved=shard * model.hidden_size * float(HIGH_PRECISION.bits) / 8,
        peak_flops_per_s=gpu.peak_flops_per_s(ComputeDtype.BF16),
        hbm_bytes_per_s=gpu.hbm_bytes_per_s,
        eff=eff,
    )


def boundary_s(*, scenario: Scenario, g: _Grid, layouts: tuple[Layout, ...], tokens, eff: Efficiency):
    """One pipeline hop of ``tokens`` hidden states; off-node if any of the layout's hops is."""
    cluster = scenario.cluster
    crosses = np.array(
        [pp_inter_node_boundaries(tp=l.tp, dp=l.dp, pp=l.pp, gpus_per_node=cluster.gpus_per_node) > 0 for l in layouts]
    )
    message = tokens * scenario.model.hidden_size * ACTIVATION_BYTES
    intra, inter = cluster.intra_node_link, cluster.inter_node_link
    t_intra = intra.latency_us * 1e-6 + message / (intra.bandwidth_bytes_per_s * eff.link)
    t_inter = inter.latency_us * 1e-6 + message / (inter.bandwidth_bytes_per_s * eff.link)
    return np.where(g.pp > 1, np.where(crosses, t_inter, t_intra), 0.0)


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
    one micro-batch): per dense layer, per MoE layer, first-stage and last-stage extras, one PP hop."""

    dense_layer_ns: np.ndarray
    moe_layer_ns: np.ndarray
    first_extra_ns: np.ndarray
    last_extra_ns: np.ndarray
    boundary_ns: np.ndarray
    dense_breakdown: LayerTime
    moe_breakdown: LayerTime


@dataclass(frozen=True)
class CostTable:
    """What the solver, the oracle and the certificate read: integer costs per layout, in grid order."""

    layouts: tuple[Layout, ...]
    batch: tuple[int, ...]
    microbatches: tuple[int, ...]
    prefill: PhaseCosts
    decode: PhaseCosts
    efficiency: Efficiency

    num_dense_layers: int
    num_moe_layers: int
    prefill_share_ns: tuple[int, ...]  # added to every decode step: the prefills that keep the batch full

    def index(self, layout: Layout) -> int:
        return self.layouts.index(layout)

    def phase_total_ns(self, phase: PhaseCosts, c: int) -> int:
        """All stages of layout ``c`` back to back plus its PP hops: independent of the layer split."""
        pp = self.layouts[c].pp
        return (
            self.num_dense_layers * int(phase.dense_layer_ns[c])
            + self.num_moe_layers * int(phase.moe_layer_ns[c])
            + int(phase.first_extra_ns[c])
            + int(phase.last_extra_ns[c])
            + (pp - 1) * int(phase.boundary_ns[c])
        )

    def ttft_ns(self, c: int) -> int:
        """TTFT of layout ``c``: the whole batch's prefill through every stage."""
        return self.phase_total_ns(self.prefill, c)


def _phase(*, scenario: Scenario, g: _Grid, layouts, tokens, seqs, context, prefill: bool, eff: Efficiency) -> PhaseCosts:
    model = scenario.model
    kw = dict(scenario=scenario, g=g, layouts=layouts, tokens=tokens, seqs=seqs, context=context, prefill=prefill, eff=eff)
    dense = layer_time(**kw, dense=True)
    moe = layer_time(**kw, dense=False) if model.is_moe else dense
    embedding = tokens * model.hidden_size * ACTIVATION_BYTES / (scenario.cluster.gpu.hbm_bytes_per_s * eff.memory)
    return PhaseCosts(
        dense_layer_ns=_ceil_ns(dense.total_s),
        moe_layer_ns=_ceil_ns(moe.total_s),
        first_extra_ns=_ceil_ns(embedding + 0 * g.tp),
        last_extra_ns=_ceil_ns(lm_head_s(scenario=scenario, g=g, seqs=seqs, eff=eff)),
        boundary_ns=_ceil_ns(boundary_s(scenario=scenario, g=g, layouts=layouts, tokens=tokens, eff=eff)),
        dense_breakdown=dense,
        moe_breakdown=moe,
    )


def integer_costs(*, scenario: Scenario, layouts: tuple[Layout, ...], eff: Efficiency = DEFAULT_EFFICIENCY) -> CostTable:
    """Cost tables for every layout, rounded up to nanoseconds term by term.

    Serving with continuous batching (vLLM, SGLang): a replica keeps ``batch`` sequences in flight; a new
    request's prompt is prefilled on its own (``ISL`` tokens, one sequence: its TTFT), and every decode
    step of one micro-batch (``ceil(batch / m)`` sequences at the mean context ``ISL + ceil(OSL / 2)``)
    also carries its share of the prefills that keep the batch full: ``batch / OSL`` prompts per step,
    spread over the PP stages (``prefill_share_ns``).
    """
    workload = scenario.workload
    g = _grid(scenario, layouts)
    context_decode = workload.input_tokens + ceil_div(workload.output_tokens, 2)
    micro_seqs = np.ceil(g.batch / g.microbatches)
    one = np.ones_like(g.tp)
    prefill = _phase(scenario=scenario, g=g, layouts=layouts, tokens=one * workload.input_tokens, seqs=one,
                     context=workload.input_tokens, prefill=True, eff=eff)
    table = CostTable(
        layouts=layouts,
        batch=tuple(int(b) for b in g.batch),
        microbatches=tuple(int(m) for m in g.microbatches),
        prefill=prefill,
        decode=_phase(scenario=scenario, g=g, layouts=layouts, tokens=micro_seqs, seqs=micro_seqs,
                      context=context_decode, prefill=False, eff=eff),
        efficiency=eff,
        num_dense_layers=scenario.model.num_dense_layers,
        num_moe_layers=scenario.model.num_moe_layers,
        prefill_share_ns=(),
    )
    osl = max(workload.output_tokens, 1)
    share = tuple(
        ceil_div(table.batch[c] * table.ttft_ns(c), osl * layouts[c].pp) for c in range(len(layouts))
    )
    return dataclasses.replace(table, prefill_share_ns=share)


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
    """Time of each stage (one GPU) for layout ``i`` with ``(dense, moe)`` layers per stage."""
    last = len(kinds) - 1
    return tuple(
        d * int(phase.dense_layer_ns[i]) + m * int(phase.moe_layer_ns[i])  # Python ints: no int64 wrap
        + (int(phase.first_extra_ns[i]) if s == 0 else 0)
        + (int(phase.last_extra_ns[i]) if s == last else 0)
        for s, (d, m) in enumerate(kinds)
    )


def estimate(*, table: CostTable, i: int, kinds: list[tuple[int, int]], concurrent_sequences: int, output_tokens: int) -> Estimate:
    """TTFT = one prompt through all prefill stages + (PP-1) hops; TPOT = ``max(m x slowest decode stage,
    all decode stages + (PP-1) hops) + prefill share``; request latency = TTFT + max(OSL - 1, 0) x TPOT."""
    pp = len(kinds)
    prefill = stage_ns(table.prefill, i, kinds)
    decode = stage_ns(table.decode, i, kinds)
    ttft = sum(prefill) + (pp - 1) * int(table.prefill.boundary_ns[i])
    cycle = max(table.microbatches[i] * max(decode), sum(decode) + (pp - 1) * int(table.decode.boundary_ns[i]))
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
