"""A serving calibration file (``optimize calibrate --out``), named by a scenario's
``engine.calibration_file``: step parameters for one GPU and one engine, refitted to the engine's own
serving benchmarks (``vllm bench serve``, ``python -m sglang.bench_serving``, ``genai-perf profile``).

Layout (YAML, read with the strict reader of every input file):

```
kind: serving-calibration
id: cal-<12 hex>              # a digest of the inputs: base calibration, plan, measured files and values
engine: vllm                  # the engine profile it applies to (engine.name)
gpu: h100-sxm                 # the catalog GPU it was measured on
stack: measured-vllm-<8 hex>  # the software-stack name its step parameters take in the calibration
base_calibration: fit-...     # the shipped calibration it refines (its id)
base_stack: tensorrt-llm      # the stack that was the prior and starting point
step: {sustained_compute: .., layer_overhead_us: .., step_overhead_us: .., collective_skew_us: ..,
       sustained_memory: .., sequence_overhead_us: ..}   # optimizer/model/calibration.py StepFit
rows: [...]                   # the measured rows, their files and errors (informative)
```
"""

from __future__ import annotations

from typing import Any

from optimizer.errors import ScenarioError
from optimizer.units import is_finite_number

KIND = "serving-calibration"
STEP_FIELDS = ("sustained_compute", "layer_overhead_us", "step_overhead_us", "collective_skew_us", "sustained_memory",
               "sequence_overhead_us")  # optimizer/model/calibration.py StepFit, in its order
TEXT_FIELDS = ("id", "engine", "gpu", "stack", "base_calibration", "base_stack")


def calibration_data(data: dict[str, Any], *, source: str) -> dict[str, Any]:
    """``data`` (the parsed file; ``loader.read_calibration_file`` reads it) checked field by field.

    Raises:
        ScenarioError: ``kind`` not ``serving-calibration``, a text field missing or empty, a step
            parameter missing, unknown, not a number, negative or not finite (``source`` and the field named).
    """
    if data.get("kind") != KIND:
        raise ScenarioError(f"kind is {data.get('kind')!r}; a calibration file written by `optimize calibrate --out` "
                            f"has kind: {KIND}", source=source, field="kind")
    for name in TEXT_FIELDS:
        if not isinstance(data.get(name), str) or not data[name].strip():
            raise ScenarioError(f"expected a non-empty text, got {data.get(name)!r}", source=source, field=name)
    step = data.get("step")
    if not isinstance(step, dict):
        raise ScenarioError(f"expected a mapping of {', '.join(STEP_FIELDS)}, got {step!r}", source=source, field="step")
    unknown = sorted(set(step) - set(STEP_FIELDS))
    if unknown:
        raise ScenarioError(f"unknown step parameter(s) {', '.join(map(str, unknown))}; known: {', '.join(STEP_FIELDS)}",
                            source=source, field="step")
    for name in STEP_FIELDS:
        value = step.get(name)
        if not is_finite_number(value) or value < 0:
            raise ScenarioError(f"expected a finite number >= 0, got {value!r}", source=source, field=f"step.{name}")
        if name.startswith("sustained_") and value == 0:  # a share of the rate: 0 would make every step infinite
            raise ScenarioError("expected a share > 0 (a fraction of the GPU's rate), got 0", source=source, field=f"step.{name}")
    return data


def calibration_file_problem(data: dict[str, Any], *, gpu: str, engine: str) -> str | None:
    """Why the calibration file ``data`` does not apply to a scenario on ``gpu`` with ``engine``, or None."""
    if data["gpu"] != gpu:
        return f"was fitted on {data['gpu']}, but the scenario's GPU is {gpu}; calibrate on this GPU or drop the file"
    if data["engine"] != engine:
        return f"was fitted on engine {data['engine']}, but the scenario's engine is {engine}; calibrate on this engine"
    return None
