"""Engine profiles: what each serving engine makes of a planner layout, beyond the folding rules
(``rules.py`` holds those as constraints). Pure functions of the scenario and the layout, exact integers.

Three things differ by engine (sources per item; the research record is ``docs/engine-rules.md``):

1. **Engine instances.** vLLM, SGLang and TensorRT-LLM run one instance per expert-data-parallel copy of a
   MoE model (its experts live inside one instance's TP x DP GPUs) and one per DP replica of a dense
   model; Megatron-Core runs one job.
2. **The tensor-parallel width of the dense FFN** (dense layers of a MoE model such as DeepSeek's first
   three). SGLang keeps the FFN tensor parallel over the whole ``--tp-size`` group when attention runs
   data parallel inside it (``--attn-dp-size``): ``ffn_tp = TP x DP / EDP``, with the tokens of every
   attention-DP rank gathered first (sglang 0.5.23 ``arg_groups/fields/parallel.py`` help of
   ``attn_dp_size``: "the FFN stays tensor parallel"; ``--moe-dense-tp-size`` default None = the whole
   TP group). Everyone else shards it over the attention TP.
3. **What the memory fraction means** (``search.gpu_memory_utilization``, ``u``):
   - vLLM ``--gpu-memory-utilization``: everything the instance holds, weights, KV cache, activation peak,
     CUDA graphs, NCCL buffers and context, within ``memory x u`` (vLLM ``gpu_worker.py``
     ``determine_available_memory``). Megatron-Core has no such knob; the planner applies vLLM's.
   - SGLang ``--mem-fraction-static``: weights and the KV pool within ``T x u``, where ``T`` is the memory
     free when the model starts loading (after the CUDA context and NCCL buffers); the rest ``T - T x u``
     must hold the activations and CUDA graphs (sglang ``model_runner_kv_cache_mixin.py``
     ``profile_max_num_token``: ``rest_memory = available_gpu_memory - total_gpu_memory x (1 -
     mem_fraction_static)``, ``available`` measured after the weights load).
   - TensorRT-LLM ``KvCacheConfig.free_gpu_memory_fraction``: the KV cache gets ``u`` of the memory still
     free once the weights, activations and runtime are placed ("allocate 90% of free GPU memory for KV
     cache", nvidia.github.io/TensorRT-LLM examples/kvcacheconfig.html): ``kv <= u x (memory - rest)``,
     i.e. ``q x kv + p x rest <= p x memory`` for ``u = p / q``.
   Each is one or two integer-linear limits per GPU (``MemoryLimit``); the memory rule enforces all.
"""

from __future__ import annotations

from dataclasses import dataclass

from optimizer.model.parallel import Layout
from optimizer.inputs.scenario import A2aDtype, ComputeDtype, DeepepMode, EngineName, MoeA2aBackend, Scenario, TtftModel


def instances(scenario: Scenario, layout: Layout) -> int:
    """Independent engine instances to launch: EDP for a MoE model and DP for a dense one (vLLM, SGLang,
    TensorRT-LLM), one job for Megatron-Core."""
    if scenario.engine.name is EngineName.MEGATRON:
        return 1
    return layout.edp if scenario.model.is_moe else layout.dp


def attention_dp_per_instance(scenario: Scenario, layout: Layout) -> int:
    """Attention data-parallel ranks inside one instance, ``DP / instances`` (1 when that does not divide:
    the folding rule then rejects the layout)."""
    n = instances(scenario, layout)
    return layout.dp // n if layout.dp % n == 0 else 1


def ffn_tp(scenario: Scenario, layout: Layout) -> int:
    """Tensor-parallel width of the dense FFN: SGLang's whole ``--tp-size`` group ``TP x DP / EDP`` for a
    MoE model (item 2 of the module docstring), else the attention TP. With SGLang's ``--moe-dense-tp-size
    1`` the dense MLP runs on each GPU's own tokens: the attention TP, which rule ``moe_dense_tp_one``
    keeps at 1."""
    return layout.tp if scenario.engine.moe_dense_tp_size == 1 else _tp_size_group(scenario, layout)


