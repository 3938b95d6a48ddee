"""``optimize calibrate``: serving-benchmark result files in each tool's documented format
(tests/data/measured: a vLLM ``--save-result`` JSON, SGLang ``--output-file`` JSON lines, a genai-perf
``profile_export_genai_perf.json``; formats cited in optimizer/inputs/bench_results.py) generated from a
known "true" step fit (tests/data/measured/generate.py) are read, refitted, and the error falls; the
calibration file a scenario names changes its estimates and plans record its id; bad input exits 2."""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from optimizer.cli import main
from optimizer.errors import ScenarioError
from optimizer.inputs.bench_results import ServingRow, read_results
from optimizer.inputs.loader import load_scenario, read_calibration_file
from optimizer.model import serving_fit

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "measured"
GOLDEN = ROOT / "tests" / "golden"
SCENARIO = "llama-3.1-70b-8xh100"
PLAN = GOLDEN / f"{SCENARIO}.json"
VLLM, SGLANG, GENAI = (DATA / "vllm-llama-3.1-70b-tp4-dp2-c1.json", DATA / "sglang-llama-3.1-70b-tp4-dp2.jsonl",
                       DATA / "profile_export_genai_perf.json")


def _generator():
    spec = importlib.util.spec_from_file_location("measured_generate", DATA / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def calibrate(*extra: str, files=(VLLM, SGLANG, GENAI)):
    args = ["calibrate", *[a for f in files for a in ("--measured", str(f))], "--scenario", SCENARIO, "--plan", str(PLAN)]
    return run(*args, *extra)


def test_each_tools_file_is_read_as_written() -> None:
    vllm, = read_results(VLLM)
    raw = json.loads(VLLM.read_text())
    assert (vllm.tool, vllm.model, vllm.concurrency, vllm.line) == ("vllm", raw["model_id"], raw["max_concurrency"], 0)
    assert (vllm.ttft_ms, vllm.tpot_ms, vllm.output_tokens_per_s) == (raw["mean_ttft_ms"], raw["mean_tpot_ms"], raw["output_throughput"])
    assert vllm.input_tokens == raw["total_input_tokens"] / raw["completed"] and vllm.request_rate_per_s is None
    lines = [json.loads(l) for l in SGLANG.read_text().splitlines()]
    rows = read_results(SGLANG)
    assert [(r.tool, r.line, r.concurrency, r.model) for r in rows] == [("sglang", 1, lines[0]["max_concurrency"], None),
                                                                         ("sglang", 2, lines[1]["max_concurrency"], None)]
    assert [r.tpot_ms for r in rows] == [l["mean_tpot_ms"] for l in lines]
    genai, = read_results(GENAI)
    raw = json.loads(GENAI.read_text())
    assert (genai.tool, genai.concurrency) == ("genai-perf", raw["input_config"]["perf_analyzer"]["stimulus"]["concurrency"])
    assert (genai.ttft_ms, genai.tpot_ms) == (raw["time_to_first_token"]["avg"], raw["inter_token_latency"]["avg"])
    assert genai.output_tokens_per_s == raw["output_token_throughput"]["avg"]


def test_an_uncapped_rate_run_gets_littles_law(tmp_path: Path) -> None:
    raw = json.loads(VLLM.read_text())
    raw.update(max_concurrency=None, request_rate=4.0, request_throughput=2.0, mean_e2el_ms=6500.0)
    path = tmp_path / "rate.json"
    path.write_text(json.dumps(raw))
    row, = read_results(path)
    assert (row.concurrency, row.request_rate_per_s) == (13, 4.0)  # 2 req/s x 6.5 s in flight


def test_the_refit_lowers_the_error_and_writes_the_calibration(tmp_path: Path) -> None:
    out = tmp_path / "cal.yaml"
    result = calibrate("--out", str(out))
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(out.read_text())
    before, after, loo = (doc["error"][k] for k in ("mape_before_pct", "mape_after_pct", "leave_one_out_mape_pct"))
    assert after < before / 5 and after < 2.0 and loo < 3.0, doc["error"]
    assert f"before {before:.1f}%, after {after:.1f}%, leave-one-out {loo:.1f}%" in result.output
    assert len(doc["rows"]) == 4 and {r["tool"] for r in doc["rows"]} == {"vllm", "sglang", "genai-perf"}
    for row in doc["rows"]:  # per row, the fitted estimate is closer to the measurement than the shipped one
        for key in ("ttft_ms", "tpot_ms"):
            assert abs(row["after"][key] - row["measured"][key]) < abs(row["before"][key] - row["measured"][key])
    data = read_calibration_file(out)
    assert data["id"] == doc["id"] and data["gpu"] == "h100-sxm" and data["engine"] == "vllm"
    again = tmp_path / "again.yaml"
    assert calibrate("--out", str(again)).exit_code == 0
    assert again.read_text() == out.read_text()  # same measurements, same file and id


def test_the_refit_recovers_the_true_compute_rate() -> None:
    gen = _generator()
    scenario, plan, true_cal, true_fit = gen.truth()
    w = scenario.workload
    template = ServingRow(file="f", sha256="0", line=0, tool="vllm", model=None, input_tokens=w.input_tokens,
                          output_tokens=w.output_tokens, concurrency=1, request_rate_per_s=None, ttft_ms=1.0, tpot_ms=1.0,
                          output_tokens_per_s=1.0)

    def measured(c: int) -> ServingRow:
        p = serving_fit.predict(scenario, plan, replace(template, concurrency=c), true_cal)
        return replace(template, concurrency=c, ttft_ms=p.ttft_ms, tpot_ms=p.tpot_ms, output_tokens_per_s=p.output_tokens_per_s)

    fit = serving_fit.fit_serving(scenario, plan, [measured(c) for c in (1, 8, 32, 128)])
    assert fit.fitted.sustained_compute == pytest.approx(true_fit.sustained_compute, rel=0.05)
    assert abs(fit.prior.sustained_compute - true_fit.sustained_compute) > 0.25  # the shipped value is far off
    held = measured(64)  # a concurrency the fit never saw
    fitted_cal = serving_fit._calibration(true_cal, scenario, fit.fitted)
    p = serving_fit.predict(scenario, plan, held, fitted_cal)
    assert p.ttft_ms == pytest.approx(held.ttft_ms, rel=0.02) and p.tpot_ms == pytest.approx(held.tpot_ms, rel=0.02)


def _scenario_with(tmp_path: Path, cal: Path, tpot_s: float | None = None, **engine) -> Path:
    data = yaml.safe_load((ROOT / "optimizer" / "inputs" / "scenarios" / f"{SCENARIO}.yaml").read_text())
    if tpot_s is not None:
        data["targets"]["tpot_s"] = tpot_s
    data["engine"] = {**data["engine"], "calibration_file": cal.name, **engine}
    path = tmp_path / "calibrated.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_scenario_naming_the_file_estimates_with_it_and_records_its_id(tmp_path: Path) -> None:
    out = tmp_path / "cal.yaml"
    assert calibrate("--out", str(out)).exit_code == 0
    cal_id = yaml.safe_load(out.read_text())["id"]
    # the file's path is relative to the scenario's folder; the refitted (slower) steps miss the 50 ms TPOT target
    scenario = _scenario_with(tmp_path, out, tpot_s=0.1)
    shipped = json.loads(run("estimate", str(PLAN), "--scenario", SCENARIO, "--json", "-").output)
    refitted = json.loads(run("estimate", str(PLAN), "--scenario", str(scenario), "--json", "-").output)
    assert refitted["calibration"]["id"] == cal_id != shipped["calibration"]["id"]
    assert "stack measured-vllm-" in refitted["calibration"]["text"] and "standing in" not in refitted["calibration"]["text"]
    measured = read_results(VLLM)[0]  # concurrency 1; the plan's own concurrency (128) is the genai-perf row
    genai = read_results(GENAI)[0]
    assert genai.concurrency == load_scenario(SCENARIO).workload.concurrent_sequences
    assert abs(refitted["ttft_s"] * 1e3 - genai.ttft_ms) < abs(shipped["ttft_s"] * 1e3 - genai.ttft_ms)
    assert abs(refitted["tpot_s"] * 1e3 - genai.tpot_ms) < abs(shipped["tpot_s"] * 1e3 - genai.tpot_ms)
    assert measured.concurrency == 1
    solved = run("--scenario", str(scenario), "--json", "-")  # a plan made with it: solved, proved, and naming the id
    assert solved.exit_code == 0, solved.output
    document = json.loads(solved.output)
    assert document["estimate"]["calibration"]["id"] == cal_id
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(solved.output)
    verified = run("verify", str(plan_file), "--scenario", str(scenario))
    assert verified.exit_code == 0, verified.output  # its certificate re-checks with the same calibration
    text = run("estimate", str(plan_file), "--scenario", str(scenario))
    assert text.exit_code == 0 and f"calibration {cal_id}: h100-sxm, stack measured-vllm-" in text.output


def test_a_calibration_file_for_another_gpu_or_a_broken_one_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "cal.yaml"
    assert calibrate("--out", str(out)).exit_code == 0
    doc = yaml.safe_load(out.read_text())
    for change, words in ((("gpu", "h200-sxm"), "fitted on h200-sxm"), (("engine", "sglang"), "fitted on engine sglang"),
                          (("kind", "other"), "kind"), (("step", {**doc["step"], "sustained_compute": -1}), "step.sustained_compute")):
        broken = tmp_path / "cal.yaml"
        broken.write_text(yaml.safe_dump({**doc, change[0]: change[1]}))
        result = run("estimate", str(PLAN), "--scenario", str(_scenario_with(tmp_path, broken)))
        assert result.exit_code == 2 and words in result.output and "engine.calibration_file" in result.output, result.output
    out.write_text(yaml.safe_dump(doc))
    both = run("estimate", str(PLAN), "--scenario", str(_scenario_with(tmp_path, out, calibration_stack="tensorrt-llm")))
    assert both.exit_code == 2 and "not both" in both.output
    missing = run("estimate", str(PLAN), "--scenario", str(_scenario_with(tmp_path, tmp_path / "nope.yaml")))
    assert missing.exit_code == 2 and "engine.calibration_file" in missing.output


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.update(total_input_tokens=d["total_input_tokens"] * 2), "input tokens (ISL) 2048 is not the scenario's 1024"),
    (lambda d: d.update(model_id="Qwen/Qwen3-30B-A3B"), "model 'Qwen/Qwen3-30B-A3B' is not the scenario's model"),
    (lambda d: d.pop("mean_tpot_ms"), "mean_tpot_ms: expected a positive number, got None"),
    (lambda d: d.update(max_concurrency=0), "max_concurrency: expected an integer >= 1"),
    (lambda d: [d.pop(k) for k in ("model_id", "mean_ttft_ms")], "not a result of vllm bench serve"),
])
def test_a_result_file_that_does_not_fit_the_scenario_exits_2(tmp_path: Path, edit, words: str) -> None:
    data = json.loads(VLLM.read_text())
    edit(data)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    result = calibrate(files=(path,))
    assert result.exit_code == 2 and words in result.output and str(path) in result.output, result.output
    assert "Traceback" not in result.output


