"""Frozen, validated inputs: the GPUs and their links, the model, the workload, the targets, the engine
profile and the search settings. Every size is an integer in base units; every fraction a ``Fraction``.

Field names follow Hugging Face ``config.json`` for the model (``num_hidden_layers``, ``num_key_value_heads``,
``moe_intermediate_size``, ...) and vLLM / SGLang for the workload (ISL = ``input_tokens``, OSL =
``output_tokens``, ``gpu_memory_utilization``). Loading from YAML lives in ``optimizer.inputs.loader``.
"""

from __future__ import annotations

from enum import StrEnum
from fractions import Fraction
from functools import cached_property
from math import isfinite
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from optimizer.units import exact_decimal

_FROZEN = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


def _is_number(annotation: object) -> bool:
    """``int``, ``float`` or an optional one (``int | None``)."""
    if get_origin(annotation) in (Union, UnionType):
        return any(_is_number(arg) for arg in get_args(annotation))
    return annotation in (int, float)


class _Frozen(BaseModel):
    """Base of the input sections: frozen, unknown fields refused, and YAML ``true``/``false`` refused
    where a number belongs (pydantic would read them as 1 and 0: ``num_nodes: true`` is one node)."""

    model_config = _FROZEN

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: object, info: ValidationInfo) -> object:
        if isinstance(value, bool) and info.field_name and _is_number(cls.model_fields[info.field_name].annotation):
            raise ValueError("expected a number, not true/false")
        return value


def _to_fraction(value: object) -> Fraction:
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Fraction)):
        raise ValueError(f"expected a number, got {type(value).__name__}")
    try:
        return exact_decimal(value)
    except (ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"not a number: {value!r}") from exc


_DTYPE_BITS = {  # by Dtype value; a table built once (the memory tables ask millions of times)
    "bf16": Fraction(16),
    "fp16": Fraction(16),
    "fp8": Fraction(8),
    "fp8-block": Fraction(8) + Fraction(32, 128 * 128),
    "int8": Fraction(8),
    "int4": Fraction(4) + Fraction(32, 128),
    "mxfp4": Fraction(4) + Fraction(8, 32),
    "nvfp4": Fraction(4) + Fraction(8, 16),
}

def _exact_out(value: Fraction) -> int | float | str:
    """An exact number as JSON and YAML carry it back unchanged: an integer; a float whose shortest repr is
    the same decimal (0.05, which ``exact_decimal`` reads as 1/20 again); else the fraction as a string
    ("1/3": a float would come back as 3333333333333333/10**16)."""
    if value.denominator == 1:
        return value.numerator
    as_float = float(value)
    return as_float if Fraction(repr(as_float)) == value else f"{value.numerator}/{value.denominator}"


ExactNumber = Annotated[
    Fraction,
    BeforeValidator(_to_fraction),
    PlainSerializer(lambda f: _exact_out(f), return_type=float | int | str),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^\s*-?\d+(\.\d+)?(/\d+)?\s*$"}],
                    "description": "an exact decimal as written (0.05 means 1/20), or a fraction string such as 9/10"}),
]


class Dtype(StrEnum):
    """Storage formats for weights and KV cache. ``bits`` counts the scales that block formats carry."""

    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    FP8_BLOCK = "fp8-block"  # DeepSeek-V3: e4m3 with one fp32 scale per 128x128 block
    INT8 = "int8"
    INT4 = "int4"  # AWQ/GPTQ: 4 bits + one fp16 scale and zero point per 128 values
    MXFP4 = "mxfp4"  # OCP MX: 4 bits + one 8-bit scale per 32 values (gpt-oss experts)
    NVFP4 = "nvfp4"  # 4 bits + one fp8 scale per 16 values

    @property
    def bits(self) -> Fraction:
        """Bits per stored value, scales included (OCP MX spec v1.0; NVIDIA NVFP4 blog; DeepSeek-V3 §3.3)."""
        return _DTYPE_BITS[self.value]

    @property
    def block_size(self) -> int | None:
        """Width a sharded weight dimension must stay a multiple of (vLLM's block-FP8 check), or None."""
        return 128 if self is Dtype.FP8_BLOCK else None

    @property
    def compute(self) -> ComputeDtype:
        """The tensor-core format the matmuls run in with these weights (W8A8 for 8-bit, else BF16)."""
        if self in (Dtype.FP8, Dtype.FP8_BLOCK, Dtype.INT8):
            return ComputeDtype.FP8
        if self in (Dtype.MXFP4, Dtype.NVFP4):
            return ComputeDtype.FP4
        return ComputeDtype.BF16


class ComputeDtype(StrEnum):
    BF16 = "bf16"
    FP8 = "fp8"
    FP4 = "fp4"


class Link(_Frozen):
    """One kind of link, seen from one GPU: bandwidth per direction and per-message latency (alpha)."""

    bandwidth_bytes_per_s: int = Field(gt=0, description="per GPU, per direction")
    latency_us: float = Field(ge=0, allow_inf_nan=False, description="alpha of the alpha-beta model, microseconds")


