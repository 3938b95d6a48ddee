"""Commands that turn a plan into something to run (launch, deploy, bench-command, calibrate) refuse a plan
file the scenario's engine cannot start (a structural rule fails: GPU count, layer split, memory), exit 2,
naming the rules; found by review of issue 16 (bench-command printed a 70B plan's claim for a 4-GPU 405B
scenario). Bad output paths and non-finite numbers in result files exit 2 too, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from optimizer.cli import main

ROOT = Path(__file__).resolve().parent.parent
LLAMA_PLAN = ROOT / "tests" / "golden" / "llama-3.1-70b-8xh100.json"
MEASURED = ROOT / "tests" / "data" / "measured" / "vllm-llama-3.1-70b-tp4-dp2-c1.json"


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def commands(plan: Path, scenario: str, tmp_path: Path) -> dict[str, list[str]]:
    return {
        "launch": ["launch", str(plan), "--scenario", scenario],
        "deploy": ["deploy", str(plan), "--scenario", scenario, "--out", str(tmp_path / "out")],
        "bench-command": ["bench-command", str(plan), "--scenario", scenario],
        "calibrate": ["calibrate", "--scenario", scenario, "--plan", str(plan), "--measured", str(MEASURED)],
    }


@pytest.mark.parametrize("command", ["launch", "deploy", "bench-command"])  # calibrate: the lengths differ first
def test_a_plan_for_another_cluster_is_refused(tmp_path: Path, command: str) -> None:
    """The 70B plan (TP 4 x DP 2 = 8 GPUs, 80 layers) against the 4-GPU, 126-layer 405B scenario."""
    result = run(*commands(LLAMA_PLAN, "llama-3.1-405b-4xh100", tmp_path)[command])
    assert result.exit_code == 2, result.output
    assert "not a plan for scenario llama-3.1-405b-4xh100 that its engine can start" in result.output
    assert "gpu_product [structural]" in result.output and "layer_split" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["launch", "deploy", "bench-command", "calibrate"])
def test_a_plan_that_does_not_fit_in_memory_is_refused(tmp_path: Path, command: str) -> None:
    doc = json.loads(LLAMA_PLAN.read_text())
    doc["plan"].update({"tp": 1, "dp": 8, "etp": 1, "edp": 8})  # 70B in BF16 on one 80 GiB H100 per replica
    for key in ("instances", "dp_per_instance"):
        doc["plan"].pop(key, None)
    plan = tmp_path / "tp1.json"
    plan.write_text(json.dumps(doc))
    result = run(*commands(plan, "llama-3.1-70b-8xh100", tmp_path)[command])
    assert result.exit_code == 2, result.output
    assert "memory_cap" in result.output and "[structural]" in result.output


def test_the_shipped_plan_itself_still_runs(tmp_path: Path) -> None:
    for args in commands(LLAMA_PLAN, "llama-3.1-70b-8xh100", tmp_path).values():
        result = run(*args)
        assert result.exit_code == 0, (args, result.output)


def test_deploy_into_a_path_under_a_file_exits_2(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("keep me\n")
    result = run("deploy", str(LLAMA_PLAN), "--scenario", "llama-3.1-70b-8xh100", "--out", str(blocker / "sub"))
    assert result.exit_code == 2, result.output
    assert "cannot write" in result.output and blocker.read_text() == "keep me\n"


@pytest.mark.parametrize("key, raw", [("mean_ttft_ms", "1" + "0" * 400), ("request_rate", "NaN"),
                                      ("mean_tpot_ms", "Infinity")])
def test_a_result_file_with_a_non_finite_number_exits_2(tmp_path: Path, key: str, raw: str) -> None:
    doc = json.loads(MEASURED.read_text())
    assert key in doc
    text = json.dumps({**doc, key: "@@"}).replace('"@@"', raw)  # json.loads reads 1e400-as-digits, NaN, Infinity
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    result = run("calibrate", "--scenario", "llama-3.1-70b-8xh100", "--plan", str(LLAMA_PLAN), "--measured", str(bad))
    assert result.exit_code == 2, result.output
    assert key in result.output and "Traceback" not in result.output


GB200 = {"name": "gb", "cluster": {"gpu": "gb200-nvl72", "num_nodes": 1}, "model": "Llama-3.1-70B",
         "workload": {"concurrent_sequences": 64, "input_tokens": 1024, "output_tokens": 256}, "engine": {"name": "vllm"}}


@pytest.mark.parametrize("command", ["launch", "deploy"])
def test_an_nvl72_rack_is_not_written_as_one_machine(tmp_path: Path, command: str) -> None:
    """GB200 NVL72: a 'node' is the 72-GPU NVLink domain of 18 hosts x 4 GPUs (catalog gpus_per_host), so a
    pod or process per node cannot be scheduled; launch and deploy say so (exit 1) instead of writing one."""
    import yaml

    scenario = tmp_path / "gb.yaml"
    scenario.write_text(yaml.safe_dump(GB200))
    plan = tmp_path / "gb.json"
    assert run("--scenario", str(scenario), "--json", str(plan)).exit_code == 0
    args = commands(plan, str(scenario), tmp_path)[command]
    result = run(*args)
    assert result.exit_code == 1, result.output
    assert "18 hosts x 4 GPUs (cluster.gpus_per_host)" in result.output and not (tmp_path / "out").exists()


def test_gpus_per_host_must_tile_the_node() -> None:
    from optimizer.errors import ScenarioError
    from optimizer.inputs.loader import scenario_from_dict

    assert scenario_from_dict(GB200).cluster.gpus_per_host == 4
    with pytest.raises(ScenarioError, match="gpus_per_host 5 must divide gpus_per_node 72"):
        scenario_from_dict({**GB200, "cluster": {"gpu": "gb200-nvl72", "num_nodes": 1, "gpus_per_host": 5}})
    one_box = scenario_from_dict({**GB200, "cluster": {"gpu": "h100-sxm", "num_nodes": 1}})
    assert one_box.cluster.gpus_per_host is None  # a node is one machine
    for per, host in ((1, None), (4, None), (8, 4), (6, 2), (36, 4)):  # a node drawn smaller than the rack
        cluster = {"gpu": "gb200-nvl72", "num_nodes": 1, "gpus_per_node": per}
        assert scenario_from_dict({**GB200, "cluster": cluster}).cluster.gpus_per_host == host, per


def test_a_fleet_pool_of_nvl72_racks_loads_and_gives_instances_their_hosts(tmp_path: Path) -> None:
    from optimizer.inputs.fleet import load_fleet

    fleet = yaml_fleet(tmp_path)
    pool = load_fleet(str(fleet)).pools[0]
    assert pool.gpus_per_host == 4
    assert pool.cluster(4).gpus_per_host is None  # one tray
    assert pool.cluster(8).gpus_per_host == 4 and pool.cluster(144).gpus_per_host == 4


def yaml_fleet(tmp_path: Path) -> Path:
    import yaml

    data = yaml.safe_load((ROOT / "fleets" / "chat-2x2.yaml").read_text())
    data["pools"] = [{"name": "gb200", "gpu": "gb200-nvl72", "num_nodes": 2, "cost_per_gpu_hour": 6}]
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("command", ["launch", "deploy", "bench-command"])
def test_the_plan_file_of_a_scenario_without_a_plan_exits_1(tmp_path: Path, command: str) -> None:
    doc = tmp_path / "none.json"
    assert run("--scenario", "llama-3.1-405b-4xh100", "--json", str(doc)).exit_code == 1
    result = run(*commands(doc, "llama-3.1-405b-4xh100", tmp_path)[command])
    assert result.exit_code == 1, result.output
    assert "has no feasible plan" in result.output and not (tmp_path / "out").exists()


def test_tensorrt_llm_on_an_amd_gpu_is_refused_at_load() -> None:
    from optimizer.errors import ScenarioError
    from optimizer.inputs.loader import scenario_from_dict

    amd = {**GB200, "cluster": {"gpu": "mi300x", "num_nodes": 1}, "engine": {"name": "tensorrt-llm"}}
    with pytest.raises(ScenarioError, match="TensorRT-LLM runs on NVIDIA GPUs only") as exc:
        scenario_from_dict(amd)
    assert exc.value.field == "engine.name"
    assert scenario_from_dict({**amd, "engine": {"name": "vllm"}}).cluster.gpu.name == "mi300x"


def test_a_zero_efficiency_in_a_calibration_is_refused() -> None:
    """A 0 efficiency or sustained share makes every time infinite; the error names the calibration field,
    not the scenario's bandwidths (review of issue 13). Launch times and overheads may be 0."""
    import copy

    from optimizer.errors import OptimizerError
    from optimizer.inputs.catalog import calibration_data
    from optimizer.model.calibration import calibration_from_dict

    data = copy.deepcopy(calibration_data())
    data["gpus"]["h100-sxm"]["attention"]["decode_memory_efficiency"] = 0
    with pytest.raises(OptimizerError, match=r"h100-sxm.attention.decode_memory_efficiency = 0: an efficiency must be > 0"):
        calibration_from_dict(data)
    data = copy.deepcopy(calibration_data())
    data["gpus"]["h100-sxm"]["attention"]["decode_launch_us"] = 0
    calibration_from_dict(data)  # a zero launch time is a value, not an error


def test_a_calibration_file_with_a_zero_sustained_share_exits_2(tmp_path: Path) -> None:
    import yaml

    cal = tmp_path / "cal.yaml"
    assert run("calibrate", "--scenario", "llama-3.1-70b-8xh100", "--plan", str(LLAMA_PLAN), "--measured", str(MEASURED),
               "--out", str(cal)).exit_code == 0
    data = yaml.safe_load(cal.read_text())
    data["step"]["sustained_compute"] = 0
    cal.write_text(yaml.safe_dump(data))
    scenario = yaml.safe_load((ROOT / "scenarios" / "llama-3.1-70b-8xh100.yaml").read_text())
    scenario["engine"] = {**scenario.get("engine", {}), "calibration_file": str(cal)}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scenario))
    result = run("--scenario", str(tmp_path / "s.yaml"))
    assert result.exit_code == 2, result.output
    assert "step.sustained_compute" in result.output and "> 0" in result.output
