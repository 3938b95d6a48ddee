"""Issue 13 item 6: deep pipelines are not free. Every stage runs its own forward step per micro-batch (its
step overhead), and a stage's GPU takes part in each micro-batch's send/recv before it takes the next, so the
decode cycle is ``max(m x (slowest stage + hop), all stages + (PP - 1) hops)`` with each stage's own overhead
inside it (``cost.CostTable.decode_cycle_ns``), and the solver, the certificate and the estimate agree."""

from __future__ import annotations

from dataclasses import replace

import pytest

from optimizer.inputs.loader import scenario_from_dict, scenario_from_flags
from optimizer.model.calibration import shipped_calibration
from optimizer.model.cost import estimate, integer_costs
from optimizer.model.parallel import Layout


def _llama(batch: int = 64):
    return scenario_from_dict(scenario_from_flags(model="Llama-3.1-70B", gpu="h100", gpus=16, isl=2048, osl=256)
                              | {"workload": {"concurrent_sequences": batch, "input_tokens": 2048, "output_tokens": 256}})


def _with_step_overhead(scenario, us: float):
    """The shipped calibration with the scenario's stack's per-step overhead set to ``us``."""
    cal = shipped_calibration()
    stack = cal.stack_for(scenario.engine.name.value, scenario.engine.calibration_stack)
    gpu = scenario.cluster.gpu.name
    entry = cal.gpus[gpu]
    fit = replace(cal.for_gpu(gpu, stack).step, step_overhead_us=us)
    return replace(cal, gpus={**cal.gpus, gpu: replace(entry, steps={**entry.steps, stack: fit})})


def _even(pp: int, layers: int = 80) -> list[tuple[int, int]]:
    return [(layers // pp, 0)] * pp


def test_every_stage_pays_its_own_step_overhead_per_micro_batch():
    """PP 16 pays the step overhead 16 times per micro-batch, PP 1 once; a wider overhead moves TPOT by
    ``m x overhead`` where micro-batches overlap (the slowest stage's own step, every micro-batch)."""
    s = _llama()
    layouts = (Layout(tp=1, pp=1, dp=1, ep=1, etp=1, edp=1), Layout(tp=1, pp=16, dp=1, ep=1, etp=1, edp=1))
    low = integer_costs(scenario=s, layouts=layouts, calibration=_with_step_overhead(s, 0.0))
    high = integer_costs(scenario=s, layouts=layouts, calibration=_with_step_overhead(s, 500.0))
    for c, pp in enumerate((1, 16)):
        grows = high.phase_total_ns(high.decode, c) - low.phase_total_ns(low.decode, c)
        assert grows == pytest.approx(pp * 500_000, abs=pp)  # ns, up to the per-term rounding
        e_low = estimate(table=low, i=c, kinds=_even(pp), concurrent_sequences=64, output_tokens=256)
        e_high = estimate(table=high, i=c, kinds=_even(pp), concurrent_sequences=64, output_tokens=256)
        m = high.microbatches[c]
        assert m == min(pp, 64)
        assert e_high.tpot_ns - e_low.tpot_ns >= m * 500_000 - pp  # every micro-batch pays the stage's overhead


def test_the_overlapped_cycle_pays_a_hop_per_micro_batch():
    """With 16 micro-batches in flight each stage sends (or receives) each one: TPOT is at least ``m x
    (slowest stage + hop)``; before, ``m x slowest`` priced the hops of a deep pipeline at zero."""
    s = _llama()
    table = integer_costs(scenario=s, layouts=(Layout(tp=1, pp=16, dp=1, ep=1, etp=1, edp=1),))
    e = estimate(table=table, i=0, kinds=_even(16), concurrent_sequences=64, output_tokens=256)
    hop = int(table.decode.boundary_ns[0])
    assert hop > 20_000  # ns: an NCCL send/recv is tens of microseconds, not free
    own = int(table.decode.stage_extra_ns[0])
    assert e.tpot_ns - table.prefill_share_ns[0] == max(16 * (max(e.decode_stage_ns) + own + hop),
                                                        sum(e.decode_stage_ns) + 16 * own + 15 * hop)
    assert e.tpot_ns - table.prefill_share_ns[0] >= 16 * max(e.decode_stage_ns) + 16 * hop


def test_an_inter_node_hop_is_no_faster_than_an_nvlink_hop():
    """PP across nodes: the hop costs at least the NCCL send/recv setup measured on the node (the scenario's
    5-6 us inter-node alpha alone made a cross-node hop cheaper than an NVLink one)."""
    s = _llama()
    one_node = integer_costs(scenario=s, layouts=(Layout(tp=4, pp=2, dp=1, ep=1, etp=4, edp=1),))
    two_nodes = integer_costs(scenario=s, layouts=(Layout(tp=8, pp=2, dp=1, ep=1, etp=8, edp=1),))
    assert int(two_nodes.decode.boundary_ns[0]) >= int(one_node.decode.boundary_ns[0])


def test_the_solver_prices_deep_pipelines_as_the_estimate_does():
    """CP-SAT (with its certificate) and the enumeration oracle agree on a scenario whose optimum is a deep
    pipeline (DeepSeek-V3 on 64 H100, the one-line form), and the proved objective is the request latency
    ``cost.estimate`` gives the plan's own split: the per-micro-batch hop and per-stage overhead are priced
    the same way on every side."""
    from optimizer.model.memory import layer_kinds
    from optimizer.search.exhaustive import optimize_exhaustive
    from optimizer.search.solve import optimize

    s = scenario_from_dict(scenario_from_flags(model="DeepSeek-V3", gpu="h100", gpus=64, isl=2048, osl=512))
    solved, oracle = optimize(s, time_limit_s=60), optimize_exhaustive(s)
    assert solved.evidence.proved_optimal and solved.evidence.solver_fault is None
    assert solved.plan == oracle.plan
    assert solved.plan.layout.pp > 1
    table = solved.tables.cost
    c = table.layouts.index(solved.plan.layout)
    kinds = layer_kinds(model=s.model, layers_per_stage=solved.plan.layers_per_stage)
    e = estimate(table=table, i=c, kinds=kinds, concurrent_sequences=s.workload.concurrent_sequences,
                 output_tokens=s.workload.output_tokens)
    hop, m = int(table.decode.boundary_ns[c]), table.microbatches[c]
    assert e.tpot_ns >= m * (max(e.decode_stage_ns) + hop)  # stage_ns: the layers, the overhead on top
    assert solved.evidence.objective // solved.tables.candidates == e.request_latency_ns