class GpuSpec(_Frozen):
    """One GPU: memory, dense tensor throughput per compute format, HBM bandwidth."""

    name: str = Field(min_length=1)
    memory_bytes: int = Field(gt=0)
    hbm_bytes_per_s: int = Field(gt=0)
    dense_tflops: dict[ComputeDtype, float] = Field(description="dense (no sparsity) peak, TFLOPS")
    sm_count: int | None = Field(
        default=None, gt=0, le=1 << 12,
        description="streaming multiprocessors (torch.cuda.get_device_properties().multi_processor_count); used where an "
                    "engine reserves SMs for communication (SGLang's DeepEP prefill); None: unknown, no reservation charged")
    source: str = ""

    @field_validator("dense_tflops", mode="before")
    @classmethod
    def _no_bool_tflops(cls, value: object) -> object:
        if isinstance(value, dict) and any(isinstance(v, bool) for v in value.values()):
            raise ValueError("dense_tflops values must be numbers, not true/false")
        return value

    @model_validator(mode="after")
    def _has_bf16(self) -> GpuSpec:
        if ComputeDtype.BF16 not in self.dense_tflops:
            raise ValueError("dense_tflops needs a bf16 entry")
        if any(not (v > 0 and isfinite(v)) for v in self.dense_tflops.values()):
            raise ValueError("dense_tflops values must be finite numbers > 0")
        return self

    def peak_flops_per_s(self, dtype: ComputeDtype) -> float:
        """Peak dense FLOP/s for ``dtype``; formats the GPU lacks fall back to BF16 (weight-only quant)."""
        return self.dense_tflops.get(dtype, self.dense_tflops[ComputeDtype.BF16]) * 1e12


class Cluster(_Frozen):
    """``num_nodes`` nodes of ``gpus_per_node`` identical GPUs."""

    gpu: GpuSpec
    num_nodes: int = Field(gt=0, le=1 << 16)
    gpus_per_node: int = Field(gt=0, le=1 << 10)
    gpus_per_host: int | None = Field(
        default=None, gt=0, le=1 << 10,
        description="GPUs per machine (operating system, Kubernetes node) where a node is an NVLink domain of several "
                    "(GB200/GB300 NVL72: 18 compute trays of 4 GPUs); default: the node is one machine")
    intra_node_link: Link
    inter_node_link: Link
    allow_tp_across_nodes: bool | None = Field(
        default=None,
        description="may a TP group span nodes (costed on inter_node_link)? Default: as the scenario's engine runs "
                    "(TP_ACROSS_NODES_BY_ENGINE: vLLM, SGLang and TensorRT-LLM yes, Megatron-Core no)")

    @model_validator(mode="after")
    def _hosts_tile_the_node(self) -> Cluster:
        if self.gpus_per_host is not None and self.gpus_per_node % self.gpus_per_host:
            raise ValueError(f"cluster.gpus_per_host {self.gpus_per_host} must divide gpus_per_node {self.gpus_per_node} "
                             "(a node is whole machines)")
        return self

    @property
    def num_gpus(self) -> int:
        return self.num_nodes * self.gpus_per_node


