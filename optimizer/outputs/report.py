"""Renderings of a plan and its certificate: a JSON document (the contract other tools read), a table for
the terminal, and Markdown for review. Pure functions returning strings; the CLI writes them."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from optimizer.model.cost import COLLECTIVE_KINDS, EP_EXCHANGE_OPS, CostTable, LayerTime, batched_prefill
from optimizer.model.engines import instances as engine_instances
from optimizer.model.engines import a2a_dispatch_dtype, deepep_mode, memory_limits, physical_experts
from optimizer.model.memory import active_params, layer_kinds, total_params
from optimizer.model.parallel import Plan, process_groups, rank_info
from optimizer.model.workload_features import cached_prompt_tokens, expected_tokens_per_step, host_kv_cache_tokens
from optimizer.search.result import Evidence, Solution
from optimizer.search.rules import MemoryCap
from optimizer.inputs.scenario import Scenario
from optimizer.inputs.schema import SCHEMA_VERSION
from optimizer.units import human_bytes
from optimizer.search.verify import Certificate, certify

if TYPE_CHECKING:  # diagnose imports the CP-SAT model; a verify or estimate report never needs it
    from optimizer.search.diagnose import Diagnosis



def instances(scenario: Scenario, plan: Plan) -> int:
    """Independent engine instances to launch (``engines.instances``): for vLLM, SGLang and TensorRT-LLM
    one per expert-data-parallel copy of a MoE model (``EP x ETP = TP x DP`` of one instance), one per DP
    replica of a dense model; Megatron: one job."""
    return engine_instances(scenario, plan.layout)


def input_notes(scenario: Scenario) -> list[str]:
    """What the scenario's inputs said that the plan does not use: the keys of a Hugging Face config.json
    (a file or pasted inline) that do not change memory or cost here."""
    ignored = scenario.model.ignored_config_fields
    if not ignored:
        return []
    shown = ", ".join(ignored)
    dtype = (" (the weights are counted in workload.weight_dtype, "
             f"{scenario.workload.weight_dtype.value})") if {"torch_dtype", "quantization_config"} & set(ignored) else ""
    return [f"config.json fields that do not change memory or cost here, ignored: {shown}{dtype}"]


def window_notes(scenario: Scenario) -> list[str]:
    """What the plan assumes of a sliding-window model's KV cache (``engine.windowed_kv_cache``)."""
    model = scenario.model
    if not model.num_sliding_layers:
        return []
    window = model.local_attention_window
    layers = (f"{model.num_sliding_layers} of {model.num_hidden_layers} layers attend to the last {window} tokens"
              if model.sliding_window is not None else
              f"{model.num_sliding_layers} of {model.num_hidden_layers} layers attend within chunks of {window} tokens "
              f"(attention_chunk_size; counted as a {window}-token sliding window: no fewer keys per query)")
    if scenario.engine.windowed_kv_cache:
        return [f"windowed KV cache: {layers} and keep only those (vLLM's hybrid KV cache manager); a stage is charged "
                "a bound linear in its layer count, at most one period of layers' window saving over the exact bytes"]
    return [f"sliding-window KV cache counted at full length: {layers}, but every layer here keeps ISL + OSL tokens "
            "(conservative); engine.windowed_kv_cache: true counts only the window, as vLLM's hybrid KV cache "
            "manager keeps it"]


def architecture_notes(scenario: Scenario) -> list[str]:
    """Architecture features the plan does not model, said where the model has them (issue 16)."""
    model, notes = scenario.model, []
    if model.is_moe and model.interleave_moe_layer_step > 1:
        notes.append(f"not modelled: a pipeline split of interleaved layers (one MoE layer in every "
                     f"{model.interleave_moe_layer_step}, {model.num_dense_layers} dense): PP is kept at 1 (rule interleaved_layers_one_stage)")
    return notes


def draft_notes(scenario: Scenario) -> list[str]:
    """A warning when a separate draft model (``engine.speculative.method: draft_model``) has another
    ``vocab_size`` than the target: vLLM refuses the pair at start-up (``SpeculativeConfig.
    verify_equal_vocab_size_if_draft_model``, vllm/config/speculative.py: "Target and draft model should have
    the same vocabulary size"), unless a recent version is told ``use_heterogeneous_vocab`` (greedy drafts
    over the shared tokens only). A note, not a rule: no layout changes it, and the sizes are the scenario's."""
    spec = scenario.engine.speculative
    draft = spec.draft_config if spec is not None else None
    if draft is None or draft.vocab_size == scenario.model.vocab_size:
        return []
    return [f"WARNING: the draft model's vocab_size = {draft.vocab_size} differs from the target's "
            f"{scenario.model.vocab_size}: vLLM refuses a draft_model pair whose vocabularies differ "
            "(vllm/config/speculative.py verify_equal_vocab_size_if_draft_model) unless speculative_config sets "
            "use_heterogeneous_vocab (recent versions; greedy drafts over the shared tokens): use a draft with the "
            "target's vocabulary"]


def calibration_notes(table: CostTable) -> list[str]:
    """A note when the plan's GPU has no measured calibration entry (a catalog GPU not yet benchmarked, or a
    GPU given inline): its times come from the ``default`` entry, so they are less sure than a fitted GPU's."""
    if table.calibration.measured:
        return []
    return [f"uncalibrated GPU: estimates use {table.calibration_text}"]