def test_unreadable_result_files_exit_2(tmp_path: Path) -> None:
    text = tmp_path / "notes.json"
    text.write_text("{not json\n")
    assert "line 1: not JSON" in calibrate(files=(text,)).output
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert calibrate(files=(empty,)).exit_code == 2
    assert calibrate(files=(tmp_path / "absent.json",)).exit_code == 2
    with pytest.raises(ScenarioError, match="expected a JSON object"):
        (tmp_path / "list.jsonl").write_text("[1]\n[2]\n")
        read_results(tmp_path / "list.jsonl")


def test_the_output_never_overwrites_a_measured_file_or_the_scenarios_calibration(tmp_path: Path) -> None:
    copy = tmp_path / "run.json"
    shutil.copy(VLLM, copy)
    result = calibrate("--out", str(copy), files=(copy,))
    assert result.exit_code == 2 and copy.read_text() == VLLM.read_text()
    cal = tmp_path / "cal.yaml"
    assert calibrate("--out", str(cal)).exit_code == 0
    before = cal.read_text()
    scenario = _scenario_with(tmp_path, cal, tpot_s=0.1)
    again = run("calibrate", "--measured", str(VLLM), "--scenario", str(scenario), "--plan", str(PLAN), "--out", str(cal))
    assert again.exit_code == 2 and "refusing to overwrite" in again.output and cal.read_text() == before