class ModelSpec(_Frozen):
    """Architecture in Hugging Face ``config.json`` terms (Llama, Mixtral, Qwen3-MoE, DeepSeek-V2/V3,
    gpt-oss). Experts are ``num_experts`` (aliases ``num_local_experts``, ``n_routed_experts``).

    For Mixtral and gpt-oss, where ``intermediate_size`` is the expert width, ``moe_intermediate_size``
    defaults to it and the model has no dense FFN.
    """

    name: str = Field(min_length=1)
    architecture: str | None = None
    num_hidden_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    intermediate_size: int = Field(ge=0, description="dense FFN width (dense layers, dense models)")
    num_attention_heads: int = Field(gt=0)
    num_key_value_heads: int | None = Field(default=None, gt=0)
    head_dim: int | None = Field(default=None, gt=0)
    vocab_size: int = Field(gt=0)
    num_experts: int = Field(
        default=0, ge=0, validation_alias=AliasChoices("num_experts", "num_local_experts", "n_routed_experts")
    )
    num_experts_per_tok: int = Field(default=0, ge=0)
    moe_intermediate_size: int | None = Field(default=None, gt=0)
    n_shared_experts: int = Field(default=0, ge=0)
    shared_expert_intermediate_size: int = Field(default=0, ge=0)
    first_k_dense_replace: int = Field(default=0, ge=0)
    interleave_moe_layer_step: int = Field(
        default=1, gt=0, le=1 << 16,
        description="Llama 4: every k-th layer is MoE (layers k-1, 2k-1, ...), the others dense (transformers "
                    "Llama4TextConfig.moe_layers); 1: every layer after first_k_dense_replace is MoE")
    intermediate_size_mlp: int | None = Field(
        default=None, gt=0, description="Llama 4: FFN width of the dense layers (intermediate_size is then the expert width)")
    attention_chunk_size: int | None = Field(
        default=None, gt=0, description="Llama 4: chunked local attention on the 3 of 4 layers that use RoPE (transformers "
                                        "Llama4TextConfig no_rope_layers, interval 4); counted as a sliding window of "
                                        "this many tokens (a query sees at most its chunk: conservative)")
    kv_lora_rank: int | None = Field(default=None, gt=0)
    q_lora_rank: int | None = Field(default=None, gt=0)
    qk_rope_head_dim: int | None = Field(default=None, gt=0)
    qk_nope_head_dim: int | None = Field(default=None, gt=0)
    v_head_dim: int | None = Field(default=None, gt=0)
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    sliding_window: int | None = Field(default=None, gt=0, description="keys a sliding-window layer attends to")
    layer_types: tuple[Literal["sliding_attention", "full_attention"], ...] | None = Field(
        default=None, description="per layer (gpt-oss, Gemma, Qwen3): which layers use the window")
    use_sliding_window: bool | None = Field(default=None, description="Qwen2/3: false turns sliding_window off")
    num_nextn_predict_layers: int = Field(
        default=0, ge=0, le=64,
        description="multi-token-prediction layers the checkpoint holds (DeepSeek-V3: 1); served, sized and costed "
                    "only with engine.speculative.method mtp, else not loaded (vLLM, SGLang)")
    sliding_window_pattern: int | None = Field(
        default=None, gt=0, description="Gemma 3 (no layer_types): every sliding_window_pattern-th layer is full "
                                        "attention, the others slide")
    source: str = ""
    published_params: str | None = Field(default=None, description='total parameters as published, e.g. "46.7B"')
    ignored_config_fields: tuple[str, ...] = Field(
        default=(), exclude=True,
        description="keys of a Hugging Face config.json (a file or pasted inline) that do not change memory or cost "
                    "here; set by the loader and listed in the plan's notes, never written back")

    @model_validator(mode="after")
    def _consistent(self) -> ModelSpec:
        if self.num_experts and not self.num_experts_per_tok:
            raise ValueError("num_experts_per_tok must be >= 1 when num_experts > 0")
        if self.num_experts_per_tok > self.num_experts:
            raise ValueError(
                f"num_experts_per_tok={self.num_experts_per_tok} exceeds num_experts={self.num_experts}"
            )
        if self.first_k_dense_replace > self.num_hidden_layers:
            raise ValueError("first_k_dense_replace exceeds num_hidden_layers")
        if self.is_mla and (self.qk_rope_head_dim is None or self.qk_nope_head_dim is None or self.v_head_dim is None):
            raise ValueError("MLA (kv_lora_rank set) needs qk_rope_head_dim, qk_nope_head_dim and v_head_dim")
        if not self.is_mla and self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError("head_dim is missing and hidden_size is not divisible by num_attention_heads")
        if self.kv_heads > self.num_attention_heads or self.num_attention_heads % self.kv_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
        if self.layer_types is not None and len(self.layer_types) != self.num_hidden_layers:
            raise ValueError(f"layer_types has {len(self.layer_types)} entries for {self.num_hidden_layers} layers")
        if self.layer_types and "sliding_attention" in self.layer_types and self.sliding_window is None:
            raise ValueError("layer_types names sliding_attention layers but sliding_window is not set")
        if self.dense_ffn_width == 0 and self.num_dense_layers:
            raise ValueError("intermediate_size must be > 0 for dense layers")
        if self.interleave_moe_layer_step > 1 and not self.is_moe:
            raise ValueError("interleave_moe_layer_step > 1 needs num_experts > 0")
        return self

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def attn_head_dim(self) -> int:
        """Per-head width of Q/K for GQA/MHA (``head_dim`` or ``hidden_size / num_attention_heads``)."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def expert_width(self) -> int:
        """FFN width of one routed expert."""
        return self.moe_intermediate_size or self.intermediate_size

    @property
    def shared_ffn_width(self) -> int:
        """Total FFN width of the shared experts of one MoE layer (DeepSeek, Qwen2-MoE); 0 if none."""
        return self.n_shared_experts * self.expert_width + self.shared_expert_intermediate_size

    @property
    def dense_ffn_width(self) -> int:
        """FFN width of a dense layer: ``intermediate_size_mlp`` (Llama 4), else ``intermediate_size`` unless it is
        really the expert width."""
        if self.intermediate_size_mlp is not None:
            return self.intermediate_size_mlp
        if self.is_moe and self.moe_intermediate_size is None:
            return 0
        return self.intermediate_size

    @property
    def num_dense_layers(self) -> int:
        """Layers with a dense FFN: all of a dense model; of a MoE model the first ``first_k_dense_replace``
        and, with ``interleave_moe_layer_step`` k > 1, every later layer i with (i + 1) % k != 0 (Llama 4
        Maverick: 24 of 48). The search places them all first (``split.leading_dense_layers``)."""
        if not self.is_moe:
            return self.num_hidden_layers
        k, first = self.interleave_moe_layer_step, self.first_k_dense_replace
        return first + sum(1 for i in range(first, self.num_hidden_layers) if (i + 1) % k)

    @property
    def num_sliding_layers(self) -> int:
        """Layers that attend over ``sliding_window`` keys: those ``layer_types`` marks, or every layer
        when only ``sliding_window`` is given (Mistral 7B), all but every ``sliding_window_pattern``-th
        (Gemma 3: 5 of 6), none when ``use_sliding_window`` is false
        (Qwen2/3 configs carry a window they do not use)."""
        if self.sliding_window is None or self.use_sliding_window is False:
            if self.attention_chunk_size is not None:  # Llama 4: every 4th layer (NoPE) is global, the others chunked
                return sum(1 for i in range(self.num_hidden_layers) if (i + 1) % 4)
            return 0
        if self.layer_types is not None:
            return sum(1 for t in self.layer_types if t == "sliding_attention")
        if self.sliding_window_pattern is not None:  # transformers Gemma3TextConfig: (i + 1) % pattern != 0 slides
            return sum(1 for i in range(self.num_hidden_layers) if (i + 1) % self.sliding_window_pattern)
        return self.num_hidden_layers

    @property
    def local_attention_window(self) -> int | None:
        """Keys a local-attention layer (``num_sliding_layers`` of them) sees at most: ``sliding_window``, else
        Llama 4's ``attention_chunk_size``. A chunked layer's query sees only its own chunk, at most that many
        keys, so a sliding window of the chunk's size bounds both its KV cache and its attention work."""
        if self.sliding_window is not None and self.use_sliding_window is not False:
            return self.sliding_window
        return self.attention_chunk_size

    @property
    def num_moe_layers(self) -> int:
        return self.num_hidden_layers - self.num_dense_layers