def plan_document(
    *, scenario: Scenario, plan: Plan, certificate: Certificate, table: CostTable, index: int, evidence: Evidence | None
) -> dict[str, Any]:
    """The plan as a JSON-ready mapping (schema ``SCHEMA_VERSION``)."""
    layout, est = plan.layout, certificate.estimate
    n_inst = instances(scenario, plan)
    return {
        "schema_version": SCHEMA_VERSION,
        "scenario": scenario.model_dump(mode="json"),
        "plan": {
            **layout.as_dict(),
            "instances": n_inst,
            "dp_per_instance": layout.dp // n_inst if layout.dp % n_inst == 0 else None,
            "batch_per_replica": plan.batch_per_replica,
            "layers_per_stage": list(plan.layers_per_stage),
            "engine": scenario.engine.name.value,
            "notes": [*plan.notes, *input_notes(scenario), *window_notes(scenario), *architecture_notes(scenario),
                      *draft_notes(scenario), *calibration_notes(table)],
        },
        "rank_map": rank_map(scenario, plan),
        "memory": memory_section(scenario, certificate),
        "estimate": {
            "ttft_s": est.ttft_ns / 1e9,
            "tpot_s": est.tpot_ns / 1e9,
            "request_latency_s": est.request_latency_ns / 1e9,
            "output_tokens_per_s": est.output_tokens_per_s,
            "output_tokens_per_s_per_gpu": est.output_tokens_per_s / scenario.cluster.num_gpus,
            "ttft_ns": est.ttft_ns,
            "tpot_ns": est.tpot_ns,
            "request_latency_ns": est.request_latency_ns,
            "prefill_stage_ns": list(est.prefill_stage_ns),
            "decode_stage_ns": list(est.decode_stage_ns),
            "prefill_share_per_decode_step_ns": table.prefill_share_ns[index],
            "decode_microbatches": table.microbatches[index],
            **ttft_section(scenario, table, index),
            **step_section(scenario, table, index, plan),
            "breakdown_per_layer_s": _breakdown(scenario, table, index),
            "speed_of_light_per_layer_s": _breakdown(scenario, table, index, sol=True),
            "stage_extras_s": _extras(table, index),
            "calibration": {"id": table.calibration_id, "gpu_entry": table.calibration.entry,
                            "measured": table.calibration.measured, "text": table.calibration_text},
            **workload_features_section(scenario, table, index, plan, certificate),
        },
        "certificate": {
            "holds": certificate.holds,
            "runnable": certificate.runnable,
            "failing_rules": failing_rules(certificate),
            "checks": [
                {"name": c.name, "formula": c.formula, "lhs": c.lhs, "op": c.op, "rhs": c.rhs, "holds": c.holds, "detail": c.detail}
                for c in certificate.checks
            ],
        },
        "evidence": None if evidence is None else {
            "status": evidence.status,
            "objective": evidence.objective,
            "best_bound": evidence.best_bound,
            "proved_optimal": evidence.proved_optimal,
            "solver": evidence.solver,
            "gap": evidence.gap,
            "gap_ns": evidence.gap_ns,
            "double_check": evidence.double_check,
            "parameters": evidence.parameters,
            "model_size": evidence.model_size,
            "candidates": evidence.candidates,
            "objective_encoding": "primary_ns x candidates + tie_break_rank",
            "objective_kind": scenario.search.objective.value,
            "certificate_check": evidence.certificate_check,
            "solver_fault": evidence.solver_fault,
            "optimality_certificate": evidence.certificate,
        },
    }


def failing_rules(certificate: Certificate) -> list[dict[str, Any]]:
    """The rules a plan breaks, numbered from 1 in certificate order, each with its integers (``lhs op
    rhs`` is false) and ``structural``: true when the engine cannot start the plan as written
    (``Rule.structural``), false for a target or a balance it only misses."""
    return [{"number": i, "name": c.name, "formula": c.formula, "lhs": c.lhs, "op": c.op, "rhs": c.rhs, "detail": c.detail,
             "structural": c.name in certificate.structural} for i, c in enumerate(certificate.failing, start=1)]


def render_failing(rules: list[dict[str, Any]], *, runnable: bool) -> list[str]:
    """Terminal lines for ``failing_rules``, to print before anything else about the plan."""
    if not rules:
        return []
    head = (f"This plan cannot run: it breaks {len(rules)} rule(s), {sum(r['structural'] for r in rules)} of them "
            "structural (the engine cannot start it as written):" if not runnable
            else f"This plan runs but breaks {len(rules)} rule(s) (targets or balance):")
    return [head] + [f"  {r['number']}. {r['name']}{' [structural]' if r['structural'] else ''}: {r['lhs']} {r['op']} "
                     f"{r['rhs']} is false ({r['formula']}); {r['detail']}" for r in rules]


def solution_document(solution: Solution) -> dict[str, Any]:
    """``plan_document`` for a solver's solution: certified against the very tables it was solved on."""
    scenario, plan = solution.scenario, solution.plan
    certificate = certify(scenario, plan, solution.tables)
    return plan_document(scenario=scenario, plan=plan, certificate=certificate, table=solution.tables.cost,
                         index=solution.tables.index(plan.layout, plan.batch_per_replica), evidence=solution.evidence)


def infeasible_document(*, scenario: Scenario, reasons: tuple[str, ...], diagnosis: Diagnosis | None) -> dict[str, Any]:
    """The JSON for a scenario with no feasible plan (schema ``SCHEMA_VERSION``): ``plan`` is null,
    ``infeasible`` holds the conflicts and, when diagnosed, the confirmed changes."""
    return {
        "schema_version": SCHEMA_VERSION,
        "scenario": scenario.model_dump(mode="json"),
        "plan": None,
        "infeasible": {
            "conflicts": [list(c) for c in diagnosis.conflicts] if diagnosis else None,
            "reasons": list(reasons),
            "changes": None if diagnosis is None else [
                {"field": c.field, "current": c.current, "proposed": c.proposed, "text": c.text} for c in diagnosis.changes
            ],
            "notes": None if diagnosis is None else list(diagnosis.notes),
        },
    }


def _round(t: float) -> float:
    # Six significant digits: these floats are informative (the solver used the integer ns tables), and
    # rounding keeps the JSON byte-identical even if a libm differs in the last bit on another machine.
    return float(f"{t:.6g}")


def _phases(scenario: Scenario, table: CostTable) -> dict[str, LayerTime]:
    phases: dict[str, LayerTime] = {"prefill_dense": table.prefill.dense_breakdown, "decode_dense": table.decode.dense_breakdown}
    if scenario.model.is_moe:
        phases = {"prefill_moe": table.prefill.moe_breakdown, "decode_moe": table.decode.moe_breakdown,
                  **({"prefill_dense": table.prefill.dense_breakdown, "decode_dense": table.decode.dense_breakdown}
                     if scenario.model.num_dense_layers else {})}
    return phases


def _breakdown(scenario: Scenario, table: CostTable, i: int, *, sol: bool = False) -> dict[str, dict[str, float]]:
    """Seconds per operator of one layer on one GPU, per phase and layer kind (or their speed of light)."""
    return {name: {op: _round(t) for op, t in (layer.sol_row(i) if sol else layer.row(i)).items()}
            for name, layer in _phases(scenario, table).items()}


def _extras(table: CostTable, i: int) -> dict[str, dict[str, float]]:
    """The first stage's, the last stage's and one pipeline hop's operators, per phase (seconds)."""
    out = {}
    for phase, costs in (("prefill", table.prefill), ("decode", table.decode)):
        for where, layer in (("first_stage", costs.first_breakdown), ("last_stage", costs.last_breakdown),
                             ("every_stage", costs.stage_breakdown), ("pp_hop", costs.boundary_breakdown)):
            out[f"{phase}_{where}"] = {op: _round(t) for op, t in layer.row(i).items()}
    return out


def _stage_bytes(s) -> dict[str, int]:
    return {"stage": s.stage, "weights_bytes": s.weights_bytes, "kv_cache_bytes": s.kv_cache_bytes,
            "activation_bytes": s.activation_bytes, "reserve_bytes": s.reserve_bytes, "cuda_graph_bytes": s.cuda_graph_bytes,
            "comm_buffer_bytes": s.comm_buffer_bytes, "total_bytes": s.total_bytes}


