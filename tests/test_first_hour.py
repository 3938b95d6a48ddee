"""Issue 14, the first hour: what a new user meets before any plan is read.

Each test here failed on the main branch the issue was filed against.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project built as a wheel, as `pip install .` builds it (no build isolation: no network), from a
    copy of the tracked files so that no stale build/ folder of the checkout leaks into it."""
    out = tmp_path_factory.mktemp("wheel")
    source = tmp_path_factory.mktemp("source") / "optimizer"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(source)], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(source)],
                   check=True, capture_output=True, cwd=out)
    (built,) = out.glob("optimizer-*.whl")
    return built


def test_a_wheel_ships_every_scenario_and_fleet(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for folder in ("scenarios", "fleets"):
        shipped = sorted(p.name for p in (ROOT / folder).glob("*.yaml"))
        packed = sorted(Path(n).name for n in names if n.startswith(f"optimizer/inputs/{folder}/"))
        assert shipped and packed == shipped, folder


def test_a_non_editable_install_lists_and_plans_shipped_scenarios(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import optimizer; print(optimizer.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(target))  # the installed copy, not the checkout
    listed = subprocess.run([sys.executable, "-m", "optimizer.cli", "scenarios"], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and "16gpu-30b" in listed.stdout
    planned = subprocess.run([sys.executable, "-m", "optimizer.cli", "--scenario", "16gpu-30b"], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=120)
    assert planned.returncode == 0, planned.stderr
    assert "proved optimal" in planned.stdout.lower() or "optimal" in planned.stdout
    fleet = subprocess.run([sys.executable, "-m", "optimizer.cli", "fleet", "chat-2x2"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=120)
    assert fleet.returncode == 0, fleet.stderr


# --- item 3: a config.json pasted inline reads as the file does -------------------------------------------------

QWEN_CONFIG = ROOT / "tests" / "data" / "Qwen3-30B-A3B" / "config.json"


def _scenario_with_model(model: object) -> dict:
    import yaml

    data = yaml.safe_load((ROOT / "scenarios" / "qwen3-30b-a3b-8xh100.yaml").read_text())
    data["model"] = model
    return data


def _plan(tmp_path: Path, data: dict, name: str) -> dict:
    import json

    import yaml
    from click.testing import CliRunner

    from optimizer.cli import main

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["--scenario", str(path), "--json", "-"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_a_config_json_pasted_inline_plans_as_the_file_does(tmp_path: Path) -> None:
    import json

    pasted = json.loads(QWEN_CONFIG.read_text())
    assert {"architectures", "model_type", "torch_dtype", "rope_theta"} <= set(pasted)
    inline = _plan(tmp_path, _scenario_with_model(pasted), "inline")
    by_file = _plan(tmp_path, _scenario_with_model({"config_json": str(QWEN_CONFIG)}), "file")
    assert inline["plan"] == by_file["plan"]
    assert inline["estimate"] == by_file["estimate"]
    (note,) = [n for n in inline["plan"]["notes"] if n.startswith("config.json fields")]
    for key in ("model_type", "rope_theta", "torch_dtype", "bos_token_id"):
        assert key in note
    assert "workload.weight_dtype" in note  # torch_dtype is not how the weights are counted: said so
    assert "hidden_size" not in note and "architectures" not in note  # read, so not listed as ignored


def test_our_own_model_form_stays_strict_about_unknown_fields(tmp_path: Path) -> None:
    from click.testing import CliRunner

    import yaml

    from optimizer.cli import main

    data = _scenario_with_model({"name": "Qwen3-30B-A3B", "num_hiden_layers": 12})
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data))
    result = CliRunner().invoke(main, ["--scenario", str(path)])
    assert result.exit_code == 2 and "num_hiden_layers" in result.output and "unknown field" in result.output


def test_an_unsupported_architecture_pasted_inline_names_the_field(tmp_path: Path) -> None:
    import json

    import yaml
    from click.testing import CliRunner

    from optimizer.cli import main

    pasted = {**json.loads(QWEN_CONFIG.read_text()), "architectures": ["MambaForCausalLM"]}
    path = tmp_path / "mamba.yaml"
    path.write_text(yaml.safe_dump(_scenario_with_model(pasted)))
    result = CliRunner().invoke(main, ["--scenario", str(path)])
    assert result.exit_code == 2 and "model.architectures" in result.output and "MambaForCausalLM" in result.output


# --- item 4: engine switches in flag form -------------------------------------------------------------------------


def _invoke(*args: str):
    from click.testing import CliRunner

    from optimizer.cli import main

    return CliRunner().invoke(main, list(args))


def _sizes(output: str) -> str:
    (line,) = [ln for ln in output.splitlines() if ln.strip().startswith("TP ")]
    return " ".join(line.split())


def test_sglang_dp_attention_flags_read_as_its_plan_file(tmp_path: Path) -> None:
    plan = tmp_path / "sglang.yaml"
    plan.write_text("--tp-size: 8\n--dp-size: 8\nenable_dp_attention: true\n")
    by_file = _invoke("verify", str(plan), "--scenario", "deepseek-v3-8xh200-sglang")
    by_flags = _invoke("verify", "--scenario", "deepseek-v3-8xh200-sglang", "--tp-size", "8", "--enable-dp-attention", "--dp-size", "8")
    assert by_flags.exit_code == by_file.exit_code == 0, by_flags.output
    assert _sizes(by_flags.output) == _sizes(by_file.output) == "TP 1 PP 1 DP 8 | EP 1 ETP 8 EDP 1 | instances 1"
    newer = _invoke("verify", "--scenario", "deepseek-v3-8xh200-sglang", "--tp-size", "8", "--attn-dp-size", "8")
    assert _sizes(newer.output) == _sizes(by_flags.output)


def test_tensorrt_llm_attention_dp_flag(tmp_path: Path) -> None:
    result = _invoke("estimate", "--scenario", "deepseek-v3-8xb200-trtllm", "--tp-size", "8", "--enable-attention-dp", "--json", "-")
    assert result.exit_code == 0, result.output
    import json

    plan = json.loads(result.stdout)["plan"]
    assert (plan["tp"], plan["dp"], plan["etp"] * plan["ep"]) == (1, 8, 8)


def test_vllm_enable_expert_parallel_flag_sets_the_engine_switch(tmp_path: Path) -> None:
    import yaml

    data = yaml.safe_load((ROOT / "scenarios" / "mixtral-8x7b-8xh100.yaml").read_text())
    data["engine"]["enable_expert_parallel"] = False
    path = tmp_path / "mixtral-no-ep.yaml"
    path.write_text(yaml.safe_dump(data))
    without = _invoke("verify", "--scenario", str(path), "--tp", "8")
    with_ep = _invoke("verify", "--scenario", str(path), "--tensor-parallel-size", "8", "--enable-expert-parallel")
    assert "EP 1 ETP 8" in _sizes(without.output)
    assert "EP 8 ETP 1" in _sizes(with_ep.output)
    assert "enable_expert_parallel true as the plan states" in with_ep.stderr
    plan = tmp_path / "vllm-plan.yaml"
    plan.write_text("tensor_parallel_size: 8\nenable_expert_parallel: true\n")
    assert _sizes(_invoke("verify", str(plan), "--scenario", str(path)).output) == _sizes(with_ep.output)


def test_an_engine_switch_for_another_engine_is_bad_input() -> None:
    result = _invoke("verify", "--scenario", "deepseek-v3-8xh200-sglang", "--tp-size", "8", "--enable-expert-parallel")
    assert result.exit_code == 2 and "enable_expert_parallel" in result.output and "sglang" in result.output
    result = _invoke("verify", "--scenario", "qwen3-30b-a3b-8xh100", "--tp", "8", "--enable-dp-attention")
    assert result.exit_code == 2 and "enable_dp_attention" in result.output


# --- item 5: TP across nodes follows the engine -------------------------------------------------------------------


def _two_node(tmp_path: Path, base: str, *, engine: dict | None = None, inter_node_bytes_per_s: int | None = None,
              name: str = "two-node") -> Path:
    import yaml

    data = yaml.safe_load((ROOT / "scenarios" / f"{base}.yaml").read_text())
    data["cluster"]["num_nodes"] = 2
    data["targets"] = {}  # the structural rules are the question here, not this scenario's SLA
    if engine is not None:
        data["engine"] = engine
    if inter_node_bytes_per_s is not None:
        data["cluster"]["inter_node_link"] = {"bandwidth_bytes_per_s": inter_node_bytes_per_s, "latency_us": 6.0}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_sglang_two_node_tp16_recipe_verifies_on_the_inter_node_link(tmp_path: Path) -> None:
    import json

    # SGLang's documented two-node DeepSeek-V3 launch: --tp 16 --nnodes 2 (docs.sglang.io, basic_usage/deepseek).
    slow = _two_node(tmp_path, "deepseek-v3-8xh200-sglang", inter_node_bytes_per_s=50_000_000_000, name="slow")
    fast = _two_node(tmp_path, "deepseek-v3-8xh200-sglang", inter_node_bytes_per_s=400_000_000_000, name="fast")
    result = _invoke("verify", "--scenario", str(slow), "--tp", "16", "--nnodes", "2")
    assert result.exit_code == 0, result.output
    assert "TP = 16 must span whole nodes of 8 GPUs" in result.output
    tpot = {}
    for name, path in (("slow", slow), ("fast", fast)):
        out = _invoke("estimate", "--scenario", str(path), "--tp", "16", "--json", "-")
        tpot[name] = json.loads(out.stdout)["tpot_s"]
    assert tpot["fast"] < tpot["slow"]  # the TP all-reduce crosses the inter-node link
    wrong = _invoke("verify", "--scenario", str(slow), "--tp", "16", "--nnodes", "1")
    assert wrong.exit_code == 2 and "nnodes" in wrong.output


def test_where_tp_may_not_span_nodes_the_message_names_the_switch(tmp_path: Path) -> None:
    megatron = _two_node(tmp_path, "deepseek-v3-8xh200-sglang", engine={"name": "megatron"})
    result = _invoke("verify", "--scenario", str(megatron), "--tp", "16")
    assert result.exit_code == 1
    assert "tp_within_node" in result.output and "cluster.allow_tp_across_nodes" in result.output


def test_the_engine_default_for_tp_across_nodes_is_written_into_the_plan() -> None:
    from optimizer.inputs.loader import load_scenario

    assert load_scenario("deepseek-v3-8xh200-sglang").cluster.allow_tp_across_nodes is True
    assert load_scenario("16gpu-30b").cluster.allow_tp_across_nodes is False  # Megatron-Core


# --- item 1: one line, no YAML ----------------------------------------------------------------------------------

ONE_LINE = ["--model", "Qwen/Qwen3-30B-A3B", "--gpu", "H100", "--gpus", "8", "--isl", "2048", "--osl", "512",
            "--ttft-ms", "2000", "--tpot-ms", "50"]


def test_one_line_plans_as_the_scenario_it_prints(tmp_path: Path) -> None:
    import json

    import yaml

    printed = _invoke(*ONE_LINE, "--print-scenario")
    assert printed.exit_code == 0, printed.output
    data = yaml.safe_load(printed.stdout)
    assert data["cluster"] == {"gpu": "h100-sxm", "num_nodes": 1, "gpus_per_node": 8}
    assert data["targets"] == {"ttft_s": 2, "tpot_s": 0.05}
    assert data["engine"] == {"name": "vllm"} and data["search"]["objective"] == "output_tokens_per_s_per_gpu"
    path = tmp_path / "edited.yaml"
    path.write_text(printed.stdout)
    from_flags = _invoke(*ONE_LINE, "--json", "-")
    from_file = _invoke("--scenario", str(path), "--json", "-")
    assert from_flags.exit_code == from_file.exit_code == 0, from_flags.output
    a, b = json.loads(from_flags.stdout), json.loads(from_file.stdout)
    assert a["plan"] == b["plan"] and a["estimate"] == b["estimate"] and a["evidence"]["proved_optimal"]


def test_one_line_objective_and_concurrency_flags() -> None:
    import yaml

    data = yaml.safe_load(_invoke(*ONE_LINE[:10], "--objective", "tpot", "--concurrency", "32", "--engine", "sglang",
                                  "--gpus-per-node", "4", "--print-scenario").stdout)
    assert data["search"]["objective"] == "tpot" and data["workload"]["concurrent_sequences"] == 32
    assert data["engine"]["name"] == "sglang" and data["cluster"]["num_nodes"] == 2
    no_target = yaml.safe_load(_invoke(*ONE_LINE[:10], "--print-scenario").stdout)
    assert no_target["search"]["objective"] == "request_latency" and no_target["targets"] == {}


def test_every_question_command_takes_the_one_line_form(tmp_path: Path) -> None:
    import json

    verified = _invoke("verify", *ONE_LINE, "--tp", "2", "--dp", "4")
    assert verified.exit_code == 0 and "TP 2  PP 1  DP 4" in verified.output
    estimated = json.loads(_invoke("estimate", *ONE_LINE, "--tp", "8", "--json", "-").stdout)
    assert estimated["plan"]["tp"] == 8
    capacity = json.loads(_invoke("capacity", *ONE_LINE, "--rate", "5", "--json", "-").stdout)
    assert capacity["winner"] in ("aggregated", "disaggregated")
    disagg = _invoke("disagg", *ONE_LINE, "--json", "-")
    assert disagg.exit_code == 0 and json.loads(disagg.stdout)["winner"]
    pareto = _invoke("pareto", *ONE_LINE, "--out", str(tmp_path / "p"))
    assert pareto.exit_code == 0 and list((tmp_path / "p").glob("*-pareto.csv"))


def test_one_line_mistakes_are_bad_input_with_the_flag() -> None:
    cases = [
        (["--model", "Qwen3-30B-A3B", "--gpu", "h100"], "--gpus, --isl, --osl"),
        ([*ONE_LINE[:4], "--gpus", "12", *ONE_LINE[6:]], "--gpus: 12 GPUs are not whole nodes of 8"),
        (["--model", "Qwen3-30B", *ONE_LINE[2:]], "did you mean Qwen3-30B-A3B"),
        (["--model", *ONE_LINE[1:2], "--gpu", "H100-SXM5-80GB", *ONE_LINE[4:], "--scenario", "16gpu-30b"], "not both"),
        (["verify", "--tp", "2"], "give --scenario NAME|PATH or a one-line question"),
        (["--scenario", "16gpu-30b", "--print-scenario"], "--print-scenario writes the scenario the one-line flags build"),
    ]
    for args, message in cases:
        result = _invoke(*args)
        assert result.exit_code == 2 and message in result.output, (args, result.output)


# --- item 15: start-up ---------------------------------------------------------------------------------------------

_PROBE = """
import sys
from click.testing import CliRunner
from optimizer.cli import main
result = CliRunner().invoke(main, sys.argv[1:])
print(result.exit_code, sorted(m for m in ("ortools", "matplotlib", "ray") if m in sys.modules))
"""


@pytest.mark.parametrize(("args", "loaded"), [
    (["--help"], []),
    (["verify", "--help"], []),
    (["verify", "--scenario", "16gpu-30b", "--tp", "1", "--dp", "16", "--ep", "4", "--etp", "4"], []),
    (["estimate", "--scenario", "16gpu-30b", "--tp", "1", "--dp", "16", "--ep", "4", "--etp", "4"], []),
    (["schema", "scenario"], []),
    (["--scenario", "16gpu-30b"], ["ortools"]),  # the probe itself: a command that solves does load it
])
def test_commands_that_do_not_solve_do_not_load_the_solver(args: list[str], loaded: list[str]) -> None:
    """A fresh interpreter per command (nothing imported by other tests): which heavy packages it loads."""
    out = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    code, modules = out.stdout.strip().split(" ", 1)
    assert code == "0", out.stdout + out.stderr
    assert modules == str(loaded)


def test_yaml_is_read_with_the_c_loader_where_pyyaml_has_it() -> None:
    import yaml

    from optimizer.inputs.loader import _StrictLoader

    if hasattr(yaml, "CSafeLoader"):
        assert issubclass(_StrictLoader, yaml.CSafeLoader)
    else:  # pragma: no cover (a PyYAML built without libyaml)
        assert issubclass(_StrictLoader, yaml.SafeLoader)
