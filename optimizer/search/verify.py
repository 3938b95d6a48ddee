"""Plan + Scenario -> Certificate: every rule re-checked on the concrete plan in exact integers, with
no solver involved (this module never imports ortools). Also reads hand-written plan files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimizer.model.cost import Estimate, estimate
from optimizer.model.engines import instances
from optimizer.errors import PlanError
from optimizer.inputs.loader import read_mapping
from optimizer.model.memory import StageMemory, layer_kinds, stage_memory
from optimizer.model.parallel import Layout, Plan, batch_per_replica, even_split
from optimizer.search.result import Tables, build_tables
from optimizer.search.rules import Check, PlanContext, build_rules, make_check
from optimizer.inputs.scenario import EngineName, Scenario


@dataclass(frozen=True)
class Certificate:
    """Every rule's check on one plan, the memory per stage and the estimate they were judged on."""

    checks: tuple[Check, ...]
    memory: tuple[StageMemory, ...]
    estimate: Estimate
    structural: frozenset[str] = frozenset()  # names of the checks of structural rules (``Rule.structural``)

    @property
    def holds(self) -> bool:
        return all(check.holds for check in self.checks)

    @property
    def failing(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if not check.holds)

    @property
    def runnable(self) -> bool:
        """False when a structural rule fails: the engine cannot start the plan as written (its estimate is
        then for a plan that cannot run); a failed target or balance rule leaves it runnable."""
        return not any(check.name in self.structural for check in self.failing)


def plan_context(scenario: Scenario, plan: Plan, tables: Tables | None = None) -> PlanContext:
    """Cost and memory of ``plan`` from the grid's tables when its layout and batch are in the grid (so
    the numbers are the very integers the solver used), else from tables built for this one candidate."""
    c = None if tables is None else tables.index(plan.layout, plan.batch_per_replica)
    if c is None:
        full = build_tables(scenario)
        c = full.index(plan.layout, plan.batch_per_replica)
        tables = full
        if c is None:
            tables = build_tables(scenario, (plan.layout,), (plan.batch_per_replica,))
            c = 0
    w = scenario.workload
    kinds = layer_kinds(model=scenario.model, layers_per_stage=plan.layers_per_stage)
    return PlanContext(
        scenario=scenario,
        plan=plan,
        table=tables.cost,
        index=c,
        memory=stage_memory(scenario=scenario, layout=plan.layout, layers_per_stage=plan.layers_per_stage, batch=plan.batch_per_replica),
        estimate=estimate(table=tables.cost, i=c, kinds=kinds, concurrent_sequences=served_sequences(scenario, plan),
                          output_tokens=w.output_tokens),
    )


def served_sequences(scenario: Scenario, plan: Plan) -> int:
    """Sequences in flight across the deployment: the workload's ``concurrent_sequences``, or, when the
    objective chooses the batch, ``DP x batch per replica``."""
    if scenario.search.objective.chooses_batch:
        return plan.layout.dp * plan.batch_per_replica
    return scenario.workload.concurrent_sequences


def certify(scenario: Scenario, plan: Plan, tables: Tables | None = None) -> Certificate:
    """Check every rule of ``scenario`` on ``plan``. Never raises for a broken plan: the certificate says."""
    ctx = plan_context(scenario, plan, tables)
    per_rule = [(rule, rule.check(ctx)) for rule in build_rules(scenario)]
    checks = tuple(check for _, rule_checks in per_rule for check in rule_checks)
    structural = frozenset(check.name for rule, rule_checks in per_rule if rule.structural for check in rule_checks)
    if scenario.search.objective.chooses_batch:
        limit = scenario.engine.max_num_seqs
        checks += (
            make_check("batch_per_replica", "batch_per_replica <= engine.max_num_seqs", plan.batch_per_replica, "<=", limit,
                       f"{plan.batch_per_replica} sequences per replica, the engine batches at most {limit} (the KV cache "
                       "bound is memory_cap's)"),
        )
        return Certificate(checks=checks, memory=tuple(ctx.memory), estimate=ctx.estimate, structural=structural)
    batch = batch_per_replica(concurrent_sequences=scenario.workload.concurrent_sequences, dp=plan.layout.dp)
    checks += (
        make_check("batch_per_replica", "batch_per_replica == ceil(concurrent_sequences / dp)", plan.batch_per_replica, "==", batch,
                   f"{scenario.workload.concurrent_sequences} sequences over DP = {plan.layout.dp} replicas put {batch} on the busiest"),
    )
    return Certificate(checks=checks, memory=tuple(ctx.memory), estimate=ctx.estimate, structural=structural)


# --- hand-written plans --------------------------------------------------------------------------------

