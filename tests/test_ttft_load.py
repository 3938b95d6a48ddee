"""Issue 13 item 4: TTFT under load. A prompt is prefilled in chunks of ``max_num_batched_tokens`` minus the
decode tokens of the step (vLLM V1, TensorRT-LLM mix them; SGLang runs prefill first), each step also
carrying the batch's decode step and the other prompts' prefill share; ``engine.ttft_model: isolated``
keeps the old figure (``cost.integer_costs``)."""

from __future__ import annotations

import copy
import json

import pytest

from conftest import BASE, deep_merge
from optimizer.errors import Infeasible
from optimizer.inputs.loader import scenario_from_dict
from optimizer.model.cost import integer_costs
from optimizer.model.parallel import Layout, Plan
from optimizer.search.certify import check_optimality
from optimizer.search.exhaustive import optimize_exhaustive
from optimizer.search.solve import optimize
from optimizer.search.verify import certify
from optimizer.outputs.report import plan_document, render_markdown

TP8 = Layout(tp=8, pp=1, dp=1, ep=8, etp=1, edp=1)


def _scenario(*, concurrency: int = 64, isl: int = 2048, osl: int = 256, budget: int = 8192, engine: str = "vllm",
              **engine_fields) -> object:
    return scenario_from_dict({
        "name": "t", "cluster": {"gpu": "h100-sxm", "num_nodes": 1, "gpus_per_node": 8}, "model": "Qwen3-30B-A3B",
        "workload": {"concurrent_sequences": concurrency, "input_tokens": isl, "output_tokens": osl},
        "engine": {"name": engine, "enable_expert_parallel": engine == "vllm", "max_num_batched_tokens": budget, **engine_fields}})


def _ttft(scenario, layout: Layout = TP8) -> int:
    return integer_costs(scenario=scenario, layouts=(layout,)).ttft_ns(0)


def test_loaded_ttft_exceeds_isolated_and_equals_it_at_concurrency_one():
    for concurrency in (8, 64):
        assert _ttft(_scenario(concurrency=concurrency)) > _ttft(_scenario(concurrency=concurrency, ttft_model="isolated"))
    assert _ttft(_scenario(concurrency=1)) == _ttft(_scenario(concurrency=1, ttft_model="isolated"))


def test_loaded_ttft_grows_with_concurrency_and_with_isl_over_the_budget():
    by_concurrency = [_ttft(_scenario(concurrency=b)) for b in (1, 4, 16, 64, 256)]
    assert by_concurrency == sorted(by_concurrency) and len(set(by_concurrency)) == len(by_concurrency)
    by_budget = [_ttft(_scenario(budget=c)) for c in (8192, 2048, 1024, 512)]  # ISL / C = 0.25 .. 4
    assert by_budget == sorted(by_budget) and len(set(by_budget)) == len(by_budget)
    by_isl = [_ttft(_scenario(isl=i, budget=1024)) for i in (512, 1024, 2048, 4096)]
    assert by_isl == sorted(by_isl) and len(set(by_isl)) == len(by_isl)


