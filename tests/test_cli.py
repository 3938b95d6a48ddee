"""The command line end to end through click's CliRunner: optimise, verify, list, and every bad-input
path (exit 2, a message naming the file and field, never a traceback)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from optimizer.cli import main


@pytest.fixture
def run():
    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert "Traceback" not in result.output
        return result

    return invoke


def test_optimize_16gpu_30b_prints_a_proved_plan(run):
    result = run("--scenario", "16gpu-30b")
    assert result.exit_code == 0, result.output
    assert "proved optimal" in result.output
    assert "all hold" in result.output


def test_json_contract(run, tmp_path):
    out = tmp_path / "plan.json"
    assert run("--scenario", "16gpu-30b", "--json", str(out)).exit_code == 0
    doc = json.loads(out.read_text())
    assert doc["schema_version"] == "3.5"
    plan = doc["plan"]
    for key in ("tp", "pp", "dp", "ep", "etp", "edp", "batch_per_replica"):
        assert isinstance(plan[key], int)
    assert plan["tp"] * plan["pp"] * plan["dp"] == 16
    assert plan["etp"] * plan["ep"] * plan["edp"] * plan["pp"] == 16
    assert sum(plan["layers_per_stage"]) == 16
    assert set(doc["estimate"]) >= {"ttft_s", "tpot_s", "request_latency_s", "output_tokens_per_s"}
    assert all(set(c) >= {"name", "formula", "lhs", "op", "rhs", "holds"} for c in doc["certificate"]["checks"])
    assert doc["certificate"]["holds"] is True
    ev = doc["evidence"]
    assert ev["status"] == "OPTIMAL" and ev["objective"] == ev["best_bound"] and ev["proved_optimal"]
    assert {"solver", "gap", "double_check", "parameters", "model_size"} <= set(ev) and ev["gap"] == 0
    assert "wall_s" not in ev and "num_workers" not in ev["parameters"]  # the run, not the result
    assert len(doc["rank_map"]["ranks"]) == 16
    assert doc["memory"]["per_gpu_peak"]["total_bytes"] <= doc["memory"]["cap_bytes"]


def test_markdown(run, tmp_path):
    out = tmp_path / "plan.md"
    assert run("--scenario", "3gpu-32gb", "--markdown", str(out)).exit_code == 0
    text = out.read_text()
    assert text.startswith("# Plan: 3gpu-32gb") and "## Certificate" in text


def test_exhaustive_solver_gives_the_same_plan(run):
    a = json.loads(run("--scenario", "16gpu-30b", "--json", "-").output)
    b = json.loads(run("--scenario", "16gpu-30b", "--json", "-", "--solver", "exhaustive").output)
    assert a["plan"] == b["plan"] and a["evidence"]["objective"] == b["evidence"]["objective"]


def test_scenarios_lists_names_first(run):
    result = run("scenarios")
    assert result.exit_code == 0
    names = [line.split("\t")[0] for line in result.output.splitlines()]
    assert "16gpu-30b" in names and "3gpu-32gb" in names
    marked = {line.split("\t")[0]: line for line in result.output.splitlines() if "NO PLAN as shipped" in line}
    assert "throughput_target" in marked["4gpu-10b"] and "16gpu-30b" not in marked  # issue 14 item 7


def test_infeasible_scenario_exits_1_naming_the_rule(run):
    result = run("--scenario", "4gpu-10b")
    assert result.exit_code == 1
    assert "throughput_target" in result.output


def test_verify_headline_plan_fails_gpu_product(run, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("tp: 4\npp: 4\ndp: 2\nep: 16\n")
    result = run("verify", str(plan), "--scenario", "16gpu-30b")
    assert result.exit_code == 1
    assert "gpu_product" in result.output and "32" in result.output and "16 GPUs" in result.output


def test_verify_accepts_the_optimizers_own_plan(run, tmp_path):
    out = tmp_path / "plan.json"
    run("--scenario", "16gpu-30b", "--json", str(out))
    result = run("verify", str(out), "--scenario", "16gpu-30b")
    assert result.exit_code == 0, result.output


def test_verify_vllm_style_names(run, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"tensor_parallel_size": 1, "pipeline_parallel_size": 1, "data_parallel_size": 3}))
    assert run("verify", str(plan), "--scenario", "3gpu-32gb").exit_code == 0


BAD_SCENARIOS = {
    "bad_yaml.yaml": ("cluster: [unclosed\n", "invalid YAML"),
    "not_mapping.yaml": ("- 1\n- 2\n", "mapping"),
    "empty.yaml": ("", "empty"),
    "unknown_field.yaml": ("name: x\nbogus: 1\n", "bogus"),
    "binary.yaml": (b"\xff\xfe\x00garbage", "UTF-8"),
}


@pytest.mark.parametrize("filename", sorted(BAD_SCENARIOS))
def test_bad_scenario_files_exit_2(run, tmp_path, filename):
    content, expected = BAD_SCENARIOS[filename]
    path = tmp_path / filename
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    result = run("--scenario", str(path))
    assert result.exit_code == 2
    assert str(path) in result.output and expected in result.output


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (("concurrent_sequences: 128", "concurrent_sequences: -5"), "workload.concurrent_sequences"),
        (("num_nodes: 2", "num_nodes: 0"), "cluster.num_nodes"),
        (("num_experts: 64", "num_experts: many"), "model.num_experts"),
        (("num_experts: 64", "num_experts: 64\n  nonsense_field: 3"), "model.nonsense_field"),
    ],
)
def test_bad_fields_exit_2_naming_the_field(run, tmp_path, edit, field):
    from optimizer.inputs.loader import shipped_scenarios

    text = shipped_scenarios()["16gpu-30b"].read_text()
    assert edit[0] in text
    path = tmp_path / "s.yaml"
    path.write_text(text.replace(edit[0], edit[1], 1))
    result = run("--scenario", str(path))
    assert result.exit_code == 2
    assert field in result.output


def test_unknown_catalog_names_exit_2(run, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("cluster: {gpu: h999, num_nodes: 1, gpus_per_node: 8}\nmodel: Llama-3.1-8B\n"
                    "workload: {concurrent_sequences: 1, input_tokens: 1, output_tokens: 1}\n")
    result = run("--scenario", str(path))
    assert result.exit_code == 2 and "h999" in result.output and "cluster.gpu" in result.output
    path.write_text("cluster: {gpu: h100-sxm, num_nodes: 1, gpus_per_node: 8}\nmodel: NoSuchModel\n"
                    "workload: {concurrent_sequences: 1, input_tokens: 1, output_tokens: 1}\n")
    result = run("--scenario", str(path))
    assert result.exit_code == 2 and "NoSuchModel" in result.output


def test_missing_files_exit_2(run, tmp_path):
    assert run("--scenario", str(tmp_path / "nope.yaml")).exit_code == 2
    result = run("verify", str(tmp_path / "nope.yaml"), "--scenario", "16gpu-30b")
    assert result.exit_code == 2 and "file not found" in result.output
    assert run().exit_code == 2  # no --scenario at all


@pytest.mark.parametrize("body", ["tp: 0\n", "tp: -2\n", "tp: 1.5\n", "tp: two\n", "bogus: 1\n", "layers_per_stage: [8, -8]\n", "[1, 2]\n"])
def test_bad_plan_files_exit_2(run, tmp_path, body):
    path = tmp_path / "plan.yaml"
    path.write_text(body)
    result = run("verify", str(path), "--scenario", "16gpu-30b")
    assert result.exit_code == 2, result.output
    assert str(path) in result.output


def test_never_overwrites_the_input(run, tmp_path):
    from optimizer.inputs.loader import shipped_scenarios

    path = tmp_path / "s.yaml"
    original = shipped_scenarios()["3gpu-32gb"].read_text()
    path.write_text(original)
    result = run("--scenario", str(path), "--json", str(path))
    assert result.exit_code == 2 and "refusing" in result.output
    assert path.read_text() == original