def test_a_plan_file_of_an_infeasible_scenario_exits_1() -> None:
    result = run("calibrate", "--measured", str(VLLM), "--scenario", SCENARIO, "--plan", str(GOLDEN / "4gpu-10b.json"))
    assert result.exit_code == 1 and "no feasible plan" in result.output


def test_one_row_fits_but_has_no_leave_one_out(tmp_path: Path) -> None:
    out = tmp_path / "one.yaml"
    result = calibrate("--out", str(out), files=(GENAI,))
    assert result.exit_code == 0, result.output
    assert "leave-one-out n/a (one row)" in result.output
    doc = yaml.safe_load(out.read_text())
    assert doc["error"]["leave_one_out_mape_pct"] is None and doc["error"]["mape_after_pct"] < doc["error"]["mape_before_pct"]


def test_a_calibration_file_leaves_other_gpus_on_the_engines_shipped_step_fit(tmp_path: Path) -> None:
    """The file refits one GPU; every other GPU (and the default entry) keeps the step fit the engine had,
    not a placeholder with zero overheads (review of issue 16)."""
    from optimizer.model.calibration import file_calibration, shipped_calibration

    out = tmp_path / "cal.yaml"
    assert calibrate("--out", str(out)).exit_code == 0
    mine, shipped = file_calibration(str(out)), shipped_calibration()
    stack = mine.stack_for("vllm")
    assert stack.startswith("measured-vllm-") and stack not in shipped.stacks
    assert mine.for_gpu("h100-sxm", stack, "vllm").step != shipped.for_gpu("h100-sxm", None, "vllm").step
    for gpu in ("l40s", "a100-sxm-80gb", "mi355x"):  # fitted elsewhere, and a GPU on the default entry
        assert mine.for_gpu(gpu, stack, "vllm").step == shipped.for_gpu(gpu, shipped.stack_for("vllm"), "vllm").step


def test_a_fleet_service_naming_a_calibration_file_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "cal.yaml"
    assert calibrate("--out", str(out)).exit_code == 0
    fleet = yaml.safe_load((ROOT / "fleets" / "chat-2x2.yaml").read_text())
    fleet["services"][1]["engine"]["calibration_file"] = str(out)
    (tmp_path / "fleet.yaml").write_text(yaml.safe_dump(fleet))
    result = run("fleet", str(tmp_path / "fleet.yaml"))
    assert result.exit_code == 2, result.output
    assert "services.1.engine.calibration_file" in result.output and "one GPU" in result.output