def test_a_hand_computed_loaded_ttft():
    """vLLM, B = 64 per replica, PP 1 (one micro-batch: d = 64 decode tokens), C = 1024, ISL 2048, OSL 256:
    p = 1024 - 64 = 960 prompt tokens per step, n = ceil(2048 / 960) = 3 steps of 960 tokens; prefill share
    = ceil(64 x 3 x chunk / 256); TTFT = 3 x (chunk + decode step less its step overhead + share): chunk and
    decode tokens are one forward, which pays the step overhead once."""
    sc = _scenario(concurrency=64, isl=2048, osl=256, budget=1024)
    t = integer_costs(scenario=sc, layouts=(TP8,))
    assert (t.ttft_chunks[0], t.chunk_tokens[0], t.ttft_rides_decode[0], t.ttft_waits[0]) == (3, 960, 1, 1)
    chunk, decode = t.phase_total_ns(t.chunk, 0), t.phase_total_ns(t.decode, 0)
    share = -(-64 * 3 * chunk // 256)
    assert t.prefill_share_ns[0] == share
    assert t.ttft_ns(0) == 3 * (chunk + decode - int(t.decode.stage_extra_ns[0]) + share)
    # a 960-token chunk costs less than the 2048-token prompt, three of them more (weights read three times)
    isolated = t.phase_total_ns(t.prefill, 0)
    assert chunk < isolated < 3 * chunk


def test_engines_schedule_the_prompt_as_their_schedulers_do():
    # SGLang runs a prefill batch before any decode batch: the prompt's steps carry no decode tokens
    sglang = integer_costs(scenario=_scenario(engine="sglang", budget=1024), layouts=(Layout(tp=8, pp=1, dp=1, ep=1, etp=8, edp=1),))
    assert (sglang.ttft_chunks[0], sglang.chunk_tokens[0], sglang.ttft_rides_decode[0], sglang.ttft_waits[0]) == (2, 1024, 0, 1)
    # TensorRT-LLM: in-flight batching mixes decode in; chunked prefill off by default, on when asked
    trt = integer_costs(scenario=_scenario(engine="tensorrt-llm", budget=1024), layouts=(TP8,))
    assert (trt.ttft_chunks[0], trt.chunk_tokens[0], trt.ttft_rides_decode[0]) == (1, 2048, 1)
    trt = integer_costs(scenario=_scenario(engine="tensorrt-llm", budget=1024, chunked_prefill=True), layouts=(TP8,))
    assert (trt.ttft_chunks[0], trt.chunk_tokens[0]) == (3, 960)
    # vLLM with chunked prefill off: one step of the whole prompt
    off = integer_costs(scenario=_scenario(budget=1024, chunked_prefill=False), layouts=(TP8,))
    assert (off.ttft_chunks[0], off.chunk_tokens[0]) == (1, 2048)
    # Megatron: a static batch, isolated by default; loaded when asked
    mega = _scenario(engine="megatron")
    assert integer_costs(scenario=mega, layouts=(TP8,)).ttft_model == "isolated"
    assert integer_costs(scenario=_scenario(engine="megatron", ttft_model="loaded"), layouts=(TP8,)).ttft_model == "loaded"


def _small(**engine) -> dict:
    return deep_merge(BASE, {"workload": {"concurrent_sequences": 32, "input_tokens": 1024, "output_tokens": 64},
                             "engine": {"name": "vllm", "max_num_batched_tokens": 512, **engine}})


def _index(solution) -> int:
    return solution.tables.index(solution.plan.layout, solution.plan.batch_per_replica)


def test_the_plan_says_which_ttft_model_it_used():
    for model in ("loaded", "isolated"):
        sc = scenario_from_dict(_small(ttft_model=model))
        solution = optimize(sc)
        doc = plan_document(scenario=sc, plan=solution.plan, certificate=certify(sc, solution.plan, solution.tables),
                            table=solution.tables.cost, index=_index(solution), evidence=solution.evidence)
        assert doc["estimate"]["ttft_model"] == model
        assert doc["estimate"]["ttft_model_text"].startswith(model)
        assert f"TTFT model: {model}" in render_markdown(json.loads(json.dumps(doc)))


def test_a_ttft_target_the_isolated_model_meets_and_the_loaded_one_misses_is_refused():
    isolated = scenario_from_dict(_small(ttft_model="isolated"))
    best = optimize(scenario_from_dict(deep_merge(_small(ttft_model="isolated"), {"search": {"objective": "ttft"}})))
    target_s = certify(best.scenario, best.plan, best.tables).estimate.ttft_ns / 1e9  # the best isolated TTFT, exactly met
    data = deep_merge(_small(ttft_model="isolated"), {"targets": {"ttft_s": target_s}})
    met = optimize(scenario_from_dict(data))
    assert certify(met.scenario, met.plan, met.tables).holds
    loaded = copy.deepcopy(data)
    loaded["engine"]["ttft_model"] = "loaded"
    with pytest.raises(Infeasible) as refused:
        optimize(scenario_from_dict(loaded))
    assert any("ttft_target" in conflict for conflict in refused.value.conflicts)
    cert = certify(scenario_from_dict(loaded), met.plan)
    assert not cert.holds and [c.name for c in cert.failing] == ["ttft_target"]
    assert isolated.engine.ttft_model.value == "isolated"


@pytest.mark.parametrize("seed", range(6))
def test_cp_sat_equals_the_oracle_and_the_certificate_holds_under_the_loaded_ttft(seed):
    import random
    rng = random.Random(seed)
    data = deep_merge(BASE, {
        "workload": {"concurrent_sequences": rng.choice([1, 3, 16, 48]), "input_tokens": rng.choice([128, 1024, 3000]),
                     "output_tokens": rng.choice([8, 64, 256])},
        "engine": {"name": rng.choice(["vllm", "sglang", "tensorrt-llm"]), "max_num_batched_tokens": rng.choice([64, 300, 2048]),
                   "chunked_prefill": rng.choice([None, True, False]), "ttft_model": "loaded"},
        "search": {"objective": rng.choice(["request_latency", "ttft", "output_tokens_per_s_per_gpu"])},
        "targets": {"ttft_s": rng.choice([None, 2e-3, 2e-2])},
    })
    sc = scenario_from_dict(data)
    try:
        cp = optimize(sc)
    except Infeasible:
        with pytest.raises(Infeasible):
            optimize_exhaustive(sc)
        return
    ex = optimize_exhaustive(sc)
    assert cp.evidence.proved_optimal and cp.plan == ex.plan and cp.evidence.objective == ex.evidence.objective
    assert check_optimality(sc, cp.plan, cp.evidence.certificate).holds
    assert certify(sc, cp.plan, cp.tables).estimate.ttft_ns == cp.tables.cost.ttft_ns(_index(cp))
    assert isinstance(cp.plan, Plan)


def test_a_replica_whose_prompts_outrun_the_token_budget_is_called_overloaded():
    """64 sequences, ISL 32768, OSL 512: 64 x 32768 / 512 = 4096 prompt tokens join per step, against 2048 -
    64 = 1984 admitted: no steady state; the plan says so (its TTFT is a lower bound). At ISL 2048 it is not."""
    from optimizer.outputs.report import ttft_section
    for isl, overloaded in ((32768, True), (2048, False)):
        sc = _scenario(concurrency=64, isl=isl, osl=512, budget=2048)
        section = ttft_section(sc, integer_costs(scenario=sc, layouts=(TP8,)), 0)
        assert section["ttft_overloaded"] is overloaded
        assert ("OVERLOADED" in section["ttft_model_text"]) is overloaded


@pytest.mark.parametrize("layout", [TP8, Layout(tp=4, pp=2, dp=1, ep=4, etp=1, edp=1)])
def test_a_chunk_and_the_decode_step_it_rides_with_pay_one_step_overhead_per_stage(layout):
    """A prompt's chunk and the running decodes are one scheduler step (one forward per stage), so raising
    the calibration's step overhead by 1 ms raises the loaded TTFT by chunks x PP x 1 ms (plus what the other
    prompts' prefill share grows by), not twice that (review of issue 16: the riding decode step paid its own
    overhead again)."""
    from dataclasses import replace

    from optimizer.model.calibration import shipped_calibration, with_step_fit

    sc = _scenario(concurrency=64)
    shipped = shipped_calibration()
    fit = shipped.for_gpu("h100-sxm", shipped.stack_for("vllm"), "vllm").step
    slow = with_step_fit(shipped, calibration_id="t", gpu="h100-sxm", engine="vllm", stack="overhead",
                         fit=replace(fit, step_overhead_us=fit.step_overhead_us + 1000.0), what="t")
    base = integer_costs(scenario=sc, layouts=(layout,), calibration=shipped)
    more = integer_costs(scenario=sc, layouts=(layout,), calibration=slow)
    assert base.ttft_rides_decode[0] == 1 and base.ttft_chunks[0] >= 1
    extra = more.ttft_ns(0) - base.ttft_ns(0)
    share = base.ttft_waits[0] * (more.prefill_share_ns[0] - base.prefill_share_ns[0])  # the queue's share, apart
    expected = base.ttft_chunks[0] * (layout.pp * 1_000_000 + share)
    assert abs(extra - expected) <= base.ttft_chunks[0] * layout.pp * 2  # 1 ns rounding per charge
