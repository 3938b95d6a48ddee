"""The serving benchmark that measures a plan's claim (``optimize bench-command``): the engines' own
clients with the scenario's request lengths and concurrency (or request rate), and the result file that
``optimize calibrate`` reads back.

Every flag, checked in the tool's source:

- vLLM ``vllm bench serve`` (vllm-project/vllm ``vllm/benchmarks/serve.py``: ``add_cli_args`` and ``main``;
  the random dataset's flags in ``vllm/benchmarks/datasets.py`` ``add_dataset_parser``): ``--backend``
  (default ``openai``, the OpenAI completions API), ``--host``, ``--port``, ``--model``,
  ``--dataset-name random``, ``--random-input-len``, ``--random-output-len``, ``--random-range-ratio``
  (lengths drawn from ``[len x (1 - r), len x (1 + r)]``: 0 is every request at exactly ISL / OSL),
  ``--ignore-eos``, ``--num-prompts``, ``--max-concurrency``, ``--request-rate`` (``inf``: all at once,
  the concurrency cap doing the pacing), ``--percentile-metrics``, ``--save-result``, ``--result-dir``,
  ``--result-filename`` (``compute_result_filename``: the file is ``result_dir/result_filename``).
- SGLang ``python -m sglang.bench_serving`` (sgl-project/sglang ``python/sglang/bench_serving.py``,
  its ``__main__`` parser; ``run_benchmark`` maps the backends to URLs): ``--backend sglang`` (SGLang's native
  ``/generate`` API) or ``sglang-oai`` (``/v1/completions``, for another engine's server), ``--host``, ``--port``,
  ``--model``, ``--dataset-name random``, ``--random-input-len``, ``--random-output-len``,
  ``--random-range-ratio`` (lengths drawn from ``[len x r, len]``: 1 is exactly ISL / OSL;
  ``sample_random_requests``), ``--num-prompts``, ``--max-concurrency``, ``--request-rate``,
  ``--output-file`` (one JSON line appended per run). EOS is ignored unless ``--disable-ignore-eos``.
- genai-perf ``genai-perf profile`` (triton-inference-server/perf_analyzer ``genai-perf/genai_perf/
  parser.py``): ``--model``, ``--tokenizer``, ``--endpoint-type completions``, ``--streaming``, ``--url``,
  ``--synthetic-input-tokens-mean``/``-stddev``, ``--output-tokens-mean``/``-stddev``,
  ``--extra-inputs ignore_eos:true``, ``--concurrency``, ``--request-rate``, ``--request-count``,
  ``--artifact-dir``, ``--profile-export-file`` (the statistics go to ``<prefix>_genai_perf.json`` in the
  run's folder under the artifact dir: ``export_data/json_exporter.py``).

Traffic: a scenario whose objective is ``fewest_gpus`` claims ``targets.request_rate_per_s``, so that rate
is offered (Poisson arrivals, both clients' default); every other plan claims its TTFT and TPOT at the
sequences it serves (``workload.concurrent_sequences``, or DP x batch per replica where the objective
chooses the batch), so that many requests are kept in flight. ``NUM_PROMPTS_PER_SLOT`` requests per
slot (at least ``MIN_NUM_PROMPTS``) give a steady state well past the ramp-up.

Sources read at these commits: vllm-project/vllm 009e6d4a1cd6 (vllm/benchmarks/serve.py), sgl-project/sglang
0033168f0f58 (python/sglang/bench_serving.py), triton-inference-server/perf_analyzer 263c5f6e0c7a (genai-perf/).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from optimizer.errors import OptimizerError
from optimizer.inputs.scenario import Objective, Scenario
from optimizer.outputs.launch import SGLANG_PORT, TRTLLM_PORT, VLLM_PORT, model_reference

NUM_PROMPTS_PER_SLOT = 10
MIN_NUM_PROMPTS = 100


class BenchTool(StrEnum):
    VLLM = "vllm"
    SGLANG = "sglang"
    GENAI_PERF = "genai-perf"


# Each tool's flags this module writes: flag -> whether it takes a value (the sources: the module docstring).
FLAGS: dict[str, dict[str, bool]] = {
    "vllm": {"--backend": True, "--host": True, "--port": True, "--model": True, "--dataset-name": True,
             "--random-input-len": True, "--random-output-len": True, "--random-range-ratio": True, "--ignore-eos": False,
             "--num-prompts": True, "--max-concurrency": True, "--request-rate": True, "--percentile-metrics": True,
             "--save-result": False, "--result-dir": True, "--result-filename": True},
    "sglang": {"--backend": True, "--host": True, "--port": True, "--model": True, "--dataset-name": True,
               "--random-input-len": True, "--random-output-len": True, "--random-range-ratio": True, "--num-prompts": True,
               "--max-concurrency": True, "--request-rate": True, "--output-file": True},
    "genai-perf": {"--model": True, "--tokenizer": True, "--endpoint-type": True, "--streaming": False, "--url": True,
                   "--synthetic-input-tokens-mean": True, "--synthetic-input-tokens-stddev": True, "--output-tokens-mean": True,
                   "--output-tokens-stddev": True, "--extra-inputs": True, "--concurrency": True, "--request-rate": True,
                   "--request-count": True, "--artifact-dir": True, "--profile-export-file": True},
}
PROGRAM = {"vllm": ("vllm", "bench", "serve"), "sglang": ("python", "-m", "sglang.bench_serving"),
           "genai-perf": ("genai-perf", "profile")}

DEFAULT_TOOL = {"vllm": BenchTool.VLLM, "sglang": BenchTool.SGLANG, "tensorrt-llm": BenchTool.GENAI_PERF,
                "megatron": BenchTool.VLLM}  # TensorRT-LLM's trtllm-serve speaks the OpenAI API: genai-perf is NVIDIA's client
SERVER_PORT = {"vllm": VLLM_PORT, "sglang": SGLANG_PORT, "tensorrt-llm": TRTLLM_PORT, "megatron": VLLM_PORT}


@dataclass(frozen=True)
class BenchCommand:
    """One benchmark: the command line, the result file it writes, its traffic and the plan's claim."""

    tool: BenchTool
    argv: tuple[str, ...]
    output_file: str
    concurrency: int | None  # requests kept in flight; None for a rate-driven run
    request_rate_per_s: float | None
    num_prompts: int
    claim: dict[str, float]  # the plan's estimate: ttft_ms, tpot_ms, output_tokens_per_s
    notes: tuple[str, ...]

    @property
    def shell(self) -> str:
        return shlex.join(self.argv)

    def render(self) -> str:
        traffic = (f"{self.concurrency} requests in flight" if self.concurrency is not None
                   else f"{self.request_rate_per_s:g} requests/s offered")
        lines = [
            f"# {self.tool.value}: {self.num_prompts} requests, {traffic}; result -> {self.output_file}",
            f"# the plan claims TTFT {self.claim['ttft_ms']:.1f} ms, TPOT {self.claim['tpot_ms']:.2f} ms, "
            f"{self.claim['output_tokens_per_s']:.0f} output tokens/s (mean)",
            self.shell,
        ]
        lines += [f"# note: {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def served_concurrency(scenario: Scenario, plan: Mapping[str, Any]) -> int:
    """Sequences the plan serves at once: DP x batch per replica where the objective chooses the batch,
    else ``workload.concurrent_sequences`` (``search/verify.served_sequences``)."""
    if scenario.search.objective.chooses_batch:
        return int(plan["dp"]) * int(plan["batch_per_replica"])
    return scenario.workload.concurrent_sequences


def bench_command(document: Mapping[str, Any], *, scenario: Scenario, tool: str | None = None, host: str = "127.0.0.1",
                  port: int | None = None) -> BenchCommand:
    """The benchmark of the plan in ``document`` (an ``optimize --json`` plan document) on ``scenario``.

    ``tool`` defaults to the plan engine's own client (``DEFAULT_TOOL``), ``port`` to the engine's default
    HTTP port (instance 0 in ``optimize launch``).

    Raises:
        OptimizerError: the document has no plan or no estimate (a scenario with no feasible plan).
    """
    plan, est = document.get("plan"), document.get("estimate")
    if not isinstance(plan, Mapping) or not isinstance(est, Mapping):
        raise OptimizerError("the document has no plan and estimate to measure (no feasible plan?)")
    engine = str(plan.get("engine", scenario.engine.name.value))
    chosen = BenchTool(tool) if tool else DEFAULT_TOOL[engine]
    port = SERVER_PORT[engine] if port is None else port
    w = scenario.workload
    rate = scenario.targets.request_rate_per_s if scenario.search.objective is Objective.FEWEST_GPUS else None
    concurrency = None if rate is not None else served_concurrency(scenario, plan)
    num_prompts = max(MIN_NUM_PROMPTS, NUM_PROMPTS_PER_SLOT * (concurrency or 1),
                      0 if rate is None else int(60 * float(rate)))  # a minute of traffic for a rate run
    model, model_note = model_reference(name=scenario.model.name, source=scenario.model.source)
    sizes = f"tp{plan['tp']}-pp{plan['pp']}-dp{plan['dp']}-ep{plan['ep']}"
    load = f"c{concurrency}" if concurrency is not None else f"r{float(rate):g}"
    stem = f"{scenario.name}-{sizes}-{load}-{chosen.value}"
    rate_text = "inf" if rate is None else f"{float(rate):g}"
    notes = [model_note] if model_note else []
    instances = plan.get("instances")
    if isinstance(instances, int) and instances > 1:
        notes.append(f"the plan runs {instances} engine instances (optimize launch lists each one's node and HTTP port); "
                     "benchmark them through one load balancer and pass its --host/--port")
    if engine == "megatron":
        notes.append("a megatron plan is a training layout: serve it with optimize launch --engine vllm first")
    if chosen is BenchTool.VLLM:
        output = f"{stem}.json"
        argv = ["vllm", "bench", "serve", "--backend", "openai", "--host", host, "--port", str(port), "--model", model,
                "--dataset-name", "random", "--random-input-len", str(w.input_tokens), "--random-output-len",
                str(w.output_tokens), "--random-range-ratio", "0", "--ignore-eos", "--num-prompts", str(num_prompts),
                *(["--max-concurrency", str(concurrency)] if concurrency is not None else []), "--request-rate", rate_text,
                "--percentile-metrics", "ttft,tpot,itl,e2el", "--save-result", "--result-dir", ".",
                "--result-filename", output]
    elif chosen is BenchTool.SGLANG:
        output = f"{stem}.jsonl"
        backend = "sglang" if engine == "sglang" else "sglang-oai"  # native /generate, or /v1/completions of another server
        argv = ["python", "-m", "sglang.bench_serving", "--backend", backend, "--host", host, "--port", str(port),
                "--model", model, "--dataset-name", "random", "--random-input-len", str(w.input_tokens),
                "--random-output-len", str(w.output_tokens), "--random-range-ratio", "1", "--num-prompts", str(num_prompts),
                *(["--max-concurrency", str(concurrency)] if concurrency is not None else []), "--request-rate", rate_text,
                "--output-file", output]
        notes.append(f"sglang.bench_serving appends one JSON line per run to {output}: remove it before a rerun")
    else:
        output = f"{stem}/<run folder>/{stem}_genai_perf.json"
        argv = ["genai-perf", "profile", "--model", model, "--tokenizer", model, "--endpoint-type", "completions",
                "--streaming", "--url", f"{host}:{port}", "--synthetic-input-tokens-mean", str(w.input_tokens),
                "--synthetic-input-tokens-stddev", "0", "--output-tokens-mean", str(w.output_tokens),
                "--output-tokens-stddev", "0", "--extra-inputs", "ignore_eos:true",
                *(["--concurrency", str(concurrency)] if concurrency is not None else ["--request-rate", rate_text]),
                "--request-count", str(num_prompts), "--artifact-dir", stem, "--profile-export-file", f"{stem}.json"]
        notes.append(f"genai-perf writes its statistics to {stem}_genai_perf.json in the run's folder under {stem}/")
    claim = {"ttft_ms": float(est["ttft_s"]) * 1e3, "tpot_ms": float(est["tpot_s"]) * 1e3,
             "output_tokens_per_s": float(est["output_tokens_per_s"])}
    return BenchCommand(tool=chosen, argv=tuple(argv), output_file=output, concurrency=concurrency, request_rate_per_s=rate,
                        num_prompts=num_prompts, claim=claim, notes=tuple(notes))
