"""Inputs and outputs a user can trust (issue 14, items 8 and 9): hostile YAML fails fast with exit 2 and a
short message naming the file, and no output ever replaces an input, leaves a 0600 file or silently
replaces a symbolic link."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from optimizer.cli import main
from optimizer.inputs.loader import MAX_INPUT_BYTES, read_mapping
from optimizer.errors import ScenarioError

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "16gpu-30b.yaml"
CONFIG = ROOT / "tests" / "data" / "Qwen3-30B-A3B" / "config.json"


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def _bomb(levels: int) -> str:
    """A "billion laughs": each level nine aliases of the one before (324 bytes for 9^9 values)."""
    text, previous = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n', "a"
    for name in "bcdefghijklmnop"[:levels - 1]:
        text += f"{name}: &{name} [" + ",".join([f"*{previous}"] * 9) + "]\n"
        previous = name
    return text


@pytest.mark.parametrize("content, says", [
    (_bomb(9), "more than 100,000 values once YAML anchors and aliases are expanded"),
    ("cluster: " + "[" * 40 + "]" * 40 + "\n", "nested"),
    (SCENARIO.read_text() + "\nname: twice\n", "the key 'name' appears twice"),
    ('{"name": "a", "name": "b"}', "the key 'name' appears twice"),
    (SCENARIO.read_text().replace("input_tokens:", "input_tokens: 1:0 #", 1), "got '1:0'"),
])
def test_hostile_yaml_fails_fast_and_short(tmp_path, content, says):
    path = tmp_path / "hostile.yaml"
    path.write_text(content)
    start = time.perf_counter()
    result = run("--scenario", str(path))
    assert time.perf_counter() - start < 1.0
    assert result.exit_code == 2 and says in result.output and str(path) in result.output
    assert len(result.output) < 1000 and "Traceback" not in result.output


def test_base_60_is_text_not_a_number():
    """YAML 1.1 reads 1:0 as 60; YAML 1.2 and JSON as text. The loader follows 1.2."""
    assert yaml.safe_load("x: 1:0") == {"x": 60}  # what PyYAML alone would do
    path = Path(__file__).parent / "data" / "core" / "fuzz-368.yaml"
    assert read_mapping(path)["workload"]["input_tokens"] == 32768


def test_a_device_and_a_huge_file_are_refused(tmp_path):
    result = run("--scenario", "/dev/zero")
    assert result.exit_code == 2 and "not a regular file" in result.output
    big = tmp_path / "big.yaml"
    big.write_bytes(b"# " + b"x" * MAX_INPUT_BYTES + b"\n")
    with pytest.raises(ScenarioError, match="a few KiB"):
        read_mapping(big)


def test_an_empty_output_path_is_refused():
    result = run("--scenario", "16gpu-30b", "--json", "")
    assert result.exit_code == 2 and "empty path" in result.output


def test_no_output_replaces_the_model_config(tmp_path):
    config = tmp_path / "config.json"
    shutil.copy(CONFIG, config)
    before = config.read_bytes()
    result = run("--scenario", "qwen3-30b-a3b-8xh100", "--model-config", str(config), "--json", str(config))
    assert result.exit_code == 2 and "refusing to overwrite the input file" in result.output
    assert config.read_bytes() == before


def test_no_output_replaces_the_config_json_a_scenario_names(tmp_path):
    config = tmp_path / "config.json"
    shutil.copy(CONFIG, config)
    data = yaml.safe_load((ROOT / "scenarios" / "qwen3-30b-a3b-8xh100.yaml").read_text())
    data["model"] = {"config_json": "config.json"}
    scenario = tmp_path / "s.yaml"
    scenario.write_text(yaml.safe_dump(data))
    before = config.read_bytes()
    result = run("--scenario", str(scenario), "--json", str(config))
    assert result.exit_code == 2 and "refusing to overwrite the input file" in result.output
    assert config.read_bytes() == before


def test_outputs_follow_the_umask_and_write_through_links(tmp_path):
    old = os.umask(0o022)
    try:
        out = tmp_path / "plan.json"
        assert run("--scenario", "16gpu-30b", "--json", str(out)).exit_code == 0
        assert out.stat().st_mode & 0o777 == 0o644
        target, link = tmp_path / "real.json", tmp_path / "link.json"
        target.write_text("{}")
        link.symlink_to(target)
        assert run("--scenario", "16gpu-30b", "--json", str(link)).exit_code == 0
        assert link.is_symlink() and '"schema_version"' in target.read_text()
    finally:
        os.umask(old)


@pytest.mark.parametrize("gpu, expected", [("H100", "h100-sxm"), ("h100", "h100-sxm"), ("H100-SXM5-80GB", "h100-sxm"),
                                           ("NVIDIA H100 80GB HBM3", "h100-sxm"), ("H200", "h200-sxm"), ("A100 40GB", "a100-sxm-40gb")])
@pytest.mark.parametrize("model, expected_model", [("Qwen/Qwen3-30B-A3B", "Qwen3-30B-A3B"), ("meta-llama/Llama-3.1-70B", "Llama-3.1-70B"),
                                                   ("llama-3.1-70b", "Llama-3.1-70B")])
def test_names_people_type_resolve_to_the_catalog(gpu, expected, model, expected_model):
    """Issue 14 item 2: Hugging Face repo ids and the GPU spellings of vendor pages and nvidia-smi."""
    from optimizer.inputs.loader import scenario_from_dict

    s = scenario_from_dict({"name": "n", "cluster": {"gpu": gpu, "num_nodes": 1}, "model": model,
                            "workload": {"concurrent_sequences": 1, "input_tokens": 16, "output_tokens": 16}})
    assert s.cluster.gpu.name == expected and s.model.name == expected_model
    inline = scenario_from_dict({"name": "n", "cluster": {"gpu": {"name": gpu, "memory_bytes": 10**11}, "num_nodes": 1},
                                 "model": model, "workload": {"concurrent_sequences": 1, "input_tokens": 16, "output_tokens": 16}})
    assert inline.cluster.gpu.name == expected and inline.cluster.gpu.memory_bytes == 10**11


def test_an_unknown_name_gets_did_you_mean(tmp_path):
    data = yaml.safe_load(SCENARIO.read_text())
    data["cluster"]["gpu"] = "H210"  # no such GPU (the catalog has H20 and H200)
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    result = run("--scenario", str(path))
    assert result.exit_code == 2 and "unknown GPU 'H210' (did you mean" in result.output and "h200-sxm" in result.output
    data["cluster"]["gpu"], data["model"] = "h100", "Qwen3-31B"
    path.write_text(yaml.safe_dump(data))
    result = run("--scenario", str(path))
    assert result.exit_code == 2 and "(did you mean Qwen3-32B or Qwen3-14B or Qwen3-1.7B?)" in result.output


def test_the_fewest_gpu_answer_tries_nodes_of_8_and_says_what_it_varied(tmp_path):
    """Issue 14 item 6: Llama-3.1-70B on 1-GPU nodes cannot meet its TPOT at any count (TP stays 1), one
    node of 8 can: the diagnosis proposes the node shape and says what it varied."""
    # TP kept in a node (vLLM would span 1-GPU nodes by default: 12 of them over InfiniBand then admit a plan)
    data = {"name": "llama70-1gpu-nodes", "cluster": {"gpu": "h100-sxm", "num_nodes": 4, "gpus_per_node": 1,
                                                      "allow_tp_across_nodes": False},
            "model": "Llama-3.1-70B", "workload": {"concurrent_sequences": 64, "input_tokens": 2048, "output_tokens": 256},
            "targets": {"tpot_s": 0.05}, "engine": {"name": "vllm"}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    out = tmp_path / "plan.json"
    result = run("--scenario", str(path), "--json", str(out))
    assert result.exit_code == 1
    assert "nodes of 8 GPUs instead of 1: GPUs: 8 x h100-sxm" in result.output and "in nodes of 1 GPU admits a plan" in result.output
    import json
    change = json.loads(out.read_text())["infeasible"]["changes"][0]
    assert change["field"] == "cluster.gpus_per_node" and change["proposed"] == 8


def test_exact_numbers_survive_a_json_round_trip():
    """A fraction that is no short decimal (1/3) is written as "1/3", not as a float that reads back as
    3333333333333333/10**16 (the diagnosis rebuilds scenarios from their JSON)."""
    import json
    from fractions import Fraction

    from optimizer.inputs.loader import load_scenario, scenario_from_dict

    scenario = load_scenario("16gpu-30b")
    third = scenario.model_copy(update={"targets": scenario.targets.model_copy(update={"tpot_s": Fraction(1, 3)})})
    dumped = third.model_dump(mode="json")
    assert dumped["targets"]["tpot_s"] == "1/3" and dumped["search"]["gpu_memory_utilization"] == 0.9
    again = scenario_from_dict(json.loads(json.dumps(dumped)))
    assert again.targets.tpot_s == Fraction(1, 3) and again.search.gpu_memory_utilization == Fraction(9, 10)
