"""Refit a GPU's step parameters to serving benchmarks of one plan (``optimize calibrate``).

A measured row is one benchmark run of the plan (``inputs/bench_results.py``): the scenario's model, its
ISL and OSL, a concurrency, and the measured mean TTFT, TPOT and output tokens/s. The prediction for a
row is the project's own estimate (``cost.integer_costs`` + ``cost.estimate``, as ``optimize estimate``
computes it) of that plan with ``concurrent_sequences`` = the row's concurrency and the batch per replica
``ceil(concurrency / DP)``.

What is fitted: the three step parameters serving rows identify (``calibration.StepFit``):
``sustained_compute`` (prefill, so TTFT), ``sustained_memory`` (decode weight and KV streaming, so TPOT) and
``step_overhead_us`` (a fixed cost per forward step, seen in both); the others keep the prior's values.
The prior and starting point is the shipped fit of the scenario's stack on its GPU. Residuals are the
log errors of TTFT and TPOT per row (output tokens/s follows from them and the concurrency, so it is
reported, not fitted) plus a pull towards the prior, ``PRIOR_WEIGHT x log((value + offset) / (prior +
offset))`` per parameter (``OFFSET``), so that parameters the rows hardly see stay where the shipped fit put them. Least squares
in log space with ``model/fit.py``, the same core as ``scripts/calibrate.py``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace

import numpy as np

from optimizer.errors import OptimizerError
from optimizer.inputs.bench_results import ServingRow
from optimizer.inputs.scenario import Objective, Scenario
from optimizer.model.calibration import Calibration, StepFit, calibration_for, with_step_fit
from optimizer.model.cost import estimate, integer_costs
from optimizer.model.fit import least_squares_fit, log_error
from optimizer.model.memory import layer_kinds
from optimizer.model.parallel import Plan, batch_per_replica

FITTED = ("sustained_compute", "sustained_memory", "step_overhead_us")
LOWER = {"sustained_compute": 0.05, "sustained_memory": 0.05, "step_overhead_us": 0.0}
# Fitted as log(value + offset): an overhead near 0 (the shipped TensorRT-LLM fit has 0.01 us) would
# otherwise sit where its log has no slope; 100 us is a CUDA-graph-replayed decode step's order.
OFFSET = {"sustained_compute": 0.0, "sustained_memory": 0.0, "step_overhead_us": 100.0}
UPPER = {"sustained_compute": 4.0, "sustained_memory": 4.0, "step_overhead_us": 1e6}
PRIOR_WEIGHT = 0.01  # per parameter, in log space, against a row's log error of weight 1
DIFF_STEP = 1e-2  # 1% of a parameter per finite-difference step: the estimate is rounded to whole nanoseconds
LENGTH_TOLERANCE = 0.05  # a row's mean ISL / OSL within 5% of the scenario's (vLLM re-aligns prompts to the server tokenizer)


@dataclass(frozen=True)
class Prediction:
    ttft_ms: float
    tpot_ms: float
    output_tokens_per_s: float


@dataclass(frozen=True)
class ServingFit:
    """The refit: the prior and fitted step parameters, and per row the predictions before and after and
    the leave-one-out prediction (fitted without that row; None with a single row)."""

    gpu: str
    engine: str
    base_stack: str
    base_calibration_id: str
    prior: StepFit
    fitted: StepFit
    rows: tuple[ServingRow, ...]
    before: tuple[Prediction, ...]
    after: tuple[Prediction, ...]
    left_out: tuple[Prediction | None, ...]


_HF_REPO = re.compile(r"huggingface\.co/([A-Za-z0-9][\w.-]*/[\w.-]+)")


def same_model(measured: str, scenario: Scenario) -> bool:
    """Whether a tool's model name (a Hugging Face repo id or a local path) is the scenario's model: its last
    path part, case-insensitively, is the scenario's model name or the repo id in ``model.source``, or
    one of them followed by a ``-`` suffix (``Llama-3.1-70B-Instruct`` for ``Llama-3.1-70B``: a fine-tune
    of the same architecture, which is all the estimate sees)."""
    name = measured.lower().rstrip("/").rsplit("/", 1)[-1]
    bases = {scenario.model.name.lower().rsplit("/", 1)[-1]}
    bases |= {m.lower().rsplit("/", 1)[-1] for m in _HF_REPO.findall(scenario.model.source or "")}
    return any(name == b or name.startswith(b + "-") for b in bases)


def row_problems(scenario: Scenario, rows: list[ServingRow]) -> list[str]:
    """Why rows do not measure ``scenario``: another model (``same_model``, where the tool records it:
    vLLM's ``model_id``, genai-perf's ``model_names``; SGLang's result has none), or a mean ISL / OSL more
    than ``LENGTH_TOLERANCE`` from the scenario's."""
    w = scenario.workload
    problems = []
    for r in rows:
        where = f"{r.file}" + (f" line {r.line}" if r.line else "")
        if r.model is not None and not same_model(r.model, scenario):
            problems.append(f"{where}: model {r.model!r} is not the scenario's model {scenario.model.name!r}")
        for what, measured, planned in (("input tokens (ISL)", r.input_tokens, w.input_tokens),
                                        ("output tokens (OSL)", r.output_tokens, w.output_tokens)):
            if abs(measured - planned) > LENGTH_TOLERANCE * planned:
                problems.append(f"{where}: mean {what} {measured:g} is not the scenario's {planned} (within "
                                f"{LENGTH_TOLERANCE:.0%}); benchmark with the scenario's lengths (optimize bench-command)")
    return problems


def predict(scenario: Scenario, plan: Plan, row: ServingRow, calibration: Calibration) -> Prediction:
    """The estimate of ``plan`` at ``row``'s concurrency with ``calibration`` (ms, ms, tokens/s)."""
    workload = scenario.workload.model_copy(update={"concurrent_sequences": row.concurrency})
    search = scenario.search
    if search.objective.chooses_batch:  # the row fixes the concurrency: the batch follows from it
        search = search.model_copy(update={"objective": Objective.REQUEST_LATENCY})
    sc = scenario.model_copy(update={"workload": workload, "search": search})
    batch = batch_per_replica(concurrent_sequences=row.concurrency, dp=plan.layout.dp)
    table = integer_costs(scenario=sc, layouts=(plan.layout,), batches=(batch,), calibration=calibration)
    est = estimate(table=table, i=0, kinds=layer_kinds(model=sc.model, layers_per_stage=plan.layers_per_stage),
                   concurrent_sequences=row.concurrency, output_tokens=workload.output_tokens)
    return Prediction(ttft_ms=est.ttft_ns / 1e6, tpot_ms=est.tpot_ns / 1e6, output_tokens_per_s=est.output_tokens_per_s)


def _calibration(base: Calibration, scenario: Scenario, fit: StepFit) -> Calibration:
    return with_step_fit(base, calibration_id="fitting", gpu=scenario.cluster.gpu.name, engine=scenario.engine.name.value,
                         stack="fitting", fit=fit, what="being fitted")


def _fit(scenario: Scenario, plan: Plan, rows: list[ServingRow], base: Calibration, prior: StepFit) -> StepFit:
    offset = np.array([OFFSET[name] for name in FITTED])
    x_prior = np.log([max(getattr(prior, name), LOWER[name]) + OFFSET[name] for name in FITTED])
    lower = np.log([LOWER[name] + OFFSET[name] for name in FITTED])
    upper = np.log([UPPER[name] + OFFSET[name] for name in FITTED])
    measured = np.log([[r.ttft_ms, r.tpot_ms] for r in rows]).ravel()

    def make(x) -> StepFit:
        return replace(prior, **{name: max(float(v), LOWER[name]) for name, v in zip(FITTED, np.exp(x) - offset)})

    def residuals(x):
        cal = _calibration(base, scenario, make(x))
        predicted = [predict(scenario, plan, r, cal) for r in rows]
        log_t = log_error(np.array([[p.ttft_ms, p.tpot_ms] for p in predicted]).ravel(), 1.0)
        return np.concatenate([log_t - measured, PRIOR_WEIGHT * (x - x_prior)])

    result = least_squares_fit(residuals, np.clip(x_prior, lower, upper), lower=lower, upper=upper, diff_step=DIFF_STEP)
    return make(result.x)


def fit_serving(scenario: Scenario, plan: Plan, rows: list[ServingRow]) -> ServingFit:
    """Refit ``FITTED`` to ``rows`` of ``plan`` on ``scenario`` (see the module docstring), with the
    errors before and after and a leave-one-out prediction per row.

    Raises:
        OptimizerError: no rows, or the scenario's GPU has no calibrated entry to refine.
    """
    if not rows:
        raise OptimizerError("no measured rows to fit")
    base = calibration_for(scenario)
    stack = base.stack_for(scenario.engine.name.value, scenario.engine.calibration_stack)
    gpu = scenario.cluster.gpu.name
    if gpu not in base.gpus:
        raise OptimizerError(f"GPU {gpu!r} has no calibrated entry in {base.id}; optimize calibrate refines a calibrated "
                             f"GPU ({', '.join(sorted(base.gpus))})")
    prior = base.for_gpu(gpu, stack).step
    fitted = _fit(scenario, plan, rows, base, prior)
    before = tuple(predict(scenario, plan, r, base) for r in rows)
    after_cal = _calibration(base, scenario, fitted)
    after = tuple(predict(scenario, plan, r, after_cal) for r in rows)
    left_out: list[Prediction | None] = []
    for i, r in enumerate(rows):
        others = rows[:i] + rows[i + 1:]
        if not others:
            left_out.append(None)
            continue
        fit_i = _fit(scenario, plan, others, base, prior)
        left_out.append(predict(scenario, plan, r, _calibration(base, scenario, fit_i)))
    return ServingFit(gpu=gpu, engine=scenario.engine.name.value, base_stack=stack, base_calibration_id=base.id,
                      prior=prior, fitted=fitted, rows=tuple(rows), before=before, after=after, left_out=tuple(left_out))


def percent_errors(predicted: Prediction, row: ServingRow) -> tuple[float, float, float]:
    """``100 x (predicted - measured) / measured`` for TTFT, TPOT and output tokens/s."""
    return (100 * (predicted.ttft_ms - row.ttft_ms) / row.ttft_ms, 100 * (predicted.tpot_ms - row.tpot_ms) / row.tpot_ms,
            100 * (predicted.output_tokens_per_s - row.output_tokens_per_s) / row.output_tokens_per_s)


def mape(predictions: tuple[Prediction | None, ...], rows: tuple[ServingRow, ...]) -> float | None:
    """Mean absolute percentage error over TTFT and TPOT of every row with a prediction (None if none)."""
    errors = [abs(e) for p, r in zip(predictions, rows) if p is not None for e in percent_errors(p, r)[:2]]
    return sum(errors) / len(errors) if errors else None


def _r(value: float) -> float:
    return float(f"{value:.6g}")


def calibration_document(fit: ServingFit, *, scenario: Scenario, plan: Plan) -> dict:
    """The calibration file (``inputs/calibration_file.py``) for ``fit``: ``id`` is ``cal-`` and the first
    12 hex digits of the SHA-256 of its inputs (base calibration id, engine, GPU, plan sizes, ISL/OSL, each
    row's file digest, line and measured values), so the same measurements give the same id."""
    layout = plan.layout
    sizes = {"tp": layout.tp, "pp": layout.pp, "dp": layout.dp, "ep": layout.ep, "etp": layout.etp, "edp": layout.edp,
             "layers_per_stage": list(plan.layers_per_stage)}
    inputs = {"base": fit.base_calibration_id, "engine": fit.engine, "gpu": fit.gpu, "plan": sizes,
              "isl": scenario.workload.input_tokens, "osl": scenario.workload.output_tokens,
              "rows": [[r.sha256, r.line, r.tool, r.concurrency, r.ttft_ms, r.tpot_ms, r.output_tokens_per_s] for r in fit.rows]}
    digest = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    before, after, loo = mape(fit.before, fit.rows), mape(fit.after, fit.rows), mape(fit.left_out, fit.rows)
    rows = []
    for r, b, a, o in zip(fit.rows, fit.before, fit.after, fit.left_out):
        rows.append({
            "file": r.file.rsplit("/", 1)[-1], "sha256": r.sha256, **({"line": r.line} if r.line else {}), "tool": r.tool,
            "concurrency": r.concurrency, "input_tokens": _r(r.input_tokens), "output_tokens": _r(r.output_tokens),
            "measured": {"ttft_ms": _r(r.ttft_ms), "tpot_ms": _r(r.tpot_ms), "output_tokens_per_s": _r(r.output_tokens_per_s)},
            "before": {"ttft_ms": _r(b.ttft_ms), "tpot_ms": _r(b.tpot_ms), "output_tokens_per_s": _r(b.output_tokens_per_s)},
            "after": {"ttft_ms": _r(a.ttft_ms), "tpot_ms": _r(a.tpot_ms), "output_tokens_per_s": _r(a.output_tokens_per_s)},
            **({"left_out": {"ttft_ms": _r(o.ttft_ms), "tpot_ms": _r(o.tpot_ms)}} if o is not None else {}),
        })
    return {
        "kind": "serving-calibration",
        "id": f"cal-{digest[:12]}",
        "engine": fit.engine,
        "gpu": fit.gpu,
        "stack": f"measured-{fit.engine}-{digest[:8]}",
        "base_calibration": fit.base_calibration_id,
        "base_stack": fit.base_stack,
        "fitted_by": "optimize calibrate (optimizer/model/serving_fit.py)",
        "fitted": list(FITTED),
        "scenario": scenario.name,
        "plan": sizes,
        "step": {name: _r(getattr(fit.fitted, name)) for name in ("sustained_compute", "layer_overhead_us", "step_overhead_us",
                                                                  "collective_skew_us", "sustained_memory", "sequence_overhead_us")},
        "prior_step": {name: _r(getattr(fit.prior, name)) for name in FITTED},
        "error": {"mape_before_pct": _r(before), "mape_after_pct": _r(after),
                  "leave_one_out_mape_pct": None if loo is None else _r(loo)},
        "rows": rows,
    }

