"""Parameters and bytes per GPU, in exact integers.

Parameter counts follow the Hugging Face modelling code of each family (LlamaAttention, MixtralSparseMoeBlock,
Qwen3MoeSparseMoeBlock, DeepseekV3 MLA and MoE, GptOss): SwiGLU FFNs have three ``hidden x width`` matrices;
GQA attention ``q, o: hidden x heads*head_dim`` and ``k, v: hidden x kv_heads*head_dim``; MLA attention
``q_a, q_b, kv_a (with the rope part), kv_b, o`` as in DeepSeek-V2 (arXiv 2405.04434, section 2.1).

Sharding follows vLLM's layers: column/row-parallel linears divide by TP; KV heads are replicated when
TP > num_key_value_heads (each rank keeps one); MLA's ``q_a`` and ``kv_a`` projections are replicated; the
router is replicated; routed experts are split over EP (whole experts) and ETP (inside an expert);
embedding and LM head are vocab-parallel over TP.

Embedding, LM head, norms and router stay in BF16 when the weights are quantised, as DeepSeek-V3 does
(arXiv 2412.19437, section 3.3.1) and vLLM/ModelOpt checkpoints do.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from optimizer.model.engines import MemoryLimit, ffn_tp, lm_head_tp, memory_limits, physical_experts, shared_experts_tp
from optimizer.errors import OptimizerError
from optimizer.model.parallel import Layout
from optimizer.model.workload_features import draft_layers, draft_projection_params, draft_scenario, verify_tokens_per_sequence
from optimizer.inputs.scenario import Dtype, ModelSpec, Scenario, Workload
from optimizer.units import bytes_for, ceil_div

HIGH_PRECISION = Dtype.BF16  # embedding, LM head, norms, router
ACTIVATION_BYTES = 2  # BF16 activations
LOGITS_BYTES = 4  # FP32 logits for sampling


@dataclass(frozen=True)
class ParamCounts:
    """Unsharded parameter counts. Per-layer entries count one layer."""

    attention: int
    norms: int
    dense_ffn: int
    routed_expert: int
    router: int
    shared_ffn: int
    embedding: int
    lm_head: int
    final_norm: int


def ffn_params(*, hidden_size: int, width: int) -> int:
    """SwiGLU FFN: gate, up (hidden x width) and down (width x hidden)."""
    return 3 * hidden_size * width


def attention_params(model: ModelSpec) -> int:
    """Attention weights of one layer (biases where ``attention_bias``)."""
    h, nh = model.hidden_size, model.num_attention_heads
    if model.is_mla:
        qk = model.qk_nope_head_dim + model.qk_rope_head_dim  # type: ignore[operator]
        q = h * nh * qk if model.q_lora_rank is None else h * model.q_lora_rank + model.q_lora_rank * (1 + nh * qk)
        kv_a = h * (model.kv_lora_rank + model.qk_rope_head_dim) + model.kv_lora_rank  # type: ignore[operator]
        kv_b = model.kv_lora_rank * nh * (model.qk_nope_head_dim + model.v_head_dim)  # type: ignore[operator]
        return q + kv_a + kv_b + nh * model.v_head_dim * h  # type: ignore[operator]
    dh, nkv = model.attn_head_dim, model.kv_heads
    weights = h * nh * dh + 2 * h * nkv * dh + nh * dh * h
    bias = (nh * dh + 2 * nkv * dh + h) if model.attention_bias else 0
    return weights + bias


def param_counts(model: ModelSpec) -> ParamCounts:
    h = model.hidden_size
    lm_head = 0 if model.tie_word_embeddings else model.vocab_size * h
    return ParamCounts(
        attention=attention_params(model),
        norms=2 * h,
        dense_ffn=ffn_params(hidden_size=h, width=model.dense_ffn_width),
        routed_expert=ffn_params(hidden_size=h, width=model.expert_width) if model.is_moe else 0,
        router=h * model.num_experts,
        shared_ffn=ffn_params(hidden_size=h, width=model.shared_ffn_width),
        embedding=model.vocab_size * h,
        lm_head=lm_head,
        final_norm=h,
    )


def total_params(model: ModelSpec) -> int:
    """All parameters (embedding and LM head included, multi-token-prediction modules excluded)."""
    p = param_counts(model)
    per_layer = p.attention + p.norms
    moe_layer = per_layer + p.router + p.shared_ffn + model.num_experts * p.routed_expert
    return (
        model.num_dense_layers * (per_layer + p.dense_ffn)
        + model.num_moe_layers * moe_layer
        + p.embedding
        + p.lm_head
        + p.final_norm
    )


def active_params(model: ModelSpec) -> int:
    """Parameters one token touches: the routed experts it picks instead of all of them."""
    p = param_counts(model)
    inactive = model.num_moe_layers * (model.num_experts - model.num_experts_per_tok) * p.routed_expert
    return total_params(model) - inactive


# --- bytes per GPU ----------------------------------------------------------------------------------


def kv_heads_per_rank(*, model: ModelSpec, tp: int) -> int:
    """KV heads each TP rank stores: ``ceil(kv_heads / tp)``; replicated (1 each) when tp > kv_heads."""
    return ceil_div(model.kv_heads, tp)


def kv_cache_bytes_per_token_layer(*, model: ModelSpec, workload: Workload, tp: int) -> int:
    """KV-cache bytes one token of one layer takes on one GPU.

    GQA/MHA: ``2 x ceil(kv_heads / TP) x head_dim`` values; MLA: ``kv_lora_rank + qk_rope_head_dim``
    values, the same on every TP rank (DeepSeek-V2 section 2.1.2; vLLM's MLA backends replicate it).
    """
    if model.is_mla:
        values = model.kv_lora_rank + model.qk_rope_head_dim  # type: ignore[operator]
    else:
        values = 2 * kv_heads_per_rank(model=model, tp=tp) * model.attn_head_dim
    return bytes_for(values, workload.kv_cache_dtype.bits)


def attention_weight_bytes(*, model: ModelSpec, workload: Workload, tp: int) -> int:
    """One layer's attention weights on one TP rank, plus its (replicated) norms."""
    bits = workload.weight_dtype.bits
    h, nh = model.hidden_size, model.num_attention_heads
    norms = bytes_for(2 * h, HIGH_PRECISION.bits)
    if model.is_mla:
        qk = model.qk_nope_head_dim + model.qk_rope_head_dim  # type: ignore[operator]
        replicated = h * (model.kv_lora_rank + model.qk_rope_head_dim) + model.kv_lora_rank  # type: ignore[operator]
        sharded = model.kv_lora_rank * nh * (model.qk_nope_head_dim + model.v_head_dim)  # type: ignore[operator]
        sharded += nh * model.v_head_dim * h  # type: ignore[operator]
        if model.q_lora_rank is None:
            sharded += h * nh * qk
        else:
            replicated += h * model.q_lora_rank + model.q_lora_rank
            sharded += model.q_lora_rank * nh * qk
        return bytes_for(replicated, bits) + bytes_for(ceil_div(sharded, tp), bits) + norms
    dh = model.attn_head_dim
    kv = 2 * h * kv_heads_per_rank(model=model, tp=tp) * dh
    qo = ceil_div(2 * h * nh * dh, tp)
    bias = (ceil_div(nh * dh, tp) + 2 * kv_heads_per_rank(model=model, tp=tp) * dh + h) if model.attention_bias else 0
    return bytes_for(qo + kv + bias, bits) + norms


def ffn_weight_bytes(*, model: ModelSpec, workload: Workload, layout: Layout, dense: bool, dense_tp: int | None = None,
                     redundant_experts: int = 0, shared_tp: int | None = None) -> int:
    """One layer's FFN weights on one GPU: the dense FFN over ``dense_tp`` (the engine's FFN width,
    ``engines.ffn_tp``; default TP), or a MoE layer's local experts (``ceil((E + R) / EP)`` experts, each split
    over ETP, with ``R = redundant_experts`` replicas: SGLang ``--ep-num-redundant-experts``, vLLM EPLB
    ``--num-redundant-experts``; ``engines.physical_experts``), the shared experts over ``dense_tp`` too and the
    router (over the E logical experts). ``shared_tp`` overrides the shared experts' width
    (``engines.shared_experts_tp``: 1 under DeepEP)."""
    h = model.hidden_size
    bits = workload.weight_dtype.bits
    if dense:
        return bytes_for(ceil_div(ffn_params(hidden_size=h, width=model.dense_ffn_width), dense_tp or layout.tp), bits)
    local_experts = ceil_div(model.num_experts + redundant_experts, layout.ep)
    expert = ceil_div(ffn_params(hidden_size=h, width=model.expert_width), layout.etp)
    # the shared experts over the FFN group (SGLang: its whole --tp-size, models/deepseek_v2.py), else TP
    shared = ceil_div(ffn_params(hidden_size=h, width=model.shared_ffn_width), shared_tp or dense_tp or layout.tp)
    return (
        bytes_for(local_experts * expert, workload.experts_dtype.bits)
        + bytes_for(shared, bits)
        + bytes_for(h * model.num_experts, HIGH_PRECISION.bits)
    )


def layer_pattern(model: ModelSpec) -> tuple[bool, ...]:
    """Per layer, does it slide (``sliding_window`` keys only)? From ``layer_types``, else
    ``sliding_window_pattern`` (every p-th layer full, as transformers' Gemma3TextConfig), else all layers
    when ``sliding_window`` alone is set (Mistral 7B); all False when the model has no window."""
    if model.num_sliding_layers == 0:
        return (False,) * model.num_hidden_layers
    if model.layer_types is not None:
        return tuple(t == "sliding_attention" for t in model.layer_types)
    if model.sliding_window_pattern is not None:
        return tuple(bool((i + 1) % model.sliding_window_pattern) for i in range(model.num_hidden_layers))
    if model.sliding_window is None:  # Llama 4's chunked layers (ModelSpec.num_sliding_layers): all but every 4th
        return tuple(bool((i + 1) % 4) for i in range(model.num_hidden_layers))
    return (True,) * model.num_hidden_layers


def sliding_period(model: ModelSpec) -> tuple[int, int] | None:
    """``(p, s)``: the shortest period ``p`` of ``layer_pattern`` (layer i slides iff layer i mod p does) and
    the sliding layers ``s`` in one period; None when the model has no sliding layer. Any ``l`` consecutive
    layers then hold at least ``floor(l / p) x s`` sliding layers, wherever a pipeline stage starts (gpt-oss:
    (2, 1); Gemma 3: (6, 5); Mistral 7B: (1, 1)). The whole model is one period when no shorter one exists."""
    pattern = layer_pattern(model)
    if not any(pattern):
        return None
    n = len(pattern)
    p = next(q for q in range(1, n + 1) if all(pattern[i] == pattern[i % q] for i in range(n)))
    return p, sum(pattern[:p])


@dataclass(frozen=True)
class WindowedKv:
    """The KV cache the sliding-window layers do not keep (``engine.windowed_kv_cache``), as a bound linear in
    a stage's layer count: each layer is charged ``per_layer_saving`` bytes less and each stage
    ``stage_give_back`` bytes more. With ``U`` = one sliding layer's saving for ``batch`` sequences
    (``bytes per token x batch x (ISL + OSL - min(window, ISL + OSL))``) and the model's period ``(p, s)``
    (``sliding_period``): ``per_layer_saving = floor(s x U / p)``, ``stage_give_back = (p - 1) x
    per_layer_saving``. For ``l = q x p + r`` layers, ``l x per_layer_saving - stage_give_back <= q x s x U``,
    at most what the ``>= q x s`` sliding layers in any ``l`` consecutive ones save: the charge never falls
    below the exact one, and equals it for an all-sliding model (p = 1). vLLM reserves a sliding layer's
    slots for the last ``sliding_window`` tokens only (docs.vllm.ai design/hybrid_kv_cache_manager)."""

    per_layer_saving: int = 0
    stage_give_back: int = 0


def windowed_kv(*, scenario: Scenario, per_token: int, batch: int) -> WindowedKv:
    """``WindowedKv`` for one layout's ``per_token`` (one layer, one token, one GPU) and ``batch``; zero when
    ``engine.windowed_kv_cache`` is off, the model has no window or the sequences fit inside it."""
    model, workload = scenario.model, scenario.workload
    period = sliding_period(model)
    if not scenario.engine.windowed_kv_cache or period is None:
        return WindowedKv()
    seq = workload.max_sequence_tokens
    unit = per_token * batch * (seq - min(model.local_attention_window, seq))  # type: ignore[type-var]
    p, s = period
    saving = s * unit // p
    return WindowedKv(per_layer_saving=saving, stage_give_back=(p - 1) * saving)


@dataclass(frozen=True)
class LayerBytes:
    """Bytes one layer adds to one GPU of its stage: weights and the KV cache of ``batch`` sequences
    at full length (ISL + OSL)."""

    weights: int
    kv_cache: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache


def layer_bytes(*, scenario: Scenario, layout: Layout, batch: int, dense: bool) -> LayerBytes:
    model, workload = scenario.model, scenario.workload
    weights = attention_weight_bytes(model=model, workload=workload, tp=layout.tp) + ffn_weight_bytes(
        model=model, workload=workload, layout=layout, dense=dense, dense_tp=ffn_tp(scenario, layout),
        redundant_experts=scenario.engine.num_redundant_experts, shared_tp=shared_experts_tp(scenario, layout),
    )
    per_token = kv_cache_bytes_per_token_layer(model=model, workload=workload, tp=layout.tp)
    saving = windowed_kv(scenario=scenario, per_token=per_token, batch=batch).per_layer_saving
    return LayerBytes(weights=weights, kv_cache=per_token * batch * workload.max_sequence_tokens - saving)


@dataclass(frozen=True)
class StageFixedBytes:
    """Bytes one GPU of a stage holds whatever its layer count: embedding / LM head where the stage has
    them, the activation peak, and the runtime's own memory (CUDA context, graphs, NCCL buffers)."""

    weights: int
    activations: int
    reserve: int
    cuda_graphs: int
    comm_buffers: int
    kv_cache: int = 0  # WindowedKv.stage_give_back: what the per-layer windowed charge may undercount
    draft_weights: int = 0  # speculative decoding's draft module, last stage only (draft_bytes)
    draft_kv_cache: int = 0

    @property
    def total(self) -> int:
        return (self.weights + self.activations + self.reserve + self.cuda_graphs + self.comm_buffers
                + self.kv_cache + self.draft_weights + self.draft_kv_cache)


@dataclass(frozen=True)
class DraftBytes:
    """The speculative draft module on one GPU of the last stage (``workload_features``): its weights and the
    KV cache of ``batch`` sequences at full length in its layers; ``kv_bytes_per_token`` for one token."""

    weights: int
    kv_cache: int
    kv_bytes_per_token: int
    kv_bytes_per_sequence: int = 0  # one full-length sequence (kv_bytes_per_sequence_layers)


def kv_bytes_per_sequence_layers(*, scenario: Scenario, layout: Layout, layers: range) -> int:
    """KV cache one full-length sequence (ISL + OSL tokens) takes on one GPU in the model's ``layers`` (layer
    indices): ``kv_cache_bytes_per_token_layer`` for every token in every layer, and with
    ``engine.windowed_kv_cache`` only ``min(window, ISL + OSL)`` tokens in a sliding layer (``layer_pattern``;
    vLLM's hybrid KV cache manager, docs.vllm.ai design/hybrid_kv_cache_manager). Exact bytes; the
    ``WindowedKv`` charge of ``batch`` sequences is never below ``batch`` times this."""
    model, workload = scenario.model, scenario.workload
    per_token = kv_cache_bytes_per_token_layer(model=model, workload=workload, tp=layout.tp)
    seq = workload.max_sequence_tokens
    if not scenario.engine.windowed_kv_cache or sliding_period(model) is None:
        return per_token * seq * len(layers)
    window = min(model.local_attention_window, seq)  # type: ignore[type-var]
    pattern = layer_pattern(model)
    return per_token * sum(window if pattern[i] else seq for i in layers)


def draft_bytes(*, scenario: Scenario, layout: Layout, batch: int) -> DraftBytes:
    """Bytes of the draft module (MTP, EAGLE, EAGLE-3; none for ngram) on one GPU of the last pipeline stage,
    where vLLM and SGLang load it: ``draft_layers`` layers of the target's own kind (MoE for an MoE model,
    sharded as the target's are), the input projection (``eh_proj`` / ``fc``, replicated, BF16) and, per
    draft layer, one layer's KV cache for every token of ``batch`` full-length sequences. The embedding and
    LM head are the target's, shared (DeepSeek-V3 report section 2.2; vLLM's EAGLE/MTP proposers share them).
    All zero without speculation."""
    layers = draft_layers(scenario)
    if not layers:
        return DraftBytes(0, 0, 0)
    whole = draft_scenario(scenario)
    if whole is not None:  # a separate draft model: all its layers, its embedding and LM head, at the target's TP
        kinds = [(whole.model.num_dense_layers, True), (whole.model.num_moe_layers, False)]
        parts = [(count, layer_bytes(scenario=whole, layout=layout, batch=batch, dense=dense)) for count, dense in kinds]
        ends = stage_fixed_bytes(scenario=whole, layout=layout, batch=batch, first=True, last=True)
        per_token = kv_cache_bytes_per_token_layer(model=whole.model, workload=whole.workload, tp=layout.tp)
        # ends.kv_cache: the windowed bound's give-back for the draft's own sliding layers (0 without)
        return DraftBytes(weights=sum(n * b.weights for n, b in parts) + ends.weights,
                          kv_cache=sum(n * b.kv_cache for n, b in parts) + ends.kv_cache, kv_bytes_per_token=layers * per_token,
                          kv_bytes_per_sequence=kv_bytes_per_sequence_layers(scenario=whole, layout=layout, layers=range(layers)))
    layer = layer_bytes(scenario=scenario, layout=layout, batch=batch, dense=not scenario.model.is_moe)
    per_token = kv_cache_bytes_per_token_layer(model=scenario.model, workload=scenario.workload, tp=layout.tp)
    projection = bytes_for(draft_projection_params(scenario), HIGH_PRECISION.bits)
    # an MTP / EAGLE draft layer keeps the whole sequence: no sliding-window saving for it
    full = per_token * scenario.workload.max_sequence_tokens
    return DraftBytes(weights=layers * layer.weights + projection, kv_cache=layers * full * batch,
                      kv_bytes_per_token=layers * per_token, kv_bytes_per_sequence=layers * full)


def activation_peak_bytes(*, scenario: Scenario, layout: Layout, batch: int, last: bool) -> int:
    """Peak activation bytes on one GPU while a prefill chunk passes one layer (buffers are reused
    across layers, so this is counted once per GPU, not per layer).

    Chunk: ``min(batch x ISL, max_num_batched_tokens)`` tokens (vLLM profiles memory with one such chunk).
    Live at once: the residual stream and its normed copy (2h), the local QKV (``(nh + 2 kv) x d / TP``),
    and the local FFN gate+up output (``2 x width / TP`` dense, or under SGLang's attention DP the
    gathered ``tokens x ffn_tp / TP`` at ``2 x width / ffn_tp``; for MoE the tokens routed to this GPU's
    experts, ``tokens x k x max(TP, EP x ETP) / (TP x EP)``, at ``2 x width / ETP``). The last stage adds
    FP32 logits for ``batch`` sampled positions over ``V / TP`` (vocab-parallel; ``batch x (1 + k)`` when a
    speculative verify step scores k drafts per sequence). An estimate, not a measurement: issue #3
    calibrates it.
    """
    model, workload = scenario.model, scenario.workload
    tokens = min(batch * workload.input_tokens, scenario.engine.max_num_batched_tokens)
    h, tp = model.hidden_size, layout.tp
    heads = model.num_attention_heads + 2 * model.kv_heads
    head_dim = model.attn_head_dim if not model.is_mla else model.qk_nope_head_dim + model.qk_rope_head_dim  # type: ignore[operator]
    qkv = ceil_div(heads * head_dim, tp)
    dense_tp = ffn_tp(scenario, layout)
    ffn = ceil_div(2 * model.dense_ffn_width, dense_tp) * tokens * (dense_tp // tp)
    if model.is_moe:
        # the busiest EP rank: it holds ceil(P / EP) of the P = E + R expert slots (vLLM spreads a remainder,
        # determine_expert_map; R redundant replicas: engines.physical_experts)
        slots = physical_experts(scenario)
        routed = ceil_div(tokens * model.num_experts_per_tok * max(tp, layout.ep * layout.etp)
                          * ceil_div(slots, layout.ep), tp * slots)
        ffn = max(ffn, routed * ceil_div(2 * model.expert_width, layout.etp))
    per_chunk = ACTIVATION_BYTES * (tokens * (2 * h + qkv) + ffn)
    # a speculative verify step scores 1 + k positions per sequence (workload_features)
    positions = batch * verify_tokens_per_sequence(scenario)
    logits = LOGITS_BYTES * positions * ceil_div(model.vocab_size, tp) if last else 0
    return per_chunk + logits


def stage_fixed_bytes(*, scenario: Scenario, layout: Layout, batch: int, first: bool, last: bool) -> StageFixedBytes:
    model = scenario.model
    # The embedding is vocab-parallel over the attention TP; the LM head over the FFN group (SGLang's
    # ParallelLMHead spans its whole --tp-size unless --enable-dp-lm-head: models/deepseek_v2.py), which is
    # TP elsewhere. Tied weights on one stage are one tensor, the embedding's.
    h, shard, head_shard = model.hidden_size, ceil_div(model.vocab_size, layout.tp), ceil_div(model.vocab_size, lm_head_tp(scenario, layout))
    params = (shard * h if first else 0) + ((head_shard * h if not (model.tie_word_embeddings and first) else 0) + h if last else 0)
    draft = draft_bytes(scenario=scenario, layout=layout, batch=batch) if last else DraftBytes(0, 0, 0)
    return StageFixedBytes(
        weights=bytes_for(params, HIGH_PRECISION.bits),
        activations=activation_peak_bytes(scenario=scenario, layout=layout, batch=batch, last=last),
        reserve=scenario.engine.reserve_bytes,
        cuda_graphs=scenario.engine.cuda_graph_bytes,
        comm_buffers=scenario.engine.comm_buffer_bytes,
        draft_weights=draft.weights,
        draft_kv_cache=draft.kv_cache,
        kv_cache=windowed_kv(scenario=scenario, batch=batch, per_token=kv_cache_bytes_per_token_layer(
            model=model, workload=scenario.workload, tp=layout.tp)).stage_give_back,
    )


@dataclass(frozen=True)
class StageMemory:
    """Bytes on one GPU of one pipeline stage, by component."""

    stage: int
    dense_layers: int
    moe_layers: int
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    reserve_bytes: int
    cuda_graph_bytes: int
    comm_buffer_bytes: int
    kv_bytes_per_token: int  # KV cache one token takes on this GPU (all of the stage's layers, draft layers too)
    draft_weight_bytes: int = 0  # of weights_bytes: the speculative draft module's (last stage)
    draft_kv_cache_bytes: int = 0  # of kv_cache_bytes: the draft layers' KV cache
    sequence_tokens: int = 0  # ISL + OSL: the sequence kv_bytes_per_sequence is for
    # KV cache one such sequence takes on this GPU, a sliding layer holding only its window under
    # engine.windowed_kv_cache (kv_bytes_per_sequence_layers); 0: sequence_tokens x kv_bytes_per_token
    kv_bytes_per_sequence: int = 0

    @property
    def total_bytes(self) -> int:
        return (self.weights_bytes + self.kv_cache_bytes + self.activation_bytes + self.reserve_bytes
                + self.cuda_graph_bytes + self.comm_buffer_bytes)

    @property
    def placed_bytes(self) -> int:
        """What the balance rule (``targets.max_memory_imbalance_pct``) compares across stages: weights + KV
        cache + activations. The runtime's reserve, CUDA graphs and buffers are the same on every GPU, and
        are round figures rather than what the plan places, so they are left out."""
        return self.weights_bytes + self.kv_cache_bytes + self.activation_bytes

    def charge(self, limit: MemoryLimit) -> int:
        """``limit``'s left-hand side for this GPU (exact)."""
        return limit.charge(weights=self.weights_bytes, kv_cache=self.kv_cache_bytes, activations=self.activation_bytes,
                            preload=self.reserve_bytes + self.comm_buffer_bytes, cuda_graphs=self.cuda_graph_bytes)

    def kv_capacity_tokens(self, limits: tuple[MemoryLimit, ...]) -> int | None:
        """Tokens of KV cache this GPU can hold once everything but the KV cache is placed, counted in
        full-length sequences: with ``B = kv_bytes_per_sequence`` bytes for a sequence of ``S =
        sequence_tokens`` tokens, ``min over limits of floor((cap - charge without KV) x S / (k x B))``, so
        ``tokens // S`` is the most whole sequences within every limit (0 if some limit fails without any KV
        cache); None for a stage without layers (no KV cache). Without sliding windows ``B = S x
        kv_bytes_per_token`` and this is vLLM's ``floor((cap - charge without KV) / (k x bytes per token))``;
        with ``engine.windowed_kv_cache`` a sliding layer keeps only its window of each sequence, so the
        figure holds for sequences of the workload's ISL + OSL (a shorter one takes more bytes per token)."""
        if self.kv_bytes_per_token == 0:
            return None
        per_sequence, length = ((self.kv_bytes_per_sequence, self.sequence_tokens) if self.kv_bytes_per_sequence
                                else (self.kv_bytes_per_token, 1))
        tokens = None
        for limit in limits:
            rest = self.charge(limit) - limit.kv_cache * self.kv_cache_bytes
            if rest > limit.cap:
                return 0
            if limit.kv_cache:
                room = (limit.cap - rest) * length // (limit.kv_cache * per_sequence)
                tokens = room if tokens is None else min(tokens, room)
        return tokens


def layer_kinds(*, model: ModelSpec, layers_per_stage: tuple[int, ...]) -> list[tuple[int, int]]:
    """``(dense, moe)`` layer counts per stage; the model's ``num_dense_layers`` dense layers come first (all of
    them for a DeepSeek-style MoE; for interleaved Llama 4 layers the search's stand-in order, see ``split``)."""
    kinds, start = [], 0
    for count in layers_per_stage:
        dense = max(0, min(start + count, model.num_dense_layers) - start)
        kinds.append((dense, count - dense))
        start += count
    return kinds


def stage_memory(*, scenario: Scenario, layout: Layout, layers_per_stage: tuple[int, ...], batch: int) -> list[StageMemory]:
    """Memory per GPU for every stage of a concrete plan, by component (exact integers).

    The KV cache counts ``batch`` sequences at full length (ISL + OSL) in every layer, sliding-window
    layers included, unless ``engine.windowed_kv_cache`` is on: then sliding layers keep only the window, as
    vLLM's hybrid allocator does, counted through ``WindowedKv``'s bound (exact for an all-sliding model, at
    most ``stage_give_back`` bytes over otherwise). Off, gpt-oss-like models are over-counted (conservative;
    the latency model does use the window)."""
    dense_b = layer_bytes(scenario=scenario, layout=layout, batch=batch, dense=True)
    moe_b = layer_bytes(scenario=scenario, layout=layout, batch=batch, dense=False)
    per_token = kv_cache_bytes_per_token_layer(model=scenario.model, workload=scenario.workload, tp=layout.tp)
    draft = draft_bytes(scenario=scenario, layout=layout, batch=batch)
    result = []
    last_stage = len(layers_per_stage) - 1
    starts = [sum(layers_per_stage[:s]) for s in range(len(layers_per_stage))]
    for s, (dense, moe) in enumerate(layer_kinds(model=scenario.model, layers_per_stage=layers_per_stage)):
        fixed = stage_fixed_bytes(scenario=scenario, layout=layout, batch=batch, first=s == 0, last=s == last_stage)
        # the draft module: computed again here (draft_bytes) rather than read from ``fixed``, so the check
        # adds the draft's terms by its own path (the solver's memory_table reads them through _fixed_charge)
        own = draft if s == last_stage else DraftBytes(0, 0, 0)
        result.append(
            StageMemory(
                stage=s,
                dense_layers=dense,
                moe_layers=moe,
                weights_bytes=dense * dense_b.weights + moe * moe_b.weights + fixed.weights + own.weights,
                kv_cache_bytes=dense * dense_b.kv_cache + moe * moe_b.kv_cache + fixed.kv_cache + own.kv_cache,
                activation_bytes=fixed.activations,
                reserve_bytes=fixed.reserve,
                cuda_graph_bytes=fixed.cuda_graphs,
                comm_buffer_bytes=fixed.comm_buffers,
                kv_bytes_per_token=(dense + moe) * per_token + own.kv_bytes_per_token,
                draft_weight_bytes=own.weights,
                draft_kv_cache_bytes=own.kv_cache,
                sequence_tokens=scenario.workload.max_sequence_tokens,
                kv_bytes_per_sequence=own.kv_bytes_per_sequence + kv_bytes_per_sequence_layers(
                    scenario=scenario, layout=layout, layers=range(starts[s], starts[s] + dense + moe)),
            )
        )
    return result


@dataclass(frozen=True)
class LimitTable:
    """Per layout (grid order), the integers one memory limit is linear in: its charge per dense and per
    MoE layer (for a dense model both are the dense layer's), and the fixed charge of a first, middle,
    last or only (PP = 1) stage; the stage fits when ``layers x per-layer + fixed <= cap``
    (``MemoryTable.with_caps``)."""

    limit: MemoryLimit
    dense_layer: tuple[int, ...]
    moe_layer: tuple[int, ...]
    fixed_first: tuple[int, ...]
    fixed_middle: tuple[int, ...]
    fixed_last: tuple[int, ...]
    fixed_only: tuple[int, ...]


@dataclass(frozen=True)
class MemoryTable:
    """One ``LimitTable`` per limit of the scenario's engine (``engines.memory_limits``). The charges do
    not depend on the GPU's memory size, so one table serves scenarios that differ only there (the
    diagnosis bisects it): read the caps with ``with_caps`` for the scenario at hand."""

    limits: tuple[LimitTable, ...]

    def with_caps(self, scenario: Scenario) -> list[tuple[LimitTable, int]]:
        """Each limit's table with its cap for ``scenario``.

        Raises:
            OptimizerError: the table was built for other limits (another engine or memory fraction).
        """
        limits = memory_limits(scenario)
        if [replace(t.limit, cap=0) for t in self.limits] != [replace(m, cap=0) for m in limits]:
            raise OptimizerError("internal error: memory table built for other memory limits than the scenario's")
        return [(t, m.cap) for t, m in zip(self.limits, limits)]


def _layer_charge(limit: MemoryLimit, b: LayerBytes) -> int:
    return limit.charge(weights=b.weights, kv_cache=b.kv_cache, activations=0, preload=0, cuda_graphs=0)


def _fixed_charge(limit: MemoryLimit, f: StageFixedBytes) -> int:
    return limit.charge(weights=f.weights + f.draft_weights, kv_cache=f.kv_cache + f.draft_kv_cache,
                        activations=f.activations, preload=f.reserve + f.comm_buffers, cuda_graphs=f.cuda_graphs)


def memory_table(*, scenario: Scenario, layouts: tuple[Layout, ...], batches: tuple[int, ...]) -> MemoryTable:
    limits = memory_limits(scenario)
    rows: list[list[tuple[int, ...]]] = [[] for _ in limits]
    for layout, batch in zip(layouts, batches):
        kw = dict(scenario=scenario, layout=layout, batch=batch)
        dense, moe = layer_bytes(**kw, dense=True), layer_bytes(**kw, dense=not scenario.model.is_moe)
        fixed = [stage_fixed_bytes(**kw, first=first, last=last)
                 for first, last in ((True, False), (False, False), (False, True), (True, True))]
        for i, limit in enumerate(limits):
            rows[i].append((_layer_charge(limit, dense), _layer_charge(limit, moe), *(_fixed_charge(limit, f) for f in fixed)))
    return MemoryTable(tuple(LimitTable(limit, *(tuple(col) for col in zip(*r))) if r else LimitTable(limit, (), (), (), (), (), ())
                             for limit, r in zip(limits, rows)))


@dataclass(frozen=True)
class PlacedBytesLine:
    """``StageMemory.placed_bytes`` of one layout and batch as a line in the layer count: a stage with
    ``d`` dense and ``m`` MoE layers holds ``d x dense_layer + m x moe_layer + fixed_<where>`` bytes
    (``where``: the first, a middle, the last or the only stage). Exact integers; the definition both the
    search and the certificate read, as they read the memory tables."""

    dense_layer: int
    moe_layer: int
    fixed_first: int
    fixed_middle: int
    fixed_last: int
    fixed_only: int


def placed_bytes_line(*, scenario: Scenario, layout: Layout, batch: int) -> PlacedBytesLine:
    kw = dict(scenario=scenario, layout=layout, batch=batch)
    dense, moe = layer_bytes(**kw, dense=True), layer_bytes(**kw, dense=not scenario.model.is_moe)
    fixed = [stage_fixed_bytes(**kw, first=first, last=last) for first, last in ((True, False), (False, False), (False, True), (True, True))]
    return PlacedBytesLine(dense.total, moe.total, *(f.weights + f.activations + f.kv_cache + f.draft_weights
                                                     + f.draft_kv_cache for f in fixed))