def memory_section(scenario: Scenario, certificate: Certificate) -> dict[str, Any]:
    """Bytes per GPU by component and stage, and the KV-cache capacity the plan leaves (exact integers):
    per stage the most KV tokens within every memory limit of the engine (vLLM: ``floor((cap - everything
    but the KV cache) / KV bytes per token)``; counted in full-length sequences, ``StageMemory.kv_capacity_tokens``,
    so a sliding layer holds only its window of each under ``engine.windowed_kv_cache``), per replica the
    smallest over its stages, and how many full-length (ISL + OSL) sequences that holds. ``cap_bytes`` is what the whole footprint fits in
    (``engines.usable_bytes``); ``limits`` names the engine's limits."""
    cap = MemoryCap.cap_bytes(scenario)
    limits = memory_limits(scenario)
    heaviest = max(certificate.memory, key=lambda s: s.total_bytes)
    capacities = [s.kv_capacity_tokens(limits) for s in certificate.memory]
    known = [c for c in capacities if c is not None]
    tokens = min(known) if known else None
    return {
        "cap_bytes": cap,
        "limits": [{"label": lim.label or "memory", "formula": lim.formula, "cap": lim.cap} for lim in limits],
        "kv_cache_capacity_tokens": tokens,
        "max_sequences_per_replica": None if tokens is None else tokens // scenario.workload.max_sequence_tokens,
        "per_gpu_peak": _stage_bytes(heaviest),
        "stages": [{**_stage_bytes(s), "dense_layers": s.dense_layers, "moe_layers": s.moe_layers, "kv_cache_capacity_tokens": c}
                   for s, c in zip(certificate.memory, capacities)],
    }