# The names people write sizes with, normalised (lower case, leading dashes dropped, "-" read as "_"):
# vLLM ``--tensor-parallel-size/-tp``, ``--pipeline-parallel-size/-pp``, ``--data-parallel-size/-dp``
# (docs.vllm.ai, engine arguments); SGLang ``--tp-size``, ``--dp-size``, ``--ep-size``, ``--pp-size``
# (docs.sglang.io, server arguments); Megatron-Core ``--tensor-model-parallel-size``,
# ``--pipeline-model-parallel-size``, ``--expert-model-parallel-size``, ``--expert-tensor-parallel-size``;
# TensorRT-LLM ``tp_size``, ``pp_size``, ``moe_ep_size``, ``moe_tp_size``.
ALIASES = {
    "tp": ("tp", "tp_size", "tensor_parallel_size", "tensor_model_parallel_size", "tensor_parallel"),
    "pp": ("pp", "pp_size", "pipeline_parallel_size", "pipeline_model_parallel_size", "pipeline_parallel"),
    "dp": ("dp", "dp_size", "data_parallel_size", "data_parallel"),
    "ep": ("ep", "ep_size", "expert_parallel_size", "expert_model_parallel_size", "moe_ep_size", "expert_parallel"),
    "etp": ("etp", "etp_size", "expert_tensor_parallel_size", "moe_tp_size"),
    "edp": ("edp", "expert_data_parallel_size"),
    "batch_per_replica": ("batch_per_replica", "batch", "max_num_seqs"),
    "layers_per_stage": ("layers_per_stage", "layer_split", "pipeline_layers"),
}
# Engine switches that change what the sizes mean: SGLang's attention DP (``--attn-dp-size`` from 0.5.22,
# ``--enable-dp-attention`` with ``--dp-size`` before), TensorRT-LLM's ``enable_attention_dp``.
SWITCHES = {
    "attn_dp_size": ("attn_dp_size", "attention_data_parallel_size"),
    "enable_dp_attention": ("enable_dp_attention",),
    "enable_attention_dp": ("enable_attention_dp",),
    "enable_expert_parallel": ("enable_expert_parallel",),  # vLLM --enable-expert-parallel: EP = TP x DP, ETP = 1
    "nnodes": ("nnodes",),  # SGLang --nnodes (and torchrun's): the nodes one engine instance spans, checked
}
_KEY_OF = {alias: key for key, aliases in (ALIASES | SWITCHES).items() for alias in aliases}
_INFORMATIVE = {"instances", "dp_per_instance", "engine", "notes"}  # fields of a plan JSON, not sizes


def normalise_key(name: object) -> str:
    """``--Tensor-Parallel-Size`` -> ``tensor_parallel_size``: how every alias is matched."""
    return str(name).strip().lstrip("-").lower().replace("-", "_")


def scenario_for_plan(path: Path | None, scenario: Scenario, sizes: dict[str, Any] | None = None) -> Scenario:
    """``scenario`` with the engine switches a hand-written plan states applied: vLLM's
    ``enable_expert_parallel`` (a file's key, or ``--enable-expert-parallel``) is how the deployment runs,
    so the rules and the estimate follow it rather than the scenario's ``engine.enable_expert_parallel``.

    Raises:
        PlanError: the switch given for another engine, or not true/false.
    """
    values = dict(sizes or {})
    if path is not None:
        data = read_mapping(path, error=PlanError)
        data = data["plan"] if isinstance(data.get("plan"), dict) else data
        values.update({"enable_expert_parallel": v for k, v in data.items() if _KEY_OF.get(normalise_key(k)) == "enable_expert_parallel"})
    if values.get("enable_expert_parallel") is None:
        return scenario
    source = "<options>" if path is None else str(path)
    wanted = _flag(values["enable_expert_parallel"], source, "enable_expert_parallel")
    if scenario.engine.name is not EngineName.VLLM:
        raise PlanError(f"vLLM's --enable-expert-parallel, but the scenario's engine is {scenario.engine.name.value}",
                        source=source, field="enable_expert_parallel")
    if wanted == scenario.engine.enable_expert_parallel:
        return scenario
    return scenario.model_copy(update={"engine": scenario.engine.model_copy(update={"enable_expert_parallel": wanted})})