class Workload(_Frozen):
    """What the deployment serves: ``concurrent_sequences`` requests in flight at once, each with
    ``input_tokens`` (ISL) of prompt and ``output_tokens`` (OSL) generated."""

    concurrent_sequences: int = Field(gt=0, le=1 << 24)
    input_tokens: int = Field(gt=0, le=1 << 24)
    output_tokens: int = Field(ge=0, le=1 << 24)
    weight_dtype: Dtype = Dtype.BF16
    expert_weight_dtype: Dtype | None = Field(default=None, description="routed experts; default weight_dtype")
    kv_cache_dtype: Dtype = Dtype.BF16
    routing_imbalance: float = Field(
        default=1.0, ge=1.0, le=1024.0, allow_inf_nan=False,
        description="MoE: tokens on the busiest expert GPU over the mean (1 = perfectly balanced)")
    prefix_cache_hit_rate: ExactNumber = Field(
        default=Fraction(0),
        description="fraction of each prompt's tokens found in the prefix cache, 0 <= rate < 1 (vLLM automatic prefix "
                    "caching, on by default in V1; SGLang RadixAttention, on by default): prefill computes only the "
                    "rest, which still attends over the whole prompt (optimizer/model/workload_features.py); 0: none")

    @field_validator("prefix_cache_hit_rate")
    @classmethod
    def _hit_rate(cls, value: Fraction) -> Fraction:
        if not 0 <= value < 1:
            raise ValueError(f"must be at least 0 and below 1 (a fraction of the prompt's tokens), got {float(value)}")
        return value

    @property
    def experts_dtype(self) -> Dtype:
        return self.expert_weight_dtype or self.weight_dtype

    @property
    def max_sequence_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Targets(_Frozen):
    """Service-level targets; each may be absent. Exact decimals as written (0.05 means 1/20).

    The balance targets (``max_compute_imbalance_pct``, ``max_memory_imbalance_pct``) are percentages
    compared in integers, ``100 x (max - min) <= pct x max`` over the plan's pipeline stages
    (``rules.ComputeBalance``, ``rules.MemoryBalance``)."""

    ttft_s: ExactNumber | None = None
    tpot_s: ExactNumber | None = None
    output_tokens_per_s: ExactNumber | None = None
    request_rate_per_s: ExactNumber | None = Field(
        default=None, description="requests per second the deployment must carry (objective fewest_gpus)")
    max_compute_imbalance_pct: ExactNumber | None = Field(
        default=None,
        description="percent, 0 to 100: over the plan's pipeline stages (every GPU of a stage carries the same work), "
                    "100 x (max - min) <= pct x max of each stage's decode step time in integer ns; unset: no rule")
    max_memory_imbalance_pct: ExactNumber | None = Field(
        default=None,
        description="percent, 0 to 100: over the plan's pipeline stages, 100 x (max - min) <= pct x max of the bytes a "
                    "stage's GPU holds (weights + KV cache + activations, exact integers); unset: no rule")

    @model_validator(mode="after")
    def _positive(self) -> Targets:
        for name in ("ttft_s", "tpot_s", "output_tokens_per_s", "request_rate_per_s"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be > 0, got {float(value)}")
        for name in ("max_compute_imbalance_pct", "max_memory_imbalance_pct"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 100:
                raise ValueError(f"{name} must be a percentage from 0 to 100, got {float(value)}")
        return self


class EngineName(StrEnum):
    """Engine profiles (``optimizer/model/engines.py``, rules in ``optimizer/search/rules.py``, sources in
    ``docs/engine-rules.md``)."""

    MEGATRON = "megatron"  # Megatron-Core MoE parallel folding: any ETP x EP x EDP = TP x DP
    VLLM = "vllm"  # 0.33: EP = TP x DP of an instance (--enable-expert-parallel) or ETP = TP x DP
    SGLANG = "sglang"  # 0.5.23: ETP x EP = --tp-size = TP x attention DP of an instance; dense FFN over it
    TENSORRT_LLM = "tensorrt-llm"  # 1.2: moe_tp x moe_ep = tp_size; attention DP all (TP = 1) or none


class TtftModel(StrEnum):
    """How TTFT is modelled (``cost.integer_costs``): ``isolated``, one prompt's prefill alone on an idle
    replica; ``loaded``, the prompt's chunks scheduled among the replica's running decodes and the other
    prompts' prefills, as the engine's scheduler does at the scenario's concurrency."""

    ISOLATED = "isolated"
    LOADED = "loaded"


class MoeA2aBackend(StrEnum):
    """How tokens reach their experts (``Engine.moe_a2a_backend``)."""

    NONE = "none"  # the engine's default collective: every top-k copy sent, BF16, not overlapped
    DEEPEP = "deepep"  # DeepEP kernels (deepseek-ai/DeepEP): SGLang --moe-a2a-backend deepep, vLLM deepep_* backends


class DeepepMode(StrEnum):
    """DeepEP's kernels (``Engine.deepep_mode``; SGLang ``--deepep-mode``, ``layers/moe/utils.py`` DeepEPMode)."""

    NORMAL = "normal"  # high throughput: once per node over RDMA, then NVLink (vLLM deepep_high_throughput)
    LOW_LATENCY = "low_latency"  # one RDMA write per (token, expert) (vLLM deepep_low_latency)
    AUTO = "auto"  # SGLang's default: normal for a batch with prefill (extend), low-latency for decode


class A2aDtype(StrEnum):
    """What the MoE dispatch carries: BF16, or FP8 e4m3 with one FP32 scale per 128 values."""

    BF16 = "bf16"
    FP8 = "fp8"

    @property
    def bits(self) -> Fraction:
        """Bits per hidden value on the wire, scales included (SGLang ``token_dispatcher/deepep.py``:
        ``sglang_per_token_group_quant_fp8(hidden_states, 128)`` before the dispatch)."""
        return Fraction(16) if self is A2aDtype.BF16 else Fraction(8) + Fraction(32, 128)


class SpeculativeMethod(StrEnum):
    """Where draft tokens come from (vLLM ``--speculative-config`` ``method``, vllm/config/speculative.py
    SpeculativeMethod; SGLang ``--speculative-algorithm``; TensorRT-LLM ``speculative_config.decoding_type``)."""

    MTP = "mtp"  # the model's own multi-token-prediction layers (DeepSeek-V3 num_nextn_predict_layers)
    EAGLE = "eagle"  # an EAGLE head: one decoder layer on the target's hidden states (arXiv 2401.15077)
    EAGLE3 = "eagle3"  # EAGLE-3: one decoder layer fed three of the target's hidden layers (arXiv 2503.01840)
    NGRAM = "ngram"  # prompt lookup: drafts copied from the context, no draft network
    DRAFT_MODEL = "draft_model"  # a smaller model of the same tokenizer (vLLM draft_model, SGLang STANDALONE)


class Speculative(_Frozen):
    """Speculative decoding (``Engine.speculative``): each decode step drafts ``num_speculative_tokens`` (k)
    tokens per sequence and the target verifies them with the next token in one forward pass of ``1 + k``
    tokens. ``acceptance_rate`` (a) is the probability that a draft token is accepted given the ones before
    it were; a step then yields ``(1 - a^(k+1)) / (1 - a)`` tokens in expectation (Leviathan, Kalman, Matias,
    "Fast Inference from Transformers via Speculative Decoding", ICML 2023, eq. 1; ``k + 1`` at ``a = 1``).
    Measure ``a`` on your traffic (vLLM's spec-decode acceptance metrics, SGLang's accept length)."""

    method: SpeculativeMethod
    num_speculative_tokens: int = Field(gt=0, le=64, description="k: draft tokens per step (SGLang --speculative-num-steps)")
    acceptance_rate: ExactNumber = Field(description="a: per-token acceptance probability, 0 <= a <= 1 (exact decimal)")
    draft_layers: int | None = Field(
        default=None, gt=0, le=64,
        description="decoder layers of the draft module; default: MTP the model's num_nextn_predict_layers (config.json; "
                    "1 for DeepSeek-V3), EAGLE/EAGLE-3 1; ignored for ngram and draft_model (draft_config gives its layers)")
    draft_model: str | None = Field(
        default=None, min_length=1,
        description="the draft's checkpoint (Hugging Face id or path) for eagle/eagle3/draft_model: launch commands only")
    draft_config: ModelSpec | None = Field(
        default=None,
        description="method draft_model: the draft model's architecture, written as `model` is (a catalog name, inline "
                    "config.json fields or config_json: PATH); its layers are costed and sized like the target's")

    @model_validator(mode="after")
    def _draft_config(self) -> Speculative:
        if self.method is SpeculativeMethod.DRAFT_MODEL and self.draft_config is None:
            raise ValueError("method draft_model needs draft_config: the draft model (a catalog name such as "
                             "Llama-3.1-8B, or its config.json fields)")
        if self.method is not SpeculativeMethod.DRAFT_MODEL and self.draft_config is not None:
            raise ValueError(f"draft_config is for method draft_model; method {self.method.value} drafts with "
                             + ("no network" if self.method is SpeculativeMethod.NGRAM else "a head of the target's own shape"))
        return self

    @field_validator("acceptance_rate")
    @classmethod
    def _rate(cls, value: Fraction) -> Fraction:
        if not 0 <= value <= 1:
            raise ValueError(f"must be a probability from 0 to 1, got {float(value)}")
        return value

    @property
    def expected_tokens_per_step(self) -> Fraction:
        """Tokens a verify step emits in expectation, ``sum_{i=0..k} a^i = (1 - a^(k+1)) / (1 - a)`` (exact)."""
        a, k = self.acceptance_rate, self.num_speculative_tokens
        return sum((a ** i for i in range(k + 1)), Fraction(0))


class Engine(_Frozen):
    """Engine profile. ``enable_expert_parallel`` mirrors vLLM's ``--enable-expert-parallel`` (off by
    default there; only vLLM reads it: SGLang and TensorRT-LLM take EP from the layout);
    ``max_num_batched_tokens`` the prefill chunk vLLM profiles activations with (SGLang's
    ``--chunked-prefill-size``, TensorRT-LLM's ``max_num_tokens``) and the token budget of a scheduler step
    under load; ``ttft_model`` and ``chunked_prefill`` say how TTFT is modelled (``engines.ttft_model``,
    ``engines.chunked_prefill``; None: the engine's default).

    Memory the runtime holds besides weights, KV cache and activations, per GPU, each counted inside
    ``gpu_memory_utilization`` (vLLM profiles weights, the activation peak and non-torch memory, then
    gives the rest of ``total x gpu_memory_utilization`` to the KV cache; counting CUDA graphs inside
    too is conservative for versions that capture them after sizing the cache):
    - ``reserve_bytes``: CUDA context and allocator slack;
    - ``cuda_graph_bytes``: captured decode graphs (0 with ``--enforce-eager``);
    - ``comm_buffer_bytes``: NCCL channel buffers and the custom all-reduce workspace.
    The defaults (1 GiB, 512 MiB, 512 MiB) are round figures, not measurements: set what your engine's
    start-up log reports.
    """

    name: EngineName = EngineName.MEGATRON
    enable_expert_parallel: bool = False
    max_num_batched_tokens: int = Field(default=8192, gt=0)
    ttft_model: TtftModel | None = Field(
        default=None, description="isolated | loaded; default: loaded for vLLM, SGLang and TensorRT-LLM (continuous batching), "
                                  "isolated for Megatron-Core (one static batch)")
    chunked_prefill: bool | None = Field(
        default=None, description="prompts longer than the step's token budget are split over steps (vLLM --enable-chunked-prefill, "
                                  "on by default in V1; SGLang --chunked-prefill-size > 0; TensorRT-LLM enable_chunked_prefill, off by "
                                  "default); default: the engine's")
    max_num_seqs: int = Field(default=256, gt=0, le=1 << 16,
                              description="most sequences a replica batches (vLLM --max-num-seqs, SGLang --max-running-requests)")
    reserve_bytes: int = Field(default=1 << 30, ge=0)
    cuda_graph_bytes: int = Field(default=1 << 29, ge=0)
    comm_buffer_bytes: int = Field(default=1 << 29, ge=0)
    moe_a2a_backend: MoeA2aBackend = Field(
        default=MoeA2aBackend.NONE,
        description="MoE token exchange: none (the engine's default collective) or deepep (SGLang --moe-a2a-backend deepep, "
                    "vLLM --all2all-backend deepep_high_throughput|deepep_low_latency); both engines default to none")
    deepep_mode: DeepepMode = Field(
        default=DeepepMode.AUTO,
        description="with deepep: normal, low_latency, or auto (SGLang --deepep-mode, default auto: normal for prefill, "
                    "low_latency for decode); vLLM's deepep_high_throughput is normal, deepep_low_latency low_latency")
    a2a_dispatch_dtype: A2aDtype | None = Field(
        default=None,
        description="dispatch payload: bf16 or fp8 (e4m3 + one fp32 scale per 128 values; deepep only); default as SGLang "
                    "does: fp8 with deepep when the experts run FP8 GEMMs, else bf16. The combine is always bf16")
    enable_two_batch_overlap: bool = Field(
        default=False,
        description="SGLang --enable-two-batch-overlap, vLLM --enable-dbo (both default off): two micro-batches, one's "
                    "MoE all-to-all under the other's compute")
    moe_dense_tp_size: Literal[1] | None = Field(
        default=None,
        description="SGLang --moe-dense-tp-size (server_args.py; None or 1): 1 runs a MoE model's dense-layer MLP data "
                    "parallel, each GPU on its own tokens, instead of over the whole --tp-size group (the large-scale EP "
                    "recipes, lmsys.org 2025-05-05); planned with attention TP 1 (rule moe_dense_tp_one)")
    enable_dp_lm_head: bool = Field(
        default=False,
        description="SGLang --enable-dp-lm-head (server_args.py): the LM head vocab-parallel over the attention TP group "
                    "(models/deepseek_v2.py use_attn_tp_group) instead of the whole --tp-size, so no logits gather "
                    "across the attention-DP ranks; its weights are then held per attention group")
    num_redundant_experts: int = Field(
        default=0, ge=0, le=1 << 16,
        description="extra expert replicas per MoE layer (SGLang --ep-num-redundant-experts, vLLM --num-redundant-experts "
                    "with EPLB; both default 0): each EP rank holds (num_experts + this) / EP experts")
    speculative: Speculative | None = Field(
        default=None,
        description="speculative decoding / MTP (vLLM --speculative-config, SGLang --speculative-algorithm, TensorRT-LLM "
                    "speculative_config); default none")
    kv_offload_bytes: int = Field(
        default=0, ge=0, le=1 << 50,
        description="host (CPU) memory per GPU that keeps KV-cache blocks evicted from HBM for later prefix hits: vLLM "
                    "--kv-offloading-size (GiB, summed over an engine's TP ranks), SGLang --enable-hierarchical-cache "
                    "--hicache-size (GB per rank), TensorRT-LLM kv_cache_config.host_cache_size (bytes per rank); 0: off. "
                    "A capacity the plan reports, not a cost or memory term (workload_features.host_kv_cache_tokens)")
    decode_attention_shares_kv: bool = Field(
        default=True,
        description="the decode-attention kernel reads each KV head once for the query heads that share it (GQA/MQA: "
                    "FlashAttention, FlashInfer, TensorRT-LLM XQA since v0.8); false: once per query head (TensorRT-LLM's "
                    "masked MHA before XQA), heads/kv_heads times the KV-cache reads")
    windowed_kv_cache: bool = Field(
        default=False,
        description="sliding-window layers keep only their window's KV cache, as vLLM's hybrid KV cache manager does "
                    "(docs.vllm.ai design/hybrid_kv_cache_manager; vLLM V1's default for gpt-oss and Gemma). Default off: "
                    "every layer keeps the whole sequence, as with --disable-hybrid-kv-cache-manager (conservative)")
    calibration_stack: str | None = Field(
        default=None, min_length=1,
        description="software stack whose measured step overheads the estimate uses (optimizer/inputs/catalog/calibration.yaml "
                    "`stacks`); default: the engine's entry in `engine_stacks`")
    calibration_file: str | None = Field(
        default=None, min_length=1,
        description="a serving calibration written by `optimize calibrate --out` (path, relative to the scenario file): "
                    "its step parameters for this GPU and engine, refitted to the engine's own benchmarks, replace the "
                    "stack's; plans name its id. Default: none (the shipped calibration)")

    @model_validator(mode="after")
    def _deepep_only(self) -> Engine:
        if self.a2a_dispatch_dtype is A2aDtype.FP8 and self.moe_a2a_backend is not MoeA2aBackend.DEEPEP:
            raise ValueError("a2a_dispatch_dtype: fp8 needs moe_a2a_backend: deepep (the engines' default all-to-all "
                             "sends the activations in BF16)")
        if self.calibration_file is not None and self.calibration_stack is not None:
            raise ValueError("give calibration_file or calibration_stack, not both (the file's stack is the one used)")
        if (self.moe_dense_tp_size is not None or self.enable_dp_lm_head) and self.name is not EngineName.SGLANG:
            raise ValueError("moe_dense_tp_size and enable_dp_lm_head are SGLang switches (--moe-dense-tp-size, "
                             f"--enable-dp-lm-head); engine {self.name.value} has no such setting")
        return self

    @property
    def runtime_bytes(self) -> int:
        """Everything the runtime holds per GPU outside weights, KV cache and activations."""
        return self.reserve_bytes + self.cuda_graph_bytes + self.comm_buffer_bytes


class Objective(StrEnum):
    REQUEST_LATENCY = "request_latency"  # TTFT + (OSL - 1) x TPOT
    TTFT = "ttft"
    TPOT = "tpot"
    THROUGHPUT = "output_tokens_per_s"  # maximised, for the workload's concurrent_sequences
    THROUGHPUT_PER_GPU = "output_tokens_per_s_per_gpu"  # maximised; the batch per replica is chosen
    FEWEST_GPUS = "fewest_gpus"  # fewest GPUs carrying targets.request_rate_per_s within the targets (optimize capacity)

    @property
    def chooses_batch(self) -> bool:
        """True when the batch per replica is a decision (up to ``engine.max_num_seqs`` and the KV cache;
        ``workload.concurrent_sequences`` is then not used: the deployment holds as many sequences as
        the chosen batch allows); otherwise it is ``ceil(concurrent_sequences / DP)``."""
        return self in (Objective.THROUGHPUT_PER_GPU, Objective.FEWEST_GPUS)


class Search(_Frozen):
    """What to minimise and the knobs of the search. ``gpu_memory_utilization`` is the engine's memory
    fraction with the engine's meaning (``optimizer/model/engines.py``): vLLM's ``--gpu-memory-utilization`` (also
    applied to Megatron-Core), SGLang's ``--mem-fraction-static``, TensorRT-LLM's
    ``free_gpu_memory_fraction``."""

    objective: Objective = Objective.REQUEST_LATENCY
    gpu_memory_utilization: ExactNumber = Fraction(9, 10)
    allow_uneven_layers: bool = True

    @model_validator(mode="after")
    def _fraction(self) -> Search:
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization must be in (0, 1], got {float(self.gpu_memory_utilization)}")
        return self


# Whether TP may span nodes when the scenario does not say (``cluster.allow_tp_across_nodes``), per engine:
# - vLLM: "setting tensor_parallel_size to the total number of GPUs across all machines" (docs.vllm.ai,
#   serving/distributed_serving; the launcher runs it on a Ray cluster);
# - SGLang: the documented two-node recipes run ``--tp 16 --nnodes 2`` (docs.sglang.io,
#   references/multi_node_deployment: Llama-3.1-405B; basic_usage/deepseek: DeepSeek-V3 on two nodes);
# - TensorRT-LLM: ``tp_size`` over every rank of an MPI launch (trtllm-llmapi-launch / mpirun), any node;
# - Megatron-Core: kept inside a node, its documented practice (TP is bandwidth-bound; TP across nodes
#   is possible but we do not search it unless asked).
TP_ACROSS_NODES_BY_ENGINE = {"vllm": True, "sglang": True, "tensorrt-llm": True, "megatron": False}


class Scenario(BaseModel):
    """A whole planning problem: cluster + model + workload + targets + engine + search.

    ``cluster.allow_tp_across_nodes`` left unset takes its engine's default (``TP_ACROSS_NODES_BY_ENGINE``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", ignored_types=(cached_property,))
    name: str = Field(min_length=1)
    description: str = ""
    cluster: Cluster
    model: ModelSpec
    workload: Workload
    targets: Targets = Targets()
    engine: Engine = Engine()
    search: Search = Search()

    @model_validator(mode="after")
    def _mtp_layers(self) -> Scenario:
        spec = self.engine.speculative
        if (spec is not None and spec.method is SpeculativeMethod.MTP and spec.draft_layers is None
                and not self.model.num_nextn_predict_layers):
            raise ValueError(f"engine.speculative.method mtp drafts with the model's own MTP layers, and model "
                             f"{self.model.name} has none (model.num_nextn_predict_layers = 0): set it from the checkpoint's "
                             "config.json, or engine.speculative.draft_layers, or use eagle3 / draft_model")
        return self

    @model_validator(mode="before")
    @classmethod
    def _engine_defaults(cls, data: Any) -> Any:
        """Fill ``cluster.allow_tp_across_nodes`` from the engine when the scenario leaves it unset."""
        if not isinstance(data, dict) or not isinstance(data.get("cluster"), (dict, Cluster)):
            return data
        cluster = data["cluster"]
        given = cluster.get("allow_tp_across_nodes") if isinstance(cluster, dict) else cluster.allow_tp_across_nodes
        if given is not None:
            return data
        engine = data.get("engine")
        name = engine.get("name", "megatron") if isinstance(engine, dict) else getattr(engine, "name", "megatron")
        default = TP_ACROSS_NODES_BY_ENGINE.get(str(getattr(name, "value", name)))
        if default is None:
            return data  # an unknown engine: its own validation error says so
        if isinstance(cluster, Cluster):  # built in code (a fleet's instance scenarios)
            return {**data, "cluster": cluster.model_copy(update={"allow_tp_across_nodes": default})}
        return {**data, "cluster": {**cluster, "allow_tp_across_nodes": default}}