def ttft_section(scenario: Scenario, table: CostTable, i: int) -> dict[str, Any]:
    """Which TTFT model the estimate used (``cost.integer_costs``) and its terms: ``ttft_model``
    (isolated | loaded), the prompt's chunks and their tokens, whether each chunk's step also carries the
    batch's decode step and the other prompts' prefill share, the isolated TTFT beside it (ns), and a
    sentence saying so. ``ttft_overloaded``: under the loaded model, the prompts arriving per step of a
    micro-batch (``d x ISL / OSL`` tokens for its ``d = ceil(batch / m)`` sequences, each replaced after
    OSL steps) exceed the prompt tokens a step admits (``max_num_batched_tokens`` less the decode tokens
    where the engine mixes them): no steady state exists and the queue grows, so the TTFT is a lower bound."""
    chunks, tokens = table.ttft_chunks[i], table.chunk_tokens[i]
    rides, waits = table.ttft_rides_decode[i], table.ttft_waits[i]
    isolated = table.phase_total_ns(table.prefill, i)
    workload = scenario.workload
    decode_tokens = -(-table.batch[i] // table.microbatches[i])
    room = max(scenario.engine.max_num_batched_tokens - (decode_tokens if rides else 0), 1)
    overloaded = (table.ttft_model != "isolated" and waits == 1
                  and decode_tokens * workload.input_tokens > room * max(workload.output_tokens, 1))
    if table.ttft_model == "isolated":
        text = "isolated: one prompt's prefill alone on an idle replica"
    else:
        parts = [f"{chunks} step(s) of {tokens} prompt tokens"]
        if rides:
            parts.append(f"each with a decode step of {table.batch[i]} running sequence(s) per replica")
        if waits:
            parts.append("and the other prompts' prefill share (FCFS)")
        text = (f"loaded: {', '.join(parts)}; isolated prefill {isolated / 1e6:.2f} ms")
        if overloaded:
            text += (f"; OVERLOADED: prompts bring {decode_tokens * workload.input_tokens / max(workload.output_tokens, 1):,.0f} "
                     f"tokens per step against {room} admitted, the queue grows and this TTFT is a lower bound")
    return {"ttft_model": table.ttft_model, "ttft_model_text": text, "ttft_chunks": chunks, "ttft_chunk_tokens": tokens,
            "ttft_steps_carry_decode": bool(rides), "ttft_steps_carry_prefill_share": bool(waits), "ttft_isolated_ns": isolated,
            "ttft_overloaded": overloaded}


def step_section(scenario: Scenario, table: CostTable, i: int, plan: Plan) -> dict[str, float]:
    """``prefill_step_s``: one prompt through every stage and hop (the isolated TTFT); ``decode_step_s``: one decode
    step of one micro-batch through every stage and hop, without the prefill share (TPOT adds it, and
    waits for the slowest stage when micro-batches overlap)."""
    # every stage, its step overhead and every hop: the table's one definition, whatever the layer split
    return {"prefill_step_s": table.phase_total_ns(table.prefill, i) / 1e9, "decode_step_s": table.phase_total_ns(table.decode, i) / 1e9}


def workload_features_section(scenario: Scenario, table: CostTable, i: int, plan: Plan,
                              certificate: Certificate) -> dict[str, Any]:
    """``{"workload_features": ...}`` when speculative decoding or prefix caching is on, else ``{}`` (so plans
    without them are unchanged): the expected tokens per step, the whole verify + draft step and the draft's
    share of it (ns), the draft module's bytes on a last-stage GPU, and the cached / prefilled prompt tokens
    (``optimizer/model/workload_features.py``). With speculation, ``decode_step_s`` and ``decode_stage_ns``
    are per emitted token (the step divided by the expected tokens)."""
    spec, hit, offload = scenario.engine.speculative, scenario.workload.prefix_cache_hit_rate, scenario.engine.kv_offload_bytes
    if spec is None and hit == 0 and offload == 0:
        return {}
    cached = cached_prompt_tokens(scenario)
    capacities = [c for c in (s.kv_capacity_tokens(memory_limits(scenario)) for s in certificate.memory) if c is not None]
    running = table.batch[i] * scenario.workload.max_sequence_tokens
    host = host_kv_cache_tokens(kv_offload_bytes=offload, kv_bytes_per_token=tuple(s.kv_bytes_per_token for s in certificate.memory))
    section: dict[str, Any] = {
        "speculative_method": None, "num_speculative_tokens": None, "acceptance_rate": None, "expected_tokens_per_step": None,
        "verify_tokens_per_sequence": None, "speculative_step_ns": None, "draft_ns": None, "draft_weight_bytes": None,
        "draft_kv_cache_bytes": None, "prefix_cache_hit_rate": float(hit), "cached_prompt_tokens": cached,
        "uncached_prompt_tokens": scenario.workload.input_tokens - cached, "kv_offload_bytes": offload,
        "host_kv_cache_tokens": host, "hbm_free_kv_cache_tokens": max(min(capacities) - running, 0) if capacities else None}
    parts = []
    if spec is not None and table.decode_step is not None:
        step = table.phase_total_ns(table.decode_step, i)  # every stage (with its step overhead) and hop
        expected = expected_tokens_per_step(scenario)
        last = certificate.memory[-1]
        section.update(speculative_method=spec.method.value, num_speculative_tokens=spec.num_speculative_tokens,
                       acceptance_rate=float(spec.acceptance_rate), expected_tokens_per_step=float(expected),
                       verify_tokens_per_sequence=1 + spec.num_speculative_tokens, speculative_step_ns=step,
                       draft_ns=table.draft_ns[i], draft_weight_bytes=last.draft_weight_bytes,
                       draft_kv_cache_bytes=last.draft_kv_cache_bytes)
        parts.append(f"speculative decoding ({spec.method.value}): each step verifies {1 + spec.num_speculative_tokens} "
                     f"tokens per sequence and emits {float(expected):.3f} in expectation (acceptance "
                     f"{float(spec.acceptance_rate):g}); a step takes {step / 1e6:.3f} ms, of which the draft "
                     f"{table.draft_ns[i] / 1e6:.3f} ms; the draft holds {human_bytes(last.draft_weight_bytes)} of weights and "
                     f"{human_bytes(last.draft_kv_cache_bytes)} of KV cache per last-stage GPU; the decode step and stage times "
                     f"are per emitted token (the step over {float(expected):.3f})")
        verify = -(-table.batch[i] // table.microbatches[i]) * (1 + spec.num_speculative_tokens)
        if verify > scenario.engine.max_num_batched_tokens:
            parts.append(f"WARNING: a verify step of {verify} tokens exceeds engine.max_num_batched_tokens = "
                         f"{scenario.engine.max_num_batched_tokens} (vLLM --max-num-batched-tokens counts the drafts): "
                         "raise it or the engine runs fewer sequences per step than planned")
    if hit:
        parts.append(f"prefix cache: {cached} of {scenario.workload.input_tokens} prompt tokens served from cache "
                     f"(hit rate {float(hit):g}); prefill computes the other {scenario.workload.input_tokens - cached}")
    if offload:
        free = section["hbm_free_kv_cache_tokens"]
        parts.append(f"KV offload: host memory keeps {host:,} tokens of evicted prefix blocks per replica "
                     f"({human_bytes(offload)} per GPU) beside the {free if free is not None else 0:,} KV tokens of HBM the "
                     f"running batch leaves free; a capacity only: the hit rate is the scenario's, the copy back is not costed")
    section["text"] = "; ".join(parts)
    return {"workload_features": section}


def estimate_document(*, scenario: Scenario, plan: Plan, certificate: Certificate, table: CostTable, index: int) -> dict[str, Any]:
    """``optimize estimate``: one plan's step times, TTFT, TPOT and throughput, and every operator and
    collective of each step with its speed of light beside it (datasheet peak, no launch or latency).

    Per phase, each operator's time is its per-layer time x the layers of that kind in the replica (all
    stages), plus the first and last stages' extras and ``PP - 1`` hops, so the operators of a phase add up
    to its step time (up to the nanosecond rounding of the integer tables). ``decode`` is one step of one
    micro-batch; TPOT adds the share of prefills that keeps the batch full. With speculative decoding the
    decode operators are one whole step (the verify pass and a ``speculative_draft`` row), which emits E
    tokens per sequence: they add up to ``workload_features.speculative_step_ns``, and ``decode_step_s``
    is that step over E.
    """
    base = plan_document(scenario=scenario, plan=plan, certificate=certificate, table=table, index=index, evidence=None)
    est, mem = base["estimate"], base["memory"]
    kinds = layer_kinds(model=scenario.model, layers_per_stage=plan.layers_per_stage)
    dense_layers, moe_layers = sum(d for d, _ in kinds), sum(m for _, m in kinds)
    phases = {}
    # With speculative decoding the decode operators are those of one whole step (the verify pass of 1 + k
    # tokens per sequence, and the draft's k passes as one row), which emits E tokens per sequence: the
    # tables' per-token decode times are that step over E (workload_features section).
    for phase, costs in (("prefill", table.prefill), ("decode", table.decode_step or table.decode)):
        parts = [(costs.dense_breakdown, dense_layers, "dense layer"), (costs.first_breakdown, 1, "first stage"),
                 (costs.last_breakdown, 1, "last stage"), (costs.stage_breakdown, len(kinds), "every stage"),
                 (costs.boundary_breakdown, len(kinds) - 1, "pp hop")]
        if scenario.model.is_moe:
            parts.insert(1, (costs.moe_breakdown, moe_layers, "moe layer"))
        ops = []
        for layer, count, where in parts:
            if count == 0:
                continue
            times, sols, wire = layer.row(index), layer.sol_row(index), layer.wire_row(index)
            for name, t in times.items():
                ops.append({"operator": name, "where": where, "kind": layer.kinds.get(name, ""), "count": count,
                            "each_s": _round(t), "total_s": _round(t * count), "speed_of_light_s": _round(sols[name] * count),
                            **({"each_nvlink_bytes": round(wire[name][0]), "each_internode_bytes": round(wire[name][1])}
                               if name in wire else {})})
        if phase == "decode" and table.decode_step is not None and table.draft_ns:
            draft_s = table.draft_ns[index] / 1e9  # the draft's k passes, added to the last stage (cost._decode_phases)
            ops.append({"operator": "speculative_draft", "where": "last stage", "kind": "compute", "count": 1,
                        "each_s": _round(draft_s), "total_s": _round(draft_s), "speed_of_light_s": 0.0})
        by_class: dict[str, float] = {}
        for op in ops:
            cls = op["kind"] if op["kind"] in ("overhead", "overlap") else "collective" if op["kind"] in COLLECTIVE_KINDS else "compute"
            by_class[cls] = by_class.get(cls, 0.0) + op["total_s"]
        phases[phase] = {"operators": ops, "totals_s": {k: _round(v) for k, v in sorted(by_class.items())},
                         "speed_of_light_s": _round(sum(op["speed_of_light_s"] for op in ops))}
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "estimate",
        "scenario": scenario.name,
        "plan": {k: base["plan"][k] for k in ("tp", "pp", "dp", "ep", "etp", "edp", "batch_per_replica", "layers_per_stage", "engine")},
        "plan_holds": certificate.holds,
        "runnable": certificate.runnable,
        "failing_rules": base["certificate"]["failing_rules"],
        "failing_checks": [{"name": c.name, "detail": c.detail} for c in certificate.failing],
        **{k: est[k] for k in ("prefill_step_s", "decode_step_s", "ttft_s", "tpot_s", "request_latency_s",
                               "output_tokens_per_s", "output_tokens_per_s_per_gpu", "decode_microbatches", "ttft_model",
                               "ttft_model_text")},
        "prefill_share_per_decode_step_s": est["prefill_share_per_decode_step_ns"] / 1e9,
        **_static_batch(scenario=scenario, plan=plan, table=table, index=index, certificate=certificate, kinds=kinds),
        "kv_cache_capacity_tokens": mem["kv_cache_capacity_tokens"],
        "max_sequences_per_replica": mem["max_sequences_per_replica"],
        "breakdown": phases,
        **({"ep_exchange": ep_exchange_summary(scenario)} if scenario.model.is_moe else {}),
        **({"workload_features": est["workload_features"]} if "workload_features" in est else {}),
        "calibration": est["calibration"],
    }


def ep_exchange_summary(scenario: Scenario) -> dict[str, Any]:
    """How the estimate moves MoE tokens (``cost.ep_exchange_works``, ``cost.two_batch_overlap``): the
    backend, the DeepEP kernels per phase, the dispatch format, the overlap and the expert slots."""
    engine = scenario.engine

    def mode(prefill: bool) -> str:
        resolved = deepep_mode(scenario, prefill=prefill)
        return "all top-k copies" if resolved is None else str(resolved.value)

    return {"moe_a2a_backend": engine.moe_a2a_backend.value, "prefill_mode": mode(True), "decode_mode": mode(False),
            "dispatch_dtype": a2a_dispatch_dtype(scenario).value, "combine_dtype": "bf16",
            "two_batch_overlap": engine.enable_two_batch_overlap, "num_redundant_experts": engine.num_redundant_experts,
            "expert_slots": physical_experts(scenario)}


def _static_batch(*, scenario: Scenario, plan: Plan, table: CostTable, index: int, certificate: Certificate,
                  kinds: list[tuple[int, int]]) -> dict[str, Any]:
    """An offline (static) batch: every replica's ``batch`` prompts prefilled as the scheduler batches them
    (``cost.batched_prefill``), then OSL decode steps of the full batch with no prefill between them.
    ``static_batch_output_tokens_per_s_per_gpu`` = DP x batch x OSL / (batched prefill + OSL x decode
    cycle) / GPUs, comparable with offline benchmarks (vLLM ``benchmark_throughput``, trtllm-bench)."""
    prefill = batched_prefill(scenario=scenario, table=table, index=index, kinds=kinds)
    cycle_ns = certificate.estimate.tpot_ns - table.prefill_share_ns[index]  # the decode cycle alone
    osl = scenario.workload.output_tokens
    total_ns = prefill.batched_prefill_ns + osl * cycle_ns
    tokens = plan.layout.dp * plan.batch_per_replica * osl
    return {
        "batched_prefill_s": prefill.batched_prefill_ns / 1e9,
        "batched_prefill_steps": prefill.steps,
        "static_batch_output_tokens_per_s_per_gpu": tokens * 1e9 / total_ns / scenario.cluster.num_gpus if total_ns else 0.0,
    }


def render_estimate(document: dict[str, Any]) -> str:
    """``estimate_document`` for a terminal: one table per phase, speed of light and headroom per row."""
    p = document["plan"]
    failing = render_failing(document["failing_rules"], runnable=document["runnable"])
    cannot_run = ", for a plan that cannot run" if not document["runnable"] else ""
    lines = [*failing, *([""] if failing else []),
        f"Estimate for {document['scenario']}{cannot_run}: TP {p['tp']} PP {p['pp']} DP {p['dp']} | EP {p['ep']} ETP {p['etp']} EDP {p['edp']}"
        f"  batch/replica {p['batch_per_replica']}  layers per stage {p['layers_per_stage']}",
        f"  calibration {document['calibration']['text']}",
        "",
        f"  prefill step {document['prefill_step_s'] * 1e3:.2f} ms   TTFT {document['ttft_s'] * 1e3:.2f} ms "
        f"({document['ttft_model_text']})",
        f"  decode step {document['decode_step_s'] * 1e3:.3f} ms   "
        f"TPOT {document['tpot_s'] * 1e3:.3f} ms (with {document['prefill_share_per_decode_step_s'] * 1e3:.3f} ms of prefills per step, "
        f"{document['decode_microbatches']} micro-batch(es))",
        f"  request latency {document['request_latency_s']:.3f} s   {document['output_tokens_per_s']:,.0f} output tokens/s "
        f"({document['output_tokens_per_s_per_gpu']:,.1f} per GPU)",
        f"  static batch (offline): {document['static_batch_output_tokens_per_s_per_gpu']:,.1f} output tokens/s per GPU, "
        f"its prompts prefilled in {document['batched_prefill_s']:.3f} s ({document['batched_prefill_steps']} scheduler step(s))",
    ]
    if document.get("workload_features"):
        lines.append(f"  workload: {document['workload_features']['text']}")
    if document["kv_cache_capacity_tokens"] is not None:
        lines.append(f"  KV cache capacity {document['kv_cache_capacity_tokens']:,} tokens per replica "
                     f"({document['max_sequences_per_replica']:,} sequences at ISL + OSL)")
    if not document["runnable"]:
        lines.append("  WARNING: the engine cannot start this plan (the structural rules above); the figures are what "
                     "the cost model gives for the sizes as written, not a deployment's")
    for phase in ("prefill", "decode"):
        b = document["breakdown"][phase]
        total = sum(b["totals_s"].values())
        lines += ["", f"{phase} step: {total * 1e3:.3f} ms = " + " + ".join(f"{k} {v * 1e3:.3f}" for k, v in b["totals_s"].items())
                  + f" ms; speed of light {b['speed_of_light_s'] * 1e3:.3f} ms",
                  f"  {'operator':22s} {'where':12s} {'kind':18s} {'count':>5s} {'each ms':>10s} {'total ms':>10s} "
                  f"{'share':>6s} {'SOL ms':>10s} {'x SOL':>7s}"]
        for op in sorted(b["operators"], key=lambda o: -o["total_s"]):
            if op["total_s"] == 0:
                continue
            ratio = f"{op['total_s'] / op['speed_of_light_s']:.1f}" if op["speed_of_light_s"] > 0 else "-"
            lines.append(f"  {op['operator']:22s} {op['where']:12s} {op['kind']:18s} {op['count']:5d} {op['each_s'] * 1e3:10.4f} "
                         f"{op['total_s'] * 1e3:10.3f} {100 * op['total_s'] / total:5.1f}% {op['speed_of_light_s'] * 1e3:10.3f} {ratio:>7s}")
        for op in b["operators"]:
            if op["operator"] in EP_EXCHANGE_OPS and op["total_s"] > 0:
                lines.append(f"  {op['operator']}: {human_bytes(op['each_nvlink_bytes'])} over NVLink + "
                             f"{human_bytes(op['each_internode_bytes'])} across nodes per GPU per layer")
    ex = document.get("ep_exchange")
    if ex:
        lines += ["", f"EP exchange: {ex['moe_a2a_backend']} (prefill {ex['prefill_mode']}, decode {ex['decode_mode']}), dispatch "
                  f"{ex['dispatch_dtype']}, combine {ex['combine_dtype']}, two-batch overlap {'on' if ex['two_batch_overlap'] else 'off'}, "
                  f"{ex['expert_slots']} expert slots ({ex['num_redundant_experts']} redundant)"]
    return "\n".join(lines) + "\n"


def rank_map(scenario: Scenario, plan: Plan) -> dict[str, Any] | None:
    """Global rank -> node, GPU and coordinates; the process groups. Order tp-dp-pp, experts etp-ep-edp.
    None when the plan's TP x PP x DP is not the cluster's GPU count: no such map exists (and a
    hand-written ``dp: 16777216`` must not lay out 16 million ranks to say so)."""
    layout, g = plan.layout, scenario.cluster.gpus_per_node
    if layout.gpus != scenario.cluster.num_gpus:
        return None
    ranks = [rank_info(rank=r, layout=layout, gpus_per_node=g).__dict__ for r in range(layout.gpus)]
    return {"order": "tp-dp-pp (experts inside a stage: etp-ep-edp)", "ranks": ranks, "groups": process_groups(layout=layout)}


def to_json(document: dict[str, Any]) -> str:
    """Deterministic bytes: sorted keys, two-space indent, trailing newline."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def _model_line(scenario: Scenario) -> str:
    model = scenario.model
    kind = f"MoE {model.num_experts} experts top-{model.num_experts_per_tok}" if model.is_moe else "dense"
    return (f"{model.name}: {total_params(model) / 1e9:.1f}B params ({active_params(model) / 1e9:.1f}B active), "
            f"{model.num_hidden_layers} layers, {kind}")


def alternatives_section(solution: Solution, ranked: list[tuple[int, Plan]]) -> list[dict[str, Any]]:
    """``--top K``: each plan's sizes, objective, gap to the best (primary units and percent) and estimate."""
    scenario, tables = solution.scenario, solution.tables
    n = tables.candidates
    best = ranked[0][0] // n if ranked else 0
    out = []
    for rank, (value, plan) in enumerate(ranked, start=1):
        certificate = certify(scenario, plan, tables)
        est = certificate.estimate
        primary = value // n
        out.append({
            **plan.layout.as_dict(), "rank": rank, "instances": instances(scenario, plan),
            "batch_per_replica": plan.batch_per_replica,
            "layers_per_stage": list(plan.layers_per_stage), "objective": value, "gap": primary - best,
            "gap_percent": _round(100 * (primary - best) / best) if best else 0.0,
            "ttft_s": est.ttft_ns / 1e9, "tpot_s": est.tpot_ns / 1e9, "request_latency_s": est.request_latency_ns / 1e9,
            "output_tokens_per_s_per_gpu": _round(est.output_tokens_per_s / scenario.cluster.num_gpus),
        })
    return out


def render_alternatives(document: dict[str, Any]) -> str:
    """The ``--top K`` table for a terminal: each plan's sizes, instances, estimate and its gap to the best,
    ``+x ms (+y %)`` of the objective's latency (request latency, TTFT or TPOT; a fixed-concurrency
    throughput objective is the request latency), or for ``output_tokens_per_s_per_gpu`` the tokens/s per
    GPU it gives up, ``-x tok/s/GPU (-y %)``."""
    kind = document["evidence"]["objective_kind"] if document.get("evidence") else "request_latency"
    per_gpu = kind == "output_tokens_per_s_per_gpu"
    metric = "output tokens/s per GPU" if per_gpu else {"ttft": "TTFT", "tpot": "TPOT"}.get(kind, "request latency")
    rows = document["alternatives"]
    best = rows[0] if rows else None
    lines = [f"Top {len(rows)} plans on distinct layouts (objective {kind}; gap to #1 in {metric}):",
             f"  {'#':>2s} {'TP':>3s} {'PP':>3s} {'DP':>4s} {'EP':>4s} {'ETP':>4s} {'EDP':>4s} {'instances':>9s} {'batch':>6s} "
             f"{'TTFT ms':>9s} {'TPOT ms':>9s} {'tok/s/GPU':>10s}  gap to #1"]
    for a in rows:
        lines.append(f"  {a['rank']:2d} {a['tp']:3d} {a['pp']:3d} {a['dp']:4d} {a['ep']:4d} {a['etp']:4d} {a['edp']:4d} "
                     f"{a['instances']:9d} {a['batch_per_replica']:6d} {a['ttft_s'] * 1e3:9.2f} {a['tpot_s'] * 1e3:9.3f} "
                     f"{a['output_tokens_per_s_per_gpu']:10,.1f}  {_gap_text(a, best, per_gpu=per_gpu)}")
    return "\n".join(lines) + "\n"


def _gap_text(row: dict[str, Any], best: dict[str, Any], *, per_gpu: bool) -> str:
    """``+x ms (+y %)`` from the integer ``gap`` (ns of the objective) and ``gap_percent``; per GPU
    throughput as the tokens/s per GPU lost and their share of the best's."""
    if row["rank"] == 1:
        return "best"
    if per_gpu:
        lost, of = row["output_tokens_per_s_per_gpu"] - best["output_tokens_per_s_per_gpu"], best["output_tokens_per_s_per_gpu"]
        return f"{lost:+,.1f} tok/s/GPU ({100 * lost / of:+.2f} %)" if of else f"{lost:+,.1f} tok/s/GPU"
    return f"{row['gap'] / 1e6:+,.3f} ms ({row['gap_percent']:+.2f} %)"


def render_table(document: dict[str, Any], *, title: str = "Plan", timing: str | None = None) -> str:
    """The plan for a terminal: sizes, estimate, memory, every check, the evidence; ``timing`` (wall time,
    workers) is shown here only, never in the JSON, so that the JSON stays byte-identical across runs.
    The title says when the estimate is for a plan that cannot run (``render_failing`` lists why; print
    it first)."""
    sc, plan, est, mem, cert, ev = (document[k] for k in ("scenario", "plan", "estimate", "memory", "certificate", "evidence"))
    cl = sc["cluster"]
    peak = mem["per_gpu_peak"]
    runnable = cert.get("runnable", True)
    lines = [
        f"{title} for {sc['name']}: {cl['num_nodes'] * cl['gpus_per_node']} x {cl['gpu']['name']} "
        f"({cl['num_nodes']} node(s) x {cl['gpus_per_node']}), engine {plan['engine']}"
        + ("; the estimate is for a plan that cannot run" if not runnable else ""),
        "",
        f"  TP {plan['tp']}  PP {plan['pp']}  DP {plan['dp']}   |   EP {plan['ep']}  ETP {plan['etp']}  EDP {plan['edp']}"
        f"   |   instances {plan['instances']}",
        f"  batch per replica {plan['batch_per_replica']}   layers per stage {plan['layers_per_stage']}",
        *[f"  note: {n}" for n in plan["notes"]],
        "",
        f"  TTFT {est['ttft_s'] * 1e3:.1f} ms   TPOT {est['tpot_s'] * 1e3:.2f} ms   request latency {est['request_latency_s']:.3f} s   "
        f"{est['output_tokens_per_s']:,.0f} output tokens/s ({est['output_tokens_per_s_per_gpu']:,.0f} per GPU)",
        *([f"  TTFT model: {est['ttft_model_text']}"] if "ttft_model_text" in est else []),
        *([f"  workload: {est['workload_features']['text']}"] if est.get("workload_features") else []),
        f"  memory per GPU (stage {peak['stage']}): weights {human_bytes(peak['weights_bytes'])} + KV cache "
        f"{human_bytes(peak['kv_cache_bytes'])} + activations {human_bytes(peak['activation_bytes'])} + runtime "
        f"{human_bytes(peak['reserve_bytes'] + peak['cuda_graph_bytes'] + peak['comm_buffer_bytes'])} = "
        f"{human_bytes(peak['total_bytes'])} of {human_bytes(mem['cap_bytes'])} usable",
        *([f"  KV cache capacity {mem['kv_cache_capacity_tokens']:,} tokens per replica "
           f"({mem['max_sequences_per_replica']:,} sequences at ISL + OSL)"] if mem["kv_cache_capacity_tokens"] is not None else []),
        *stage_shares(plan["layers_per_stage"], est["decode_stage_ns"], mem["stages"]),
        "",
        f"Certificate: {len(cert['checks'])} checks, " + ("all hold" if cert["holds"] else
                                                        f"{sum(not c['holds'] for c in cert['checks'])} FAIL"),
    ]
    width = max(len(c["name"]) for c in cert["checks"])
    for c in cert["checks"]:
        mark = "ok  " if c["holds"] else "FAIL"
        lines.append(f"  {mark} {c['name']:<{width}}  {c['lhs']} {c['op']} {c['rhs']}   {c['detail']}")
    if ev is not None:
        size = ev["model_size"]
        lines += [
            "",
            f"Evidence: {ev['status']}, objective {ev['objective']} / bound {ev['best_bound']} ({_proof(ev)}); {ev['solver']}; "
            f"{ev['candidates']} layouts" + (f", {size['variables']} variables, {size['constraints']} constraints" if size else "")
            + (f"; {timing}" if timing else ""),
        ]
        if ev.get("certificate_check"):
            lines.append(f"Optimality certificate: {ev['certificate_check']}")
        if ev.get("solver_fault"):
            lines.append(f"SOLVER FAULT: {ev['solver_fault']}")
    return "\n".join(lines) + "\n"


def stage_shares(layers: list[int], decode_ns: list[int], stages: list[dict[str, Any]]) -> list[str]:
    """Each pipeline stage's share of the decode step time and of the bytes placed on its GPUs (weights +
    KV cache + activations): what a review's "within 1% across GPUs" reads, and what the balance rules
    (``targets.max_compute_imbalance_pct``, ``max_memory_imbalance_pct``) judge in integers. None for one
    stage. Percentages for people only."""
    if len(layers) < 2 or len(decode_ns) != len(layers) or len(stages) != len(layers):
        return []
    placed = [st["weights_bytes"] + st["kv_cache_bytes"] + st["activation_bytes"] for st in stages]
    total_ns, total_bytes = sum(decode_ns) or 1, sum(placed) or 1
    return ["  load per stage (decode step; weights + KV cache + activations per GPU):"] + [
        f"    stage {i}: {n} layers, {100 * t / total_ns:.1f}% of compute ({t / 1e6:.3f} ms), "
        f"{100 * b / total_bytes:.1f}% of memory ({human_bytes(b)})"
        for i, (n, t, b) in enumerate(zip(layers, decode_ns, placed))]


def _proof(ev: dict[str, Any]) -> str:
    if not ev["proved_optimal"]:
        return (f"NOT proved optimal: the search stopped at its limit; the optimum may be up to "
                f"{ev['gap_ns'] / 1e9:.6g} s lower in {ev['objective_kind']}")
    checked = {None: "", "INFEASIBLE": "; double-checked: objective <= best - 1 is INFEASIBLE"}.get(
        ev["double_check"], f"; double check inconclusive ({ev['double_check']})")
    return "proved optimal" + checked


def render_markdown(document: dict[str, Any], runner_up: dict[str, Any] | None = None) -> str:
    """The plan for review, as Markdown tables; with ``runner_up`` (the best plan on another layout) a
    "Why this plan" section says which term decides between them."""
    sc, plan, est, mem, cert, ev = (document[k] for k in ("scenario", "plan", "estimate", "memory", "certificate", "evidence"))
    shares = stage_shares(plan["layers_per_stage"], est["decode_stage_ns"], mem["stages"])
    out = [
        f"# Plan: {sc['name']}",
        "",
        sc.get("description") or "",
        "",
        "| TP | PP | DP | EP | ETP | EDP | instances | batch/replica | layers per stage |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        f"| {plan['tp']} | {plan['pp']} | {plan['dp']} | {plan['ep']} | {plan['etp']} | {plan['edp']} | {plan['instances']} "
        f"| {plan['batch_per_replica']} | {plan['layers_per_stage']} |",
        "",
        "## Estimate",
        "",
        "| TTFT (s) | TPOT (s) | request latency (s) | output tokens/s | per GPU |",
        "|---:|---:|---:|---:|---:|",
        f"| {est['ttft_s']:.4f} | {est['tpot_s']:.5f} | {est['request_latency_s']:.3f} | {est['output_tokens_per_s']:,.0f} "
        f"| {est['output_tokens_per_s_per_gpu']:,.0f} |",
        "",
        *([f"TTFT model: {est['ttft_model_text']}.", ""] if "ttft_model_text" in est else []),
        f"Calibration: {est['calibration']['text']}.",
        "",
        "## Memory per GPU (bytes)",
        "",
        "| stage | dense layers | MoE layers | weights | KV cache | activations | reserve | CUDA graphs | comm buffers | total | cap | KV capacity (tokens) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {s['stage']} | {s['dense_layers']} | {s['moe_layers']} | {s['weights_bytes']} | {s['kv_cache_bytes']} "
            f"| {s['activation_bytes']} | {s['reserve_bytes']} | {s['cuda_graph_bytes']} | {s['comm_buffer_bytes']} "
            f"| {s['total_bytes']} | {mem['cap_bytes']} | {s['kv_cache_capacity_tokens']} |"
            for s in mem["stages"]
        ],
        *(["", "## Load per stage", "", *[f"- {line.strip()}" for line in shares[1:]]] if shares else []),
        "",
        "## Certificate",
        "",
        "| rule | formula | lhs | op | rhs | holds |",
        "|---|---|---:|:---:|---:|:---:|",
        *[f"| `{c['name']}` | `{c['formula']}` | {c['lhs']} | {c['op']} | {c['rhs']} | {'yes' if c['holds'] else '**NO**'} |"
          for c in cert["checks"]],
    ]
    if ev is not None:
        out += ["", "## Evidence", "", f"- status: {ev['status']}; {_proof(ev)}",
                f"- objective {ev['objective']}, best bound {ev['best_bound']} ({ev['objective_encoding']}, {ev['objective_kind']})",
                f"- solver: {ev['solver']}; parameters: {ev['parameters']}; model size: {ev['model_size']}; "
                f"{ev['candidates']} layouts"]
    if runner_up is not None:
        out += ["", *why_this_plan(document, runner_up)]
    return "\n".join(out) + "\n"