def _tp_size_group(scenario: Scenario, layout: Layout) -> int:
    """SGLang's whole ``--tp-size`` group ``TP x DP / EDP`` for a MoE model; the attention TP elsewhere."""
    if scenario.engine.name is EngineName.SGLANG and scenario.model.is_moe:
        return layout.tp * attention_dp_per_instance(scenario, layout)
    return layout.tp


def lm_head_tp(scenario: Scenario, layout: Layout) -> int:
    """Vocab-parallel width of the LM head: the dense FFN's group (``ffn_tp``: SGLang's ParallelLMHead spans
    its whole ``--tp-size``), or the attention TP with SGLang's ``--enable-dp-lm-head``
    (python/sglang/srt/models/deepseek_v2.py: ``use_attn_tp_group=enable_dp_lm_head``)."""
    return layout.tp if scenario.engine.enable_dp_lm_head else _tp_size_group(scenario, layout)


def ttft_model(scenario: Scenario) -> TtftModel:
    """How TTFT is modelled: the scenario's ``engine.ttft_model``, else ``loaded`` for the engines that batch
    continuously (vLLM, SGLang, TensorRT-LLM's in-flight batching: a new request's prompt is scheduled
    among the running sequences) and ``isolated`` for Megatron-Core, whose profile here is one job serving
    one static batch (no request joins a running batch, so a prompt is prefilled on its own)."""
    if scenario.engine.ttft_model is not None:
        return scenario.engine.ttft_model
    return TtftModel.ISOLATED if scenario.engine.name is EngineName.MEGATRON else TtftModel.LOADED


def chunked_prefill(scenario: Scenario) -> bool:
    """Whether a prompt longer than a step's token budget is split over steps: ``engine.chunked_prefill``,
    else the engine's default. vLLM V1: on (``SchedulerConfig.enable_chunked_prefill``; V1's scheduler
    ``vllm/v1/core/sched/scheduler.py`` ``schedule()`` gives a waiting request ``min(remaining prompt,
    token_budget)`` tokens, and with chunking off skips a prompt that does not fit the budget left).
    SGLang: on (``ServerArgs.chunked_prefill_size`` None, then set by GPU memory; -1 turns it off).
    TensorRT-LLM: off ("To enable chunked context, please set the enable_chunked_prefill in LLM API to
    True", nvidia.github.io/TensorRT-LLM features/long-sequence.html). Megatron-Core: off (static batch).
    vLLM's default was read in ``SchedulerConfig`` (docs.vllm.ai api/vllm/config/scheduler: the budget is
    "Maximum number of tokens that can be processed in a single iteration") and its V1 scheduler code."""
    if scenario.engine.chunked_prefill is not None:
        return scenario.engine.chunked_prefill
    return scenario.engine.name in (EngineName.VLLM, EngineName.SGLANG)


def prefill_rides_decode(scenario: Scenario) -> bool:
    """Whether a step that prefills a prompt also carries the running sequences' decode tokens, sharing one
    token budget. vLLM V1: yes (``schedule()`` schedules the RUNNING requests first, one decode token
    each, taking them off ``token_budget``, then the WAITING prompts with what is left). TensorRT-LLM:
    yes ("sequences in the context phase can be processed together with sequences in the generation
    phase", nvidia.github.io/TensorRT-LLM features/paged-attention-ifb-scheduler.html, within
    ``max_num_tokens``). SGLang: no (prefill first: the scheduler's ``get_next_batch_to_run`` runs a new
    prefill batch before the running decode batch, and mixes decode tokens into it only with
    ``--enable-mixed-chunk``, ``ServerArgs.enable_mixed_chunk = False``); its running decodes wait instead,
    which the TPOT's prefill share counts. Megatron-Core: no (static batch)."""
    return scenario.engine.name in (EngineName.VLLM, EngineName.TENSORRT_LLM)


def shared_experts_tp(scenario: Scenario, layout: Layout) -> int:
    """Tensor-parallel width of a MoE layer's shared experts: 1 (a whole copy on every GPU, over its own
    tokens) with DeepEP, as SGLang builds them (``models/deepseek_v2.py``: ``dict(tp_rank=0, tp_size=1) if
    get_moe_a2a_backend().is_deepep()``: DeepEP returns each rank's own tokens, nothing is reduced over TP);
    else the dense FFN's width (``ffn_tp``)."""
    if scenario.engine.moe_a2a_backend is MoeA2aBackend.DEEPEP:
        return 1
    return ffn_tp(scenario, layout)


