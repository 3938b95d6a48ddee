"""Write the measured-result fixtures of tests/test_calibrate_measured.py: runs of the golden
llama-3.1-70b-8xh100 plan (TP4 x DP2 on 8 x H100, vLLM) as the cost model predicts them with a known
"true" step fit (``TRUE``: 0.7 x the shipped sustained compute, sustained memory 0.8), written in each
tool's result format (keys and shapes: optimizer/inputs/bench_results.py, which cites the tools' sources).
The numbers are made up, not measured: they exist so that a refit must find ``TRUE`` again.

    python tests/data/measured/generate.py      # from the repository root
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from optimizer.inputs.bench_results import ServingRow
from optimizer.inputs.loader import load_scenario
from optimizer.model import serving_fit
from optimizer.model.calibration import calibration_for
from optimizer.search.verify import read_plan

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
SCENARIO = "llama-3.1-70b-8xh100"
MODEL_ID = "meta-llama/Llama-3.1-70B-Instruct"
TRUE = {"sustained_compute_factor": 0.7, "sustained_memory": 0.8}


def truth():
    """The scenario, the golden plan and the true calibration the fixtures were generated with."""
    scenario = load_scenario(SCENARIO)
    plan = read_plan(ROOT / "tests" / "golden" / f"{SCENARIO}.json", scenario, {})
    base = calibration_for(scenario)
    prior = base.for_gpu(scenario.cluster.gpu.name, base.stack_for(scenario.engine.name.value)).step
    fit = replace(prior, sustained_compute=prior.sustained_compute * TRUE["sustained_compute_factor"],
                  sustained_memory=TRUE["sustained_memory"])
    return scenario, plan, serving_fit._calibration(base, scenario, fit), fit


def measured(concurrency: int):
    scenario, plan, cal, _ = truth()
    w = scenario.workload
    row = ServingRow(file="", sha256="", line=0, tool="", model=None, input_tokens=w.input_tokens, output_tokens=w.output_tokens,
                     concurrency=concurrency, request_rate_per_s=None, ttft_ms=1.0, tpot_ms=1.0, output_tokens_per_s=1.0)
    p = serving_fit.predict(scenario, plan, row, cal)
    return w, round(p.ttft_ms, 3), round(p.tpot_ms, 4), round(p.output_tokens_per_s, 2)


def vllm(concurrency: int, num_prompts: int) -> dict:
    w, ttft, tpot, tput = measured(concurrency)
    e2el = ttft + (w.output_tokens - 1) * tpot
    return {"date": "20261205-071500", "endpoint_type": "openai", "backend": "openai", "label": None, "model_id": MODEL_ID,
            "tokenizer_id": MODEL_ID, "num_prompts": num_prompts, "request_rate": "inf", "burstiness": 1.0,
            "max_concurrency": concurrency, "duration": round(num_prompts * w.output_tokens / tput, 3), "completed": num_prompts,
            "failed": 0, "total_input_tokens": num_prompts * w.input_tokens, "total_output_tokens": num_prompts * w.output_tokens,
            "request_throughput": round(tput / w.output_tokens, 4), "request_goodput": None, "output_throughput": tput,
            "total_token_throughput": round(tput * (w.input_tokens + w.output_tokens) / w.output_tokens, 2),
            "max_output_tokens_per_s": round(tput * 1.1, 1), "max_concurrent_requests": concurrency, "rtfx": 0.0,
            "mean_ttft_ms": ttft, "median_ttft_ms": ttft, "std_ttft_ms": round(ttft * 0.05, 3), "p99_ttft_ms": round(ttft * 1.3, 3),
            "mean_tpot_ms": tpot, "median_tpot_ms": tpot, "std_tpot_ms": round(tpot * 0.02, 4), "p99_tpot_ms": round(tpot * 1.1, 4),
            "mean_itl_ms": tpot, "median_itl_ms": tpot, "std_itl_ms": round(tpot * 0.1, 4), "p99_itl_ms": round(tpot * 1.5, 4),
            "mean_e2el_ms": round(e2el, 3), "median_e2el_ms": round(e2el, 3), "std_e2el_ms": round(e2el * 0.03, 3),
            "p99_e2el_ms": round(e2el * 1.1, 3)}


def sglang(concurrency: int, num_prompts: int) -> dict:
    w, ttft, tpot, tput = measured(concurrency)
    e2el = ttft + (w.output_tokens - 1) * tpot
    return {"backend": "sglang-oai", "dataset_name": "random", "request_rate": float("inf"), "max_concurrency": concurrency,
            "sharegpt_output_len": None, "random_input_len": w.input_tokens, "random_output_len": w.output_tokens,
            "random_range_ratio": 1.0, "duration": round(num_prompts * w.output_tokens / tput, 3), "completed": num_prompts,
            "total_input_tokens": num_prompts * w.input_tokens, "total_output_tokens": num_prompts * w.output_tokens,
            "total_output_tokens_retokenized": num_prompts * w.output_tokens, "request_throughput": round(tput / w.output_tokens, 4),
            "input_throughput": round(tput * w.input_tokens / w.output_tokens, 2), "output_throughput": tput,
            "mean_e2e_latency_ms": round(e2el, 3), "median_e2e_latency_ms": round(e2el, 3), "std_e2e_latency_ms": round(e2el * 0.03, 3),
            "p99_e2e_latency_ms": round(e2el * 1.1, 3), "mean_ttft_ms": ttft, "median_ttft_ms": ttft,
            "std_ttft_ms": round(ttft * 0.05, 3), "p99_ttft_ms": round(ttft * 1.3, 3), "mean_tpot_ms": tpot, "median_tpot_ms": tpot,
            "std_tpot_ms": round(tpot * 0.02, 4), "p99_tpot_ms": round(tpot * 1.1, 4), "mean_itl_ms": tpot, "median_itl_ms": tpot,
            "std_itl_ms": round(tpot * 0.1, 4), "p95_itl_ms": round(tpot * 1.3, 4), "p99_itl_ms": round(tpot * 1.5, 4),
            "concurrency": round(concurrency * 0.97, 2), "accept_length": None}


def genai_perf(concurrency: int, num_prompts: int) -> dict:
    w, ttft, tpot, tput = measured(concurrency)
    latency = ttft + (w.output_tokens - 1) * tpot

    def stat(unit: str, avg: float) -> dict:
        return {"unit": unit, "avg": avg, "p1": round(avg * 0.9, 4), "p5": round(avg * 0.92, 4), "p10": round(avg * 0.95, 4),
                "p25": round(avg * 0.98, 4), "p50": avg, "p75": round(avg * 1.02, 4), "p90": round(avg * 1.05, 4),
                "p95": round(avg * 1.08, 4), "p99": round(avg * 1.2, 4), "min": round(avg * 0.85, 4), "max": round(avg * 1.3, 4),
                "std": round(avg * 0.04, 4)}

    return {"request_throughput": {"unit": "requests/sec", "avg": round(tput / w.output_tokens, 4)},
            "request_latency": stat("ms", round(latency, 3)), "time_to_first_token": stat("ms", ttft),
            "time_to_second_token": stat("ms", round(ttft + tpot, 3)), "inter_token_latency": stat("ms", tpot),
            "output_token_throughput": {"unit": "tokens/sec", "avg": tput},
            "output_token_throughput_per_user": stat("tokens/sec/user", round(1000 / tpot, 3)),
            "output_sequence_length": stat("tokens", float(w.output_tokens)), "input_sequence_length": stat("tokens", float(w.input_tokens)),
            "request_count": {"unit": "count", "avg": num_prompts},
            "input_config": {"model_names": [MODEL_ID], "analyze": {}, "endpoint": {"model_selection_strategy": "round_robin",
                             "backend": "tensorrtllm", "custom": "", "type": "completions", "service_kind": "openai",
                             "streaming": True, "url": "127.0.0.1:8000"},
                             "perf_analyzer": {"path": "perf_analyzer", "verbose": False, "stimulus": {"concurrency": concurrency},
                                               "stability_percentage": 999, "measurement": {"mode": "request_count", "num": num_prompts}},
                             "input": {"batch_size": 1, "extra": {"ignore_eos": True}, "header": {}, "file": None,
                                       "num_dataset_entries": 100, "random_seed": 0,
                                       "output_tokens": {"mean": w.output_tokens, "deterministic": False, "stddev": 0},
                                       "synthetic_tokens": {"mean": w.input_tokens, "stddev": 0}},
                             "output": {"artifact_directory": "artifacts", "profile_export_file": "profile_export.json",
                                        "generate_plots": False},
                             "tokenizer": {"name": MODEL_ID, "revision": "main", "trust_remote_code": False},
                             "subcommand": "profile"}}


def main() -> None:
    (HERE / "vllm-llama-3.1-70b-tp4-dp2-c1.json").write_text(json.dumps(vllm(1, 100)) + "\n")
    (HERE / "sglang-llama-3.1-70b-tp4-dp2.jsonl").write_text(json.dumps(sglang(16, 160)) + "\n" + json.dumps(sglang(64, 640)) + "\n")
    (HERE / "profile_export_genai_perf.json").write_text(json.dumps(genai_perf(128, 1280), indent=2) + "\n")


if __name__ == "__main__":
    main()