def read_plan(path: Path | None, scenario: Scenario, sizes: dict[str, Any] | None = None) -> Plan:
    """Read a plan JSON written by ``optimize --json`` (its ``plan`` object) or a hand-written YAML/JSON
    mapping with the sizes under any name in ``ALIASES`` (``tp``, ``tensor_parallel_size``,
    ``--tensor-parallel-size``, ...). ``sizes`` (from command-line options) join the file's; ``path`` may
    be None when they say it all. Missing sizes are derived as ``plan_from_mapping`` says.

    Raises:
        PlanError: unreadable file, unknown fields, a size given twice (file and option, or two names),
            non-integer sizes, sizes < 1.
    """
    data: dict[str, Any] = {}
    source = "<options>" if path is None else str(path)
    if path is not None:
        data = read_mapping(path, error=PlanError)
        if isinstance(data.get("plan"), dict):
            data = data["plan"]
    for key, value in (sizes or {}).items():
        clash = [name for name in data if _KEY_OF.get(normalise_key(name)) == key]
        if clash:
            raise PlanError(f"given both in the file (as {clash[0]}) and as the option --{key.replace('_', '-')}",
                            source=source, field=clash[0])
        data = {**data, key: value}
    return plan_from_mapping(data, scenario, source=source)


def plan_from_mapping(data: dict[str, Any], scenario: Scenario, *, source: str = "<inline>") -> Plan:
    """A Plan from sizes as people write them. Missing sizes are derived the way the scenario's engine
    would: ``dp = N / (tp x pp)`` (SGLang's and TensorRT-LLM's attention-DP switches as ``_engine_sizes``
    reads them); for a dense model ``ep = 1, etp = tp, edp = dp``; for MoE under vLLM
    with expert parallel ``ep = tp x dp, etp = 1`` (one engine instance), under vLLM without it
    ``ep = 1, etp = tp x dp``, under SGLang and TensorRT-LLM ``ep = 1`` and ``etp = tp_size / ep`` (their
    ``--ep-size`` / ``moe_tp_size`` defaults), under Megatron-Core ``etp = tp`` (its
    ``--expert-tensor-parallel-size`` default) and ``ep = 1``; then ``edp = tp x dp / (ep x etp)``; the batch from the workload; the layers
    split evenly (extra layers on later stages). Sizes that do not multiply out are kept as written, so
    the certificate names the rule they break.

    Raises:
        PlanError: unknown or repeated fields, non-integer sizes, sizes < 1 or absurdly large.
    """
    values: dict[str, Any] = {}
    for name, value in data.items():
        key = _KEY_OF.get(normalise_key(name))
        if key is None:
            if name in _INFORMATIVE:
                continue
            raise PlanError(f"unknown field; expected sizes named like {', '.join(ALIASES)} "
                            "(or vLLM / SGLang / Megatron names such as tensor_parallel_size)", source=source, field=str(name))
        if key in values:
            raise PlanError(f"given twice (also as {key})", source=source, field=str(name))
        values[key] = value
    if "enable_expert_parallel" in values and values["enable_expert_parallel"] is not None and (
            scenario.engine.name is not EngineName.VLLM
            or _flag(values["enable_expert_parallel"], source, "enable_expert_parallel") != scenario.engine.enable_expert_parallel):
        raise PlanError("states vLLM's enable_expert_parallel unlike the scenario's engine; read it with scenario_for_plan "
                        "first", source=source, field="enable_expert_parallel")
    sizes = {k: _positive_int(values[k], source, k) for k in ("tp", "pp", "dp", "ep", "etp", "edp", "batch_per_replica",
                                                             "attn_dp_size") if k in values}
    n = scenario.cluster.num_gpus
    tp, pp = sizes.get("tp", 1), sizes.get("pp", 1)
    tp, dp, group = _engine_sizes(scenario, values, sizes, source, n=n, tp=tp, pp=pp)
    if not scenario.model.is_moe:
        ep, etp = sizes.get("ep", 1), sizes.get("etp", tp)
        edp = sizes.get("edp", dp)
    else:
        if scenario.engine.name is EngineName.VLLM and scenario.engine.enable_expert_parallel:
            ep_default, etp_default = tp * dp, 1
        elif scenario.engine.name is EngineName.VLLM:
            ep_default, etp_default = 1, tp * dp
        elif scenario.engine.name in (EngineName.SGLANG, EngineName.TENSORRT_LLM):  # ep_size 1, moe_tp = tp_size / ep
            ep_default = 1
            etp_default = max(1, group // sizes.get("ep", 1))
        else:
            ep_default, etp_default = 1, tp
        ep, etp = sizes.get("ep", ep_default), sizes.get("etp", etp_default)
        edp = sizes.get("edp", max(1, tp * dp // (ep * etp)))
    layout = Layout(tp=tp, pp=pp, dp=dp, ep=ep, etp=etp, edp=edp)
    if "nnodes" in values:
        _check_nnodes(scenario, layout, _positive_int(values["nnodes"], source, "nnodes"), source)
    layers = values.get("layers_per_stage")
    if layers is None:
        split = even_split(num_layers=scenario.model.num_hidden_layers, pp=pp)
    elif isinstance(layers, list) and layers and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 1 << 24
                                                      for v in layers):
        split = tuple(layers)
    else:
        raise PlanError(f"expected a list of layer counts (0 to {1 << 24}), one per stage, got {str(layers)[:200]}",
                        source=source, field="layers_per_stage")
    batch = sizes.get("batch_per_replica", batch_per_replica(concurrent_sequences=scenario.workload.concurrent_sequences, dp=dp))
    return Plan(layout=layout, layers_per_stage=split, batch_per_replica=batch)


def _check_nnodes(scenario: Scenario, layout: Layout, nnodes: int, source: str) -> None:
    """``--nnodes`` as SGLang means it: the nodes one engine instance spans, ``GPUs per instance /
    gpus_per_node`` (at least 1). A different count is a plan that does not describe this cluster.

    Raises:
        PlanError: ``nnodes`` is not the count the plan's instances span.
    """
    cluster = scenario.cluster
    n_inst = instances(scenario, layout)
    per_instance = cluster.num_gpus // n_inst if n_inst and cluster.num_gpus % n_inst == 0 else cluster.num_gpus
    spans = max(1, -(-per_instance // cluster.gpus_per_node))
    if nnodes != spans:
        raise PlanError(f"--nnodes {nnodes}, but each of the plan's {n_inst} instance(s) has {per_instance} GPUs = {spans} "
                        f"node(s) of {cluster.gpus_per_node}", source=source, field="nnodes")


def _flag(value: Any, source: str, field: str) -> bool:
    if not isinstance(value, bool):
        raise PlanError(f"expected true or false, got {value!r}", source=source, field=field)
    return value


def _engine_sizes(scenario: Scenario, values: dict[str, Any], sizes: dict[str, int], source: str, *, n: int, tp: int,
                  pp: int) -> tuple[int, int, int]:
    """Planner TP and DP from the sizes as the scenario's engine spells them, and the GPUs of one instance's
    pipeline stage (the group its experts fold into). ``tp``/``tp_size`` is that whole group for SGLang
    and TensorRT-LLM, attention TP x attention DP:
    - SGLang: ``attn_dp_size`` A (0.5.22+; ``dp_size`` then counts replicas) or ``dp_size`` A with
      ``enable_dp_attention`` (<= 0.5.21): TP = tp_size / A, DP = A x replicas;
    - TensorRT-LLM ``enable_attention_dp``: TP = 1, DP = tp_size per instance;
    - otherwise ``tp`` is attention TP and ``dp`` the total attention DP (default ``N / (tp x pp)``).

    Raises:
        PlanError: a switch of another engine, or a tp_size the attention DP does not divide.
    """
    engine = scenario.engine.name
    attn_dp, legacy, adp = sizes.get("attn_dp_size"), values.get("enable_dp_attention"), values.get("enable_attention_dp")
    if (attn_dp is not None or legacy is not None) and engine is not EngineName.SGLANG:
        raise PlanError(f"SGLang's attention-DP switch, but the scenario's engine is {engine.value}", source=source,
                        field="attn_dp_size" if attn_dp is not None else "enable_dp_attention")
    if adp is not None and engine is not EngineName.TENSORRT_LLM:
        raise PlanError(f"TensorRT-LLM's enable_attention_dp, but the scenario's engine is {engine.value}", source=source,
                        field="enable_attention_dp")
    group = tp
    replicas_default = max(1, n // (group * pp))
    if engine is EngineName.SGLANG and (attn_dp is not None or (legacy is not None and _flag(legacy, source, "enable_dp_attention"))):
        a = attn_dp if attn_dp is not None else sizes.get("dp", 1)
        if group % a:
            raise PlanError(f"tp_size = {group} is not a multiple of the attention DP size {a} (SGLang requires it)",
                            source=source, field="tp")
        replicas = sizes.get("dp", replicas_default) if attn_dp is not None else replicas_default
        return group // a, a * replicas, group
    if engine is EngineName.TENSORRT_LLM and adp is not None and _flag(adp, source, "enable_attention_dp"):
        return 1, sizes.get("dp", group * replicas_default), group
    return tp, sizes.get("dp", replicas_default), group


def _positive_int(value: Any, source: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"expected a positive integer, got {value!r}", source=source, field=field)
    if value < 1:
        raise PlanError(f"must be >= 1, got {value}", source=source, field=field)
    if value > 1 << 24:
        raise PlanError(f"{value} is larger than any cluster this tool plans for", source=source, field=field)
    return value
