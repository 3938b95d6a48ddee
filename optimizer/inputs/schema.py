"""JSON Schemas for the files people write and read: scenario files (input) and plan documents (output).

``optimize schema scenario`` and ``optimize schema plan`` print them, so editors (VS Code's YAML and JSON
support, for one) validate files as they are typed. Both come from pydantic models: the scenario schema
from ``Scenario`` with the loader's shorthands added (a catalog GPU or model name, ``config_json``, links
and node size from the catalog); the plan schema from the models below, which mirror
``report.plan_document`` and ``report.infeasible_document`` field for field. Tests validate every
document the CLI writes against them (``extra="forbid"``), so the schema cannot drift from the output.

The plan schema is versioned by ``SCHEMA_VERSION``: a document's ``schema_version`` must equal it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from optimizer.inputs import catalog
from optimizer.inputs.scenario import Scenario

# 3.5 (issues 13 and 16): estimate.workload_features (speculative decoding, prefix caching, KV offload), the
# speculative_draft operator of an estimate's decode breakdown, KV capacity counted per sequence with windowed
# layers, and the scenario's new engine/model/cluster fields (speculative, kv_offload_bytes, windowed_kv_cache,
# decode_attention_shares_kv, calibration_file, moe_dense_tp_size, enable_dp_lm_head, num_nextn_predict_layers,
# sliding_window_pattern, Llama 4's fields, gpus_per_host). Readers of 3.4 documents see only additions.
SCHEMA_VERSION = "3.5"
_STRICT = ConfigDict(extra="forbid")


class PlanSizes(BaseModel):
    model_config = _STRICT
    tp: int = Field(ge=1, description="tensor-parallel size")
    pp: int = Field(ge=1, description="pipeline-parallel size")
    dp: int = Field(ge=1, description="data-parallel size (attention/dense replicas)")
    ep: int = Field(ge=1, description="expert-parallel size")
    etp: int = Field(ge=1, description="expert tensor-parallel size")
    edp: int = Field(ge=1, description="expert data-parallel size")
    instances: int = Field(ge=1, description="engine instances to launch")
    dp_per_instance: int | None = Field(description="DP replicas inside one instance, or null if uneven")
    batch_per_replica: int = Field(ge=1, description="sequences per DP replica")
    layers_per_stage: list[int] = Field(description="decoder layers of each pipeline stage, first to last")
    engine: str
    notes: list[str]


class RankEntry(BaseModel):
    model_config = _STRICT
    rank: int
    node: int
    local_gpu: int
    tp_rank: int
    dp_rank: int
    pp_rank: int
    etp_rank: int
    ep_rank: int
    edp_rank: int


class RankMap(BaseModel):
    model_config = _STRICT
    order: str = Field(description="how global ranks are laid out, e.g. tp-dp-pp")
    ranks: list[RankEntry]
    groups: dict[str, list[list[int]]] = Field(description="process groups by kind (tp, dp, pp, ep, etp): global ranks")


class StageBytes(BaseModel):
    model_config = _STRICT
    stage: int
    weights_bytes: int
    kv_cache_bytes: int
    activation_bytes: int
    reserve_bytes: int = Field(description="CUDA context and allocator slack")
    cuda_graph_bytes: int
    comm_buffer_bytes: int = Field(description="NCCL buffers and the custom all-reduce workspace")
    total_bytes: int


class StageMemoryEntry(StageBytes):
    dense_layers: int
    moe_layers: int
    kv_cache_capacity_tokens: int | None = Field(
        description="tokens of KV cache this stage's GPUs could hold under the cap once all else is placed")


class MemoryLimitEntry(BaseModel):
    model_config = _STRICT
    label: str = Field(description="memory (the engine's main limit) or runtime (SGLang: what stays outside --mem-fraction-static)")
    formula: str
    cap: int = Field(description="the limit's right-hand side (bytes, or bytes x p for TensorRT-LLM's fraction p/q)")


class MemorySection(BaseModel):
    model_config = _STRICT
    cap_bytes: int = Field(description="what a GPU's whole footprint fits in: floor(memory_bytes x gpu_memory_utilization) "
                                       "(vLLM, Megatron), memory_bytes (SGLang, TensorRT-LLM, whose fraction splits memory)")
    limits: list[MemoryLimitEntry] = Field(description="the engine's memory limits, each checked per stage in the certificate")
    kv_cache_capacity_tokens: int | None = Field(
        description="tokens one replica can keep in KV cache: the smallest over its stages (every stage holds "
                    "each token's KV for its own layers), counted in sequences of ISL + OSL tokens (with "
                    "engine.windowed_kv_cache a sliding layer keeps only its window of each)")
    max_sequences_per_replica: int | None = Field(
        description="kv_cache_capacity_tokens // (ISL + OSL): sequences at full length one replica can hold")
    per_gpu_peak: StageBytes
    stages: list[StageMemoryEntry]


class CalibrationRef(BaseModel):
    model_config = _STRICT
    id: str = Field(description="optimizer/inputs/catalog/calibration.yaml id (a digest of its data and parameters)")
    gpu_entry: str = Field(description="the calibration entry the GPU used: its own, a same-die alias, or default")
    measured: bool = Field(description="false: no measurements for this GPU (the default entry)")
    text: str


class WorkloadFeaturesSection(BaseModel):
    """Present only when speculative decoding, prefix caching or KV offload is on (optimizer/model/workload_features.py)."""

    model_config = _STRICT
    speculative_method: str | None = Field(description="mtp | eagle | eagle3 | ngram, or null: no speculation")
    num_speculative_tokens: int | None = Field(description="k: draft tokens per step")
    acceptance_rate: float | None = Field(description="a: per-token acceptance probability the plan is costed at")
    expected_tokens_per_step: float | None = Field(description="(1 - a^(k+1)) / (1 - a): tokens a step emits per sequence")
    verify_tokens_per_sequence: int | None = Field(description="1 + k: tokens per sequence the target's pass verifies")
    speculative_step_ns: int | None = Field(description="one whole verify + draft step of a micro-batch, every stage and hop")
    draft_ns: int | None = Field(description="the draft module's k passes in that step (last stage)")
    draft_weight_bytes: int | None = Field(description="the draft module's weights on one GPU of the last stage")
    draft_kv_cache_bytes: int | None = Field(description="the draft layers' KV cache on one GPU of the last stage")
    prefix_cache_hit_rate: float = Field(description="fraction of prompt tokens served from the prefix cache")
    cached_prompt_tokens: int = Field(description="floor(hit rate x ISL): not prefilled")
    uncached_prompt_tokens: int = Field(description="ISL - cached: prefilled, attending over the whole prompt")
    kv_offload_bytes: int = Field(description="host memory per GPU for evicted KV blocks (engine.kv_offload_bytes)")
    host_kv_cache_tokens: int = Field(description="prefix-cache tokens the host tier holds per replica (a capacity only)")
    hbm_free_kv_cache_tokens: int | None = Field(
        description="KV-cache tokens of HBM per replica the running batch leaves free for cached prefixes")
    text: str


class EstimateSection(BaseModel):
    model_config = _STRICT
    ttft_s: float
    tpot_s: float
    request_latency_s: float
    output_tokens_per_s: float
    output_tokens_per_s_per_gpu: float
    ttft_ns: int
    tpot_ns: int
    request_latency_ns: int
    prefill_stage_ns: list[int]
    decode_stage_ns: list[int]
    prefill_share_per_decode_step_ns: int
    decode_microbatches: int
    ttft_model: str = Field(description="isolated | loaded: how TTFT was modelled (cost.integer_costs)")
    ttft_model_text: str
    ttft_chunks: int = Field(description="scheduler steps the prompt is prefilled in")
    ttft_chunk_tokens: int = Field(description="prompt tokens per step (the last may hold fewer)")
    ttft_steps_carry_decode: bool = Field(description="each of those steps also runs the batch's decode step")
    ttft_steps_carry_prefill_share: bool = Field(description="each of those steps also runs the other prompts' prefill share")
    ttft_isolated_ns: int = Field(description="one prompt's prefill alone through every stage and hop")
    ttft_overloaded: bool = Field(description="prompts arrive faster than a step admits them: no steady state, TTFT a lower bound")
    prefill_step_s: float = Field(description="one prompt through every stage and hop (the isolated TTFT)")
    decode_step_s: float = Field(description="one decode step of one micro-batch through every stage and hop")
    breakdown_per_layer_s: dict[str, dict[str, float]] = Field(description="phase -> operator -> seconds per layer")
    speed_of_light_per_layer_s: dict[str, dict[str, float]] = Field(
        description="phase -> operator -> seconds per layer at datasheet peak, no launch or latency terms")
    stage_extras_s: dict[str, dict[str, float]] = Field(description="first/last stage and PP hop operators, seconds")
    calibration: CalibrationRef
    workload_features: WorkloadFeaturesSection | None = Field(
        default=None, description="speculative decoding and prefix caching terms; absent when both are off")




class CheckEntry(BaseModel):
    model_config = _STRICT
    name: str
    formula: str
    lhs: int
    op: Literal["==", "<=", ">="]
    rhs: int
    holds: bool
    detail: str


class FailingRule(BaseModel):
    model_config = _STRICT
    number: int = Field(ge=1, description="1, 2, ... in certificate order")
    name: str
    formula: str
    lhs: int
    op: Literal["==", "<=", ">="]
    rhs: int
    detail: str
    structural: bool = Field(description="true: the engine cannot start the plan as written (sizes, layer split, memory); "
                                         "false: a target or balance the plan runs but misses")


class CertificateSection(BaseModel):
    model_config = _STRICT
    holds: bool
    runnable: bool = Field(description="false when a structural rule fails: the estimate is for a plan that cannot run")
    failing_rules: list[FailingRule] = Field(description="the checks that fail, numbered, with their integers")
    checks: list[CheckEntry]


class OptimalityCertificate(BaseModel):
    model_config = _STRICT
    format: Literal["optimality-certificate/1"]
    candidates: int = Field(ge=1, description="the scenario's candidates (layout x batch), grid order")
    optimum: int = Field(description="primary_ns x candidates + rank of the plan")
    chosen: int = Field(ge=0, description="the plan's candidate index")
    codes: list[str] = Field(description="legend: a rule name, `bound` or `optimum`")
    runs: list[list[int]] = Field(description="[code index, count] runs in candidate order, covering every candidate")
    witness_slowest_stage_ns: dict[str, int] = Field(
        description="candidate index -> a lower bound of its slowest decode stage, checked: no split fits under it")
    excluded: list[dict[str, int]] = Field(default_factory=list,
                                           description="layouts the question set aside (code `excluded`): then the plan is "
                                                       "best among the rest only, and `verify` refuses it as a proof of optimality")
    scope: list[str] = Field(default_factory=list, description="the search space the claim is about, beyond the rules "
                                                               "(dense layers in the first stage; the batch ladder)")


class EvidenceSection(BaseModel):
    model_config = _STRICT
    status: str = Field(description="OPTIMAL | FEASIBLE (stopped at a limit)")
    objective: int = Field(description="primary_ns x candidates + tie_break_rank of the plan")
    best_bound: int = Field(description="the solver's proved lower bound, same units")
    gap: int = Field(ge=0)
    gap_ns: int = Field(ge=0, description="how far (ns of the primary objective) the optimum may lie below")
    proved_optimal: bool
    double_check: str | None = Field(description="INFEASIBLE when the re-solve for a better plan found none")
    solver: str
    parameters: dict[str, Any]
    model_size: dict[str, int]
    candidates: int
    objective_encoding: str
    objective_kind: str
    certificate_check: str | None = Field(default=None, description="what re-checking the optimality certificate without CP-SAT found")
    solver_fault: str | None = Field(default=None, description="set when the check refuted CP-SAT; the enumeration's plan is kept")
    optimality_certificate: OptimalityCertificate | None = Field(
        default=None, description="for every candidate a rejecting rule or a lower bound above the optimum (certify.py); "
                                  "`optimize verify PLAN.json` re-checks it")


class ChangeEntry(BaseModel):
    model_config = _STRICT
    field: str = Field(description="dotted scenario field")
    current: Any
    proposed: Any
    text: str


class InfeasibleSection(BaseModel):
    model_config = _STRICT
    conflicts: list[list[str]] | None = Field(description="minimal conflicting rule sets, pairwise disjoint")
    reasons: list[str]
    changes: list[ChangeEntry] | None = Field(description="confirmed single changes that admit a plan")
    notes: list[str] | None


class Alternative(BaseModel):
    model_config = _STRICT
    rank: int = Field(description="1 = the plan itself")
    tp: int
    pp: int
    dp: int
    ep: int
    etp: int
    edp: int
    batch_per_replica: int
    layers_per_stage: list[int]
    objective: int = Field(description="primary x candidates + tie_break_rank, as the evidence")
    instances: int = Field(ge=1, description="engine instances to launch (as plan.instances)")
    gap: int = Field(description="primary objective minus the plan's (ns, or GPU-ns per request)")
    gap_percent: float
    ttft_s: float
    tpot_s: float
    request_latency_s: float
    output_tokens_per_s_per_gpu: float


class PlanDocument(BaseModel):
    """A plan (``plan`` set, ``infeasible`` absent) or a proved infeasibility (``plan`` null)."""

    model_config = ConfigDict(extra="forbid", title=f"optimizer plan document, schema {SCHEMA_VERSION}")
    schema_version: Literal["3.5"]
    scenario: dict[str, Any] = Field(description="the validated scenario, every field explicit")
    plan: PlanSizes | None
    rank_map: RankMap | None = None
    memory: MemorySection | None = None
    estimate: EstimateSection | None = None
    certificate: CertificateSection | None = None
    evidence: EvidenceSection | None = Field(default=None, description="null for `optimize verify`")
    infeasible: InfeasibleSection | None = None
    alternatives: list[Alternative] | None = Field(default=None, description="`--top K`: the K best plans on distinct layouts")


def plan_schema() -> dict[str, Any]:
    """The JSON Schema of a plan document (``optimize --json``, ``verify --json``, sweep plans)."""
    schema = PlanDocument.model_json_schema()
    schema["$id"] = f"https://optimizer.invalid/schema/plan-{SCHEMA_VERSION}.json"
    schema["properties"]["scenario"] = {"$ref": "#/$defs/Scenario", "description": "the validated scenario"}
    scenario = Scenario.model_json_schema(mode="serialization", ref_template="#/$defs/{model}")
    schema.setdefault("$defs", {}).update(scenario.pop("$defs", {}))
    schema["$defs"]["Scenario"] = scenario
    return schema


def scenario_schema() -> dict[str, Any]:
    """The JSON Schema of a scenario file: ``Scenario`` plus the loader's shorthands (catalog names for
    ``cluster.gpu`` and ``model``, ``model: {config_json: PATH}``, node shape and links from the catalog)."""
    schema = Scenario.model_json_schema(mode="validation")
    defs = schema["$defs"]
    cluster = defs["Cluster"]
    cluster["properties"]["gpu"] = {"anyOf": [{"type": "string", "enum": catalog.gpu_names(), "description": "a catalog GPU"},
                                              {"$ref": "#/$defs/GpuSpec"}]}
    cluster["required"] = [k for k in cluster.get("required", []) if k not in catalog.CLUSTER_DEFAULT_KEYS]
    config_json = {"type": "object", "required": ["config_json"], "additionalProperties": True,
                   "properties": {"config_json": {"type": "string", "description": "path to a Hugging Face config.json"}}}
    named = {"type": "object", "required": ["name"], "additionalProperties": True,
             "properties": {"name": {"type": "string", "enum": catalog.model_names()}},
             "description": "a catalog model with fields overridden"}
    schema["properties"]["model"] = {"anyOf": [{"type": "string", "enum": catalog.model_names(), "description": "a catalog model"},
                                               named, config_json, {"$ref": "#/$defs/ModelSpec"}]}
    # engine.speculative.draft_config takes what `model` takes (loader._resolve_draft_model)
    defs["Speculative"]["properties"]["draft_config"] = {"anyOf": [*schema["properties"]["model"]["anyOf"], {"type": "null"}],
                                                         "default": None}
    schema["required"] = [k for k in schema.get("required", []) if k != "name"]  # defaults to the file name
    schema["title"] = "optimizer scenario file"
    return schema
