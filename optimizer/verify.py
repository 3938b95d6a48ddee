"""Plan + Scenario -> Certificate: every rule re-checked on the concrete plan in exact integers, with
no solver involved (this module never imports ortools). Also reads hand-written plan files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimizer.cost import Estimate, estimate
from optimizer.errors import PlanError
from optimizer.loader import read_mapping
from optimizer.memory import StageMemory, layer_kinds, stage_memory
from optimizer.parallel import Layout, Plan, batch_per_replica, even_split
from optimizer.result import Tables, build_tables
from optimizer.rules import Check, PlanContext, build_rules, make_check
from optimizer.scenario import Scenario


@dataclass(frozen=True)
class Certificate:
    """Every rule's check on one plan, the memory per stage and the estimate they were judged on."""

    checks: tuple[Check, ...]
    memory: tuple[StageMemory, ...]
    estimate: Estimate

    @property
    def holds(self) -> bool:
        return all(check.holds for check in self.checks)

    @property
    def failing(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if not check.holds)


def plan_context(scenario: Scenario, plan: Plan, tables: Tables | None = None) -> PlanContext:
    """Cost and memory of ``plan`` from the grid's tables when its layout is in the grid (so the numbers
    are the very integers the solver used), else from tables built for this one layout."""
    if tables is None or plan.layout not in tables.layouts:
        full = build_tables(scenario)
        tables = full if plan.layout in full.layouts else build_tables(scenario, (plan.layout,))
    c = tables.layouts.index(plan.layout)
    w = scenario.workload
    kinds = layer_kinds(model=scenario.model, layers_per_stage=plan.layers_per_stage)
    return PlanContext(
        scenario=scenario,
        plan=plan,
        table=tables.cost,
        index=c,
        memory=stage_memory(scenario=scenario, layout=plan.layout, layers_per_stage=plan.layers_per_stage, batch=plan.batch_per_replica),
        estimate=estimate(table=tables.cost, i=c, kinds=kinds, concurrent_sequences=w.concurrent_sequences, output_tokens=w.output_tokens),
    )


def certify(scenario: Scenario, plan: Plan, tables: Tables | None = None) -> Certificate:
    """Check every rule of ``scenario`` on ``plan``. Never raises for a broken plan: the certificate says."""
    ctx = plan_context(scenario, plan, tables)
    checks = tuple(check for rule in build_rules(scenario) for check in rule.check(ctx))
    batch = batch_per_replica(concurrent_sequences=scenario.workload.concurrent_sequences, dp=plan.layout.dp)
    checks += (
        make_check("batch_per_replica", "batch_per_replica == ceil(concurrent_sequences / dp)", plan.batch_per_replica, "==", batch,
                   f"{scenario.workload.concurrent_sequences} sequences over DP = {plan.layout.dp} replicas put {batch} on the busiest"),
    )
    return Certificate(checks=checks, memory=tuple(ctx.memory), estimate=ctx.estimate)


# --- hand-written plans --------------------------------------------------------------------------------

_ALIASES = {
    "tp": ("tp", "tensor_parallel_size", "tensor-parallel-size", "tensor_model_parallel_size"),
    "pp": ("pp", "pipeline_parallel_size", "pipeline-parallel-size", "pipeline_model_parallel_size"),
    "dp": ("dp", "data_parallel_size", "data-parallel-size"),
    "ep": ("ep", "expert_parallel_size", "expert_model_parallel_size"),
    "etp": ("etp", "expert_tensor_parallel_size"),
    "edp": ("edp", "expert_data_parallel_size"),
    "batch_per_replica": ("batch_per_replica", "batch"),
    "layers_per_stage": ("layers_per_stage", "layer_split"),
}


def read_plan(path: Path, scenario: Scenario) -> Plan:
    """Read a plan JSON written by ``optimize --json`` (its ``plan`` object) or a minimal YAML/JSON with
    the sizes. Missing sizes are derived: ``dp = N / (tp x pp)``; for MoE ``etp = 1`` and
    ``edp = tp x dp / (ep x etp)``; for a dense model ``ep = 1, etp = tp, edp = dp``; the batch from the
    workload; the layers split evenly (extra layers on later stages).

    Raises:
        PlanError: unreadable file, unknown or non-integer fields, sizes < 1.
    """
    data = read_mapping(path, error=PlanError)
    source = str(path)
    if isinstance(data.get("plan"), dict):
        data = data["plan"]
    return plan_from_mapping(data, scenario, source=source)


def plan_from_mapping(data: dict[str, Any], scenario: Scenario, *, source: str = "<inline>") -> Plan:
    values: dict[str, Any] = {}
    known = {alias: key for key, aliases in _ALIASES.items() for alias in aliases}
    for name, value in data.items():
        key = known.get(str(name))
        if key is None:
            if name in ("instances", "dp_per_instance", "engine", "notes"):  # informative fields of a plan JSON
                continue
            raise PlanError(f"unknown field; expected some of {', '.join(_ALIASES)}", source=source, field=str(name))
        if key in values:
            raise PlanError(f"given twice (also as {key})", source=source, field=str(name))
        values[key] = value
    sizes = {k: _positive_int(values[k], source, k) for k in ("tp", "pp", "dp", "ep", "etp", "edp", "batch_per_replica") if k in values}
    n = scenario.cluster.num_gpus
    tp, pp = sizes.get("tp", 1), sizes.get("pp", 1)
    dp = sizes.get("dp", max(1, n // (tp * pp)))
    if scenario.model.is_moe:
        ep, etp = sizes.get("ep", 1), sizes.get("etp", 1)
        edp = sizes.get("edp", max(1, tp * dp // (ep * etp)))
    else:
        ep, etp, edp = sizes.get("ep", 1), sizes.get("etp", tp), sizes.get("edp", dp)
    layout = Layout(tp=tp, pp=pp, dp=dp, ep=ep, etp=etp, edp=edp)
    layers = values.get("layers_per_stage")
    if layers is None:
        split = even_split(num_layers=scenario.model.num_hidden_layers, pp=pp)
    elif isinstance(layers, list) and layers and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in layers):
        split = tuple(layers)
    else:
        raise PlanError(f"expected a list of non-negative layer counts, one per stage, got {layers!r}", source=source, field="layers_per_stage")
    batch = sizes.get("batch_per_replica", batch_per_replica(concurrent_sequences=scenario.workload.concurrent_sequences, dp=dp))
    return Plan(layout=layout, layers_per_stage=split, batch_per_replica=batch)


def _positive_int(value: Any, source: str, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PlanError(f"expected a positive integer, got {value!r}", source=source, field=field)
    if value < 1:
        raise PlanError(f"must be >= 1, got {value}", source=source, field=field)
    if value > 1 << 24:
        raise PlanError(f"{value} is larger than any cluster this tool plans for", source=source, field=field)
    return value