def physical_experts(scenario: Scenario) -> int:
    """Expert slots per MoE layer: ``num_experts + engine.num_redundant_experts`` (SGLang
    ``eplb/expert_location.py``: ``num_physical_experts = num_logical_experts + ep_num_redundant_experts``,
    asserted divisible by ``ep_size``; vLLM EPLB ``global_num_experts = num_experts + num_redundant_experts``)."""
    return scenario.model.num_experts + scenario.engine.num_redundant_experts


def deepep_mode(scenario: Scenario, *, prefill: bool) -> DeepepMode | None:
    """The DeepEP kernels a step runs, or None without DeepEP: ``auto`` resolves as SGLang's
    ``DeepEPMode.resolve(is_extend_in_batch)`` does (``layers/moe/utils.py``; ``token_dispatcher/deepep.py``
    ``_get_impl``): normal for a batch with prefill, low-latency for decode."""
    engine = scenario.engine
    if engine.moe_a2a_backend is not MoeA2aBackend.DEEPEP:
        return None
    if engine.deepep_mode is DeepepMode.AUTO:
        return DeepepMode.NORMAL if prefill else DeepepMode.LOW_LATENCY
    return engine.deepep_mode


# DeepEP's default SMs for its normal (high-throughput) kernels: ``Buffer.num_sms = 20`` (deep_ep/buffer.py),
# which SGLang keeps unless --deepep-config names another (token_dispatcher/deepep.py ``DeepEPConfig``).
DEEPEP_NORMAL_NUM_SMS = 20


def tbo_expert_sm_share(scenario: Scenario, *, prefill: bool) -> float:
    """Share of the GPU's SMs the routed experts' grouped GEMMs run on under two-batch overlap: SGLang's
    prefill gives DeepGEMM ``total_num_sms - DeepEPConfig.num_sms`` (batch_overlap/operations_strategy.py
    ``_compute_moe_deepseek_blog_prefill``: ``deep_gemm_num_sms``), leaving DeepEP's normal kernels their 20 SMs
    (DeepSeek's prefill profile reserves 24 of 132 the same way: github.com/deepseek-ai/profile-data,
    prefill.jpg). 1.0 elsewhere: SGLang's decode (DeepEP low-latency holds no SMs while in flight, "after RDMA
    messages are issued, all GPU SMs are freed", the same README), vLLM (no such partition), and a GPU whose
    ``sm_count`` the catalog does not give (optimistic there, by ``20 / sm_count``)."""
    engine, sms = scenario.engine, scenario.cluster.gpu.sm_count
    if (engine.name is not EngineName.SGLANG or not engine.enable_two_batch_overlap or sms is None
            or deepep_mode(scenario, prefill=prefill) is not DeepepMode.NORMAL or sms <= DEEPEP_NORMAL_NUM_SMS):
        return 1.0
    return (sms - DEEPEP_NORMAL_NUM_SMS) / sms


def tbo_order(scenario: Scenario, *, prefill: bool) -> str:
    """The stage order (``cost.TBO_ORDERS``) two-batch overlap runs: SGLang's decode order for its decode
    steps (``_compute_moe_deepseek_blog_decode``), else the prefill order (SGLang prefill; vLLM DBO in both
    phases)."""
    return "decode_order" if scenario.engine.name is EngineName.SGLANG and not prefill else "prefill_order"


def a2a_dispatch_dtype(scenario: Scenario) -> A2aDtype:
    """What the MoE dispatch carries: ``engine.a2a_dispatch_dtype``, else as SGLang decides
    (``token_dispatcher/deepep.py``: FP8 per-128 groups when the DeepEP output dtype is FP8, i.e. the experts run
    FP8 GEMMs on DeepGEMM; BF16 otherwise, and always BF16 without DeepEP)."""
    engine = scenario.engine
    if engine.a2a_dispatch_dtype is not None:
        return engine.a2a_dispatch_dtype
    if engine.moe_a2a_backend is MoeA2aBackend.DEEPEP and scenario.workload.experts_dtype.compute is ComputeDtype.FP8:
        return A2aDtype.FP8
    return A2aDtype.BF16


