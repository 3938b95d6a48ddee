"""Serving-benchmark result files, read into one row each: what ``optimize calibrate`` fits to.

Three tools, each in its own documented format (the keys read are listed per tool):

- vLLM ``vllm bench serve --save-result`` (``vllm/benchmarks/serve.py``, vllm-project/vllm: ``main`` builds
  ``result_json`` from ``date``, ``backend``, ``model_id``, ``num_prompts``, ``request_rate`` (a number or
  ``"inf"``), ``burstiness``, ``max_concurrency``, merged with ``benchmark()``'s ``duration``,
  ``completed``, ``total_input_tokens``, ``total_output_tokens``, ``request_throughput``,
  ``output_throughput`` and, per ``--percentile-metrics``, ``mean_/median_/std_/pNN_`` ``ttft_ms``,
  ``tpot_ms``, ``itl_ms``, ``e2el_ms``). One JSON object per file; ``--append-result`` writes one per line.
- SGLang ``python -m sglang.bench_serving --output-file F`` (``python/sglang/bench_serving.py``,
  sgl-project/sglang: ``benchmark()`` appends one JSON line per run with ``backend``, ``dataset_name``,
  ``request_rate``, ``max_concurrency``, ``random_input_len``, ``random_output_len``,
  ``random_range_ratio``, ``duration``, ``completed``, ``total_input_tokens``, ``total_output_tokens``,
  ``request_throughput``, ``output_throughput``, ``mean_e2e_latency_ms``, ``mean_ttft_ms``,
  ``median_ttft_ms``, ``mean_tpot_ms``, ``mean_itl_ms``, ``concurrency``, ...). It records no model name.
- genai-perf ``profile`` (triton-inference-server/perf_analyzer ``genai-perf/genai_perf/export_data/
  json_exporter.py``: ``<artifact dir>/profile_export_genai_perf.json`` is the statistics, one entry per
  metric ``{"unit": .., "avg": .., "p50": .., ...}`` (``metrics/statistics.py``; ``time_to_first_token``,
  ``inter_token_latency`` in ms, ``output_token_throughput`` in tokens/sec, ``request_throughput``,
  ``request_latency``, ``input_sequence_length``, ``output_sequence_length``), plus ``input_config``:
  ``model_names``, ``input.synthetic_tokens.mean``, ``input.output_tokens.mean``,
  ``perf_analyzer.stimulus`` (``{"concurrency": N}`` or ``{"request_rate": R}``; ``config/input/``).
  genai-perf's inter-token latency is per request ``(latency - TTFT) / (output tokens - 1)``, TPOT.

The concurrency of a row is the tool's ``max_concurrency`` (or genai-perf's stimulus); a rate-driven run
without a cap gets Little's law from its own measurements, ``request_throughput x mean latency``.

Sources read at these commits: vllm-project/vllm 009e6d4a1cd6 (vllm/benchmarks/serve.py), sgl-project/sglang
0033168f0f58 (python/sglang/bench_serving.py), triton-inference-server/perf_analyzer 263c5f6e0c7a (genai-perf/).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from optimizer.errors import ScenarioError
from optimizer.units import is_finite_number

TOOLS = ("vllm", "sglang", "genai-perf")


@dataclass(frozen=True)
class ServingRow:
    """One benchmark run: its file, tool, traffic and the means it measured (milliseconds, tokens/s)."""

    file: str
    sha256: str  # of the whole file
    line: int  # 1-based line of a JSON-lines file; 0 for a one-object file
    tool: str
    model: str | None  # None: the tool does not record it (SGLang)
    input_tokens: float  # mean prompt tokens per request
    output_tokens: float  # mean generated tokens per request
    concurrency: int  # requests in flight (the cap, or Little's law for an uncapped rate run)
    request_rate_per_s: float | None  # the offered rate; None for "inf" (all requests at once)
    ttft_ms: float
    tpot_ms: float
    output_tokens_per_s: float


def read_results(path: Path) -> list[ServingRow]:
    """Every run in a result file of vLLM, SGLang or genai-perf (the tool told by the keys present).

    Raises:
        ScenarioError: unreadable, not JSON or JSON lines of objects, no tool's keys, or a field missing,
            not a number or not positive (the file, the line where there are several, and the field named).
    """
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ScenarioError(f"cannot read ({exc.strerror})", source=source) from None
    if len(raw) > 64 << 20:
        raise ScenarioError("larger than 64 MiB; a result file of a run is a few KiB (drop --save-detailed)", source=source)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ScenarioError("not UTF-8 text; expected a benchmark's JSON result", source=source) from None
    digest = hashlib.sha256(raw).hexdigest()
    objects = _objects(text, source)
    if not objects:
        raise ScenarioError("no result in the file (empty)", source=source)
    lines = len(objects) > 1
    return [_row(obj, source=source, digest=digest, line=line if lines else 0) for line, obj in objects]


def _objects(text: str, source: str) -> list[tuple[int, dict[str, Any]]]:
    try:
        whole = json.loads(text)
    except json.JSONDecodeError:
        whole = None
    if isinstance(whole, dict):
        return [(1, whole)]
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ScenarioError(f"line {number}: not JSON ({exc.msg}); expected vLLM's result JSON, SGLang's JSON lines or "
                                "genai-perf's profile_export_genai_perf.json", source=source) from None
        if not isinstance(obj, dict):
            raise ScenarioError(f"line {number}: expected a JSON object, got {type(obj).__name__}", source=source)
        out.append((number, obj))
    return out


def tool_of(obj: dict[str, Any]) -> str | None:
    """Which tool wrote ``obj``: genai-perf (metric entries and ``input_config``), SGLang (``random_input_len``,
    no ``model_id``) or vLLM (``model_id``); None if none."""
    if "input_config" in obj and isinstance(obj.get("time_to_first_token"), dict):
        return "genai-perf"
    if "model_id" in obj and "mean_ttft_ms" in obj:
        return "vllm"
    if "random_input_len" in obj and "mean_ttft_ms" in obj:
        return "sglang"
    return None


def _row(obj: dict[str, Any], *, source: str, digest: str, line: int) -> ServingRow:
    where = f"line {line}: " if line else ""
    tool = tool_of(obj)
    if tool is None:
        raise ScenarioError(f"{where}not a result of vllm bench serve (model_id, mean_ttft_ms, ...), sglang.bench_serving "
                            "(random_input_len, mean_ttft_ms, ...) or genai-perf (time_to_first_token, input_config)",
                            source=source)

    def number(container: dict[str, Any], key: str, field: str, *, positive: bool = True) -> float:
        value = container.get(key) if isinstance(container, dict) else None
        if not is_finite_number(value) or value < 0 or (positive and value == 0):
            raise ScenarioError(f"{where}expected a {'positive ' if positive else ''}number, got {value!r} ({tool} result)",
                                source=source, field=field)
        return float(value)

    def rate(value: Any, field: str) -> float | None:
        if value is None or value == "inf" or (isinstance(value, float) and math.isinf(value)):
            return None
        if not is_finite_number(value) or value <= 0:
            raise ScenarioError(f"{where}expected a positive number or \"inf\", got {value!r}", source=source, field=field)
        return float(value)

    def cap(value: Any, field: str) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ScenarioError(f"{where}expected an integer >= 1 or null, got {value!r}", source=source, field=field)
        return value

    def concurrency(given: int | None, throughput: float, latency_ms: float) -> int:
        return given if given is not None else max(1, round(throughput * latency_ms / 1000))  # Little's law

    if tool == "genai-perf":
        config = obj.get("input_config") if isinstance(obj.get("input_config"), dict) else {}
        models = config.get("model_names")
        stimulus = (config.get("perf_analyzer") or {}).get("stimulus") if isinstance(config.get("perf_analyzer"), dict) else None
        stimulus = stimulus if isinstance(stimulus, dict) else {}

        def avg(metric: str) -> float:
            return number(obj.get(metric) or {}, "avg", f"{metric}.avg")

        return ServingRow(
            file=source, sha256=digest, line=line, tool=tool,
            model=models[0] if isinstance(models, list) and models and isinstance(models[0], str) else None,
            input_tokens=avg("input_sequence_length"), output_tokens=avg("output_sequence_length"),
            concurrency=concurrency(cap(stimulus.get("concurrency"), "input_config.perf_analyzer.stimulus.concurrency"),
                                    avg("request_throughput"), avg("request_latency")),
            request_rate_per_s=rate(stimulus.get("request_rate"), "input_config.perf_analyzer.stimulus.request_rate"),
            ttft_ms=avg("time_to_first_token"), tpot_ms=avg("inter_token_latency"),
            output_tokens_per_s=avg("output_token_throughput"),
        )
    completed = number(obj, "completed", "completed")
    latency_key = "mean_e2el_ms" if tool == "vllm" else "mean_e2e_latency_ms"
    given = cap(obj.get("max_concurrency"), "max_concurrency")
    model = obj.get("model_id") if tool == "vllm" else None
    return ServingRow(
        file=source, sha256=digest, line=line, tool=tool,
        model=model if isinstance(model, str) else None,
        input_tokens=number(obj, "total_input_tokens", "total_input_tokens") / completed,
        output_tokens=number(obj, "total_output_tokens", "total_output_tokens") / completed,
        concurrency=given if given is not None else concurrency(None, number(obj, "request_throughput", "request_throughput"),
                                                                 number(obj, latency_key, latency_key)),
        request_rate_per_s=rate(obj.get("request_rate"), "request_rate"),
        ttft_ms=number(obj, "mean_ttft_ms", "mean_ttft_ms"), tpot_ms=number(obj, "mean_tpot_ms", "mean_tpot_ms"),
        output_tokens_per_s=number(obj, "output_throughput", "output_throughput"),
    )