def _sizes(plan: dict[str, Any]) -> str:
    return " ".join(f"{k.upper()} {plan[k]}" for k in ("tp", "pp", "dp", "ep", "etp", "edp"))


def why_this_plan(document: dict[str, Any], runner_up: dict[str, Any]) -> list[str]:
    """Markdown lines comparing a plan with the runner-up: the objective gap, which of TTFT and the
    (OSL - 1) TPOT steps decides it, and the per-layer operators that differ most in that phase.

    Request latency = TTFT + (OSL - 1) x TPOT (``cost.estimate``), so the two contributions add up to the
    gap exactly (integer ns).
    """
    a, b = document["estimate"], runner_up["estimate"]
    kind = document["evidence"]["objective_kind"] if document.get("evidence") else "request_latency"
    steps = max(document["scenario"]["workload"]["output_tokens"] - 1, 0)
    d_ttft, d_tpot = b["ttft_ns"] - a["ttft_ns"], b["tpot_ns"] - a["tpot_ns"]
    metric = {"ttft": ("TTFT", "ttft_ns"), "tpot": ("TPOT", "tpot_ns")}.get(kind, ("request latency", "request_latency_ns"))
    gap = b[metric[1]] - a[metric[1]]
    lines = [
        "## Why this plan",
        "",
        f"It beats the runner-up ({_sizes(runner_up['plan'])}) by {gap / 1e6:,.3f} ms of {metric[0]}"
        + (f" ({100 * gap / b[metric[1]]:.2f}%)." if b[metric[1]] else "."),
        "",
        "| | this plan | runner-up | runner-up minus this |",
        "|---|---:|---:|---:|",
        f"| TTFT (ms) | {a['ttft_ns'] / 1e6:.3f} | {b['ttft_ns'] / 1e6:.3f} | {d_ttft / 1e6:+.3f} |",
        f"| TPOT (ms) | {a['tpot_ns'] / 1e6:.4f} | {b['tpot_ns'] / 1e6:.4f} | {d_tpot / 1e6:+.4f} |",
        f"| request latency (s) | {a['request_latency_ns'] / 1e9:.4f} | {b['request_latency_ns'] / 1e9:.4f} "
        f"| {(b['request_latency_ns'] - a['request_latency_ns']) / 1e9:+.4f} |",
        f"| output tokens/s per GPU | {a['output_tokens_per_s_per_gpu']:,.1f} | {b['output_tokens_per_s_per_gpu']:,.1f} "
        f"| {b['output_tokens_per_s_per_gpu'] - a['output_tokens_per_s_per_gpu']:+,.1f} |",
        "",
    ]
    if kind == "ttft" or (kind == "request_latency" and d_ttft > steps * d_tpot):
        phase = "prefill"
        lines.append(f"Deciding term: TTFT ({d_ttft / 1e6:+.3f} ms), against {steps} decode steps x "
                     f"{d_tpot / 1e6:+.4f} ms = {steps * d_tpot / 1e6:+.3f} ms of TPOT.")
    else:
        phase = "decode"
        if kind == "tpot":
            lines.append(f"Deciding term: TPOT ({d_tpot / 1e6:+.4f} ms).")
        else:
            lines.append(f"Deciding term: TPOT, {steps} decode steps x {d_tpot / 1e6:+.4f} ms = {steps * d_tpot / 1e6:+.3f} ms, "
                         f"against TTFT {d_ttft / 1e6:+.3f} ms.")
    diffs = []
    for name, ops in a["breakdown_per_layer_s"].items():
        if name.startswith(phase) and name in b["breakdown_per_layer_s"]:
            other = b["breakdown_per_layer_s"][name]
            diffs += [(other[op] - t, name, op) for op, t in ops.items() if op in other]
    diffs = sorted((d for d in diffs if abs(d[0]) >= 5e-9), key=lambda d: (-abs(d[0]), d[1], d[2]))
    if diffs:
        lines += ["", f"Per layer, {phase}: the runner-up's operators minus this plan's, largest first:", ""]
        lines += [f"- `{name}.{op}`: {delta * 1e6:+.2f} us" for delta, name, op in diffs[:4]]
    else:
        lines += ["", f"Every {phase} layer costs the same in both plans: the difference is in how the layers are staged."]
    pp_a, pp_b = document["plan"]["pp"], runner_up["plan"]["pp"]
    if pp_a != pp_b or not diffs:
        stages = f"{phase}_stage_ns"
        lines += ["", f"Pipeline: PP {pp_a} (layers {document['plan']['layers_per_stage']}, slowest {phase} stage "
                      f"{max(a[stages]) / 1e6:.3f} ms) vs PP {pp_b} (layers {runner_up['plan']['layers_per_stage']}, slowest "
                      f"{max(b[stages]) / 1e6:.3f} ms); decode micro-batches {a['decode_microbatches']} vs {b['decode_microbatches']}."]
    return lines