@dataclass(frozen=True)
class MemoryLimit:
    """One integer-linear limit on one GPU's bytes:
    ``weights x w + kv_cache x k + activations x a + preload x p + cuda_graphs x g <= cap``, where
    ``preload`` is what the runtime holds before the weights load (``engine.reserve_bytes`` for the CUDA
    context and allocator, ``engine.comm_buffer_bytes`` for NCCL). ``label`` names the limit in the
    certificate (empty for an engine's only limit)."""

    label: str
    formula: str
    weights: int
    kv_cache: int
    activations: int
    preload: int
    cuda_graphs: int
    cap: int

    def charge(self, *, weights: int, kv_cache: int, activations: int, preload: int, cuda_graphs: int) -> int:
        """The left-hand side for these component bytes (Python ints: no overflow)."""
        return (self.weights * weights + self.kv_cache * kv_cache + self.activations * activations
                + self.preload * preload + self.cuda_graphs * cuda_graphs)


def _floor_times(value: int, fraction) -> int:
    return value * fraction.numerator // fraction.denominator


def memory_limits(scenario: Scenario) -> tuple[MemoryLimit, ...]:
    """The engine's memory limits (item 3 of the module docstring), in exact integers."""
    memory, u = scenario.cluster.gpu.memory_bytes, scenario.search.gpu_memory_utilization
    engine = scenario.engine
    name = engine.name
    if name is EngineName.SGLANG:
        free = memory - engine.reserve_bytes - engine.comm_buffer_bytes  # T: free when the weights start loading
        static = _floor_times(free, u) if free > 0 else -1  # -1: nothing fits
        return (
            MemoryLimit("", "weights + kv_cache <= floor(T x mem_fraction_static), T = memory_bytes - reserve - comm_buffers",
                        1, 1, 0, 0, 0, static),
            MemoryLimit("runtime", "activations + cuda_graphs <= T - floor(T x mem_fraction_static)",
                        0, 0, 1, 0, 1, (free - static) if free > 0 else -1),
        )
    if name is EngineName.TENSORRT_LLM:
        p, q = u.numerator, u.denominator
        return (MemoryLimit("", "kv_cache <= free_gpu_memory_fraction x (memory_bytes - weights - activations - runtime), "
                                "as q x kv_cache + p x (the rest) <= p x memory_bytes for the fraction p/q",
                            p, q, p, p, p, p * memory),)
    return (MemoryLimit("", "weights + kv_cache + activations + runtime <= floor(memory_bytes x gpu_memory_utilization)",
                        1, 1, 1, 1, 1, _floor_times(memory, u)),)


def usable_bytes(scenario: Scenario) -> int:
    """What a GPU's whole footprint must fit in when the limits hold: ``floor(memory x u)`` under vLLM's
    meaning (and Megatron's), the whole ``memory_bytes`` under SGLang's and TensorRT-LLM's, whose fraction
    splits the memory rather than capping it (their limits imply the total fits)."""
    if scenario.engine.name in (EngineName.SGLANG, EngineName.TENSORRT_LLM):
        return scenario.cluster.gpu.memory_bytes
    return memory_limits(scenario)[0].cap


def weights_and_kv_room_bytes(scenario: Scenario) -> int:
    """An upper bound on the weights plus KV cache one GPU can hold under the limits, for sound lower
    bounds on GPU counts: ``floor(memory x u) - runtime`` (vLLM), ``floor(T x u)`` (SGLang), ``memory -
    runtime`` (TensorRT-LLM: ``q/p >= 1`` weighs the KV cache at least as much as the rest)."""
    if scenario.engine.name is EngineName.SGLANG:
        return memory_limits(scenario)[0].cap
    return usable_bytes(scenario) - scenario.engine.runtime_bytes


def memory_fraction_flag(scenario: Scenario) -> str:
    """The engine's own name for ``search.gpu_memory_utilization``."""
    return {EngineName.SGLANG: "--mem-fraction-static",
            EngineName.TENSORRT_LLM: "kv_cache_config.free_gpu_memory_fraction"}.get(scenario.engine.name,
                                                                                    "--gpu-memory-utilization")