_NODE_COLOURS = ("#dbe9f6", "#fde2c8", "#d9f0d3", "#f3d9f0", "#fff3b0", "#e0e0e0", "#cde7e2", "#f6d5d5")


def render_dot(document: dict[str, Any]) -> str:
    """The deployment graph in Graphviz DOT: one box per rank (its node, local GPU and coordinates),
    grouped by pipeline stage and filled by physical node; edges for the communication of serving:
    TP all-reduce rings (blue), EP all-to-all groups (orange, dashed) and PP point-to-point sends (black,
    directed, stage s to s + 1). DP replicas do not communicate at inference, so they have no edges.
    Render with ``dot -Tsvg plan.dot > plan.svg``.
    """
    plan, ranks, groups = document["plan"], document["rank_map"]["ranks"], document["rank_map"]["groups"]
    name = document["scenario"]["name"]
    out = [
        f'digraph "{name}" {{',
        f'  label="{name}: {_sizes(plan)}, engine {plan["engine"]}"; labelloc=t; fontsize=16;',
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10];',
        '  edge [fontname="Helvetica", fontsize=9];',
    ]
    by_stage: dict[int, list[dict[str, Any]]] = {}
    for r in ranks:
        by_stage.setdefault(r["pp_rank"], []).append(r)
    for stage, members in sorted(by_stage.items()):
        layers = plan["layers_per_stage"][stage] if stage < len(plan["layers_per_stage"]) else "?"
        out.append(f'  subgraph cluster_stage_{stage} {{')
        out.append(f'    label="PP stage {stage}: {layers} layers"; style=dashed;')
        for r in members:
            colour = _NODE_COLOURS[r["node"] % len(_NODE_COLOURS)]
            out.append(f'    r{r["rank"]} [label="rank {r["rank"]}\\nnode {r["node"]} gpu {r["local_gpu"]}\\n'
                       f'tp {r["tp_rank"]} dp {r["dp_rank"]} ep {r["ep_rank"]}", fillcolor="{colour}"];')
        out.append("  }")
    for kind, style in (("tp", 'color="#1f77b4", dir=none, label="TP"'), ("ep", 'color="#ff7f0e", style=dashed, dir=none, label="EP"')):
        size = plan[kind]
        if size <= 1:
            continue
        for group in groups[kind]:
            ring = group + group[:1] if len(group) > 2 else group
            for a, b in zip(ring, ring[1:]):
                out.append(f"  r{a} -> r{b} [{style}];")
    for group in groups["pp"]:
        for a, b in zip(group, group[1:]):
            out.append(f'  r{a} -> r{b} [color=black, penwidth=1.5, label="PP"];')
    out.append("}")
    return "\n".join(out) + "\n"


def model_summary(scenario: Scenario) -> str:
    return _model_line(scenario)
