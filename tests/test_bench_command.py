"""``optimize bench-command``: for every shipped scenario with a plan (the frozen plans of tests/golden, no
solve), each tool's command line uses only the flags its source defines (optimizer/outputs/bench.py
FLAGS, cited there), with the scenario's ISL, OSL and the plan's concurrency, and names its result file;
a scenario with no plan exits 1."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from optimizer.cli import main
from optimizer.inputs.loader import load_scenario, shipped_scenarios
from optimizer.inputs.scenario import Objective
from optimizer.outputs.bench import FLAGS, PROGRAM, bench_command, served_concurrency

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"
WITH_PLAN = sorted(n for n in shipped_scenarios() if json.loads((GOLDEN / f"{n}.json").read_text()).get("plan"))
WITHOUT_PLAN = sorted(set(shipped_scenarios()) - set(WITH_PLAN))
# The value each tool's flag must carry, from the scenario (ISL, OSL) and the plan (concurrency).
LENGTH_FLAGS = {"vllm": ("--random-input-len", "--random-output-len", "--max-concurrency"),
                "sglang": ("--random-input-len", "--random-output-len", "--max-concurrency"),
                "genai-perf": ("--synthetic-input-tokens-mean", "--output-tokens-mean", "--concurrency")}


def parse(argv: list[str], tool: str) -> dict[str, str | bool]:
    """The flags of ``argv`` after the tool's program words, checked against FLAGS: known, each value-taking
    flag followed by a value, no flag twice, no stray word."""
    program = PROGRAM[tool]
    assert tuple(argv[: len(program)]) == program
    rest, flags = argv[len(program):], {}
    i = 0
    while i < len(rest):
        flag = rest[i]
        assert flag in FLAGS[tool], f"{tool} has no flag {flag}"
        assert flag not in flags, f"{flag} twice"
        if FLAGS[tool][flag]:
            assert i + 1 < len(rest) and not rest[i + 1].startswith("--"), f"{flag} lacks its value"
            flags[flag] = rest[i + 1]
            i += 2
        else:
            flags[flag] = True
            i += 1
    return flags


def run(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("name", WITH_PLAN)
@pytest.mark.parametrize("tool", ["vllm", "sglang", "genai-perf"])
def test_every_plan_gets_a_runnable_benchmark(name: str, tool: str) -> None:
    result = run("bench-command", str(GOLDEN / f"{name}.json"), "--scenario", name, "--tool", tool)
    assert result.exit_code == 0, result.output
    scenario = load_scenario(name)
    plan = json.loads((GOLDEN / f"{name}.json").read_text())["plan"]
    command_lines = [line for line in result.output.splitlines() if not line.startswith("#")]
    assert len(command_lines) == 1
    flags = parse(shlex.split(command_lines[0]), tool)
    isl, osl, conc = LENGTH_FLAGS[tool]
    assert flags[isl] == str(scenario.workload.input_tokens)
    assert flags[osl] == str(scenario.workload.output_tokens)
    assert flags[conc] == str(served_concurrency(scenario, plan))
    count = flags.get("--num-prompts", flags.get("--request-count"))
    assert int(count) >= int(flags[conc])  # every slot is filled more than once
    output = {"vllm": flags.get("--result-filename"), "sglang": flags.get("--output-file"),
              "genai-perf": flags.get("--profile-export-file")}[tool]
    assert output and name in output and output.split(".")[0] in result.output.splitlines()[0]


@pytest.mark.parametrize("name", WITHOUT_PLAN)
def test_a_scenario_without_a_plan_has_nothing_to_measure(name: str) -> None:
    result = run("bench-command", str(GOLDEN / f"{name}.json"), "--scenario", name)
    assert result.exit_code == 1
    assert "no feasible plan" in result.output


def test_the_default_tool_is_the_engines_own_and_the_port_its_server() -> None:
    expected = {"vllm": ("vllm", "8000"), "sglang": ("sglang", "30000"), "tensorrt-llm": ("genai-perf", "8000")}
    seen = set()
    for name in WITH_PLAN:
        scenario = load_scenario(name)
        engine = scenario.engine.name.value
        if engine not in expected or engine in seen:
            continue
        seen.add(engine)
        result = run("bench-command", str(GOLDEN / f"{name}.json"), "--scenario", name)
        assert result.exit_code == 0, result.output
        tool, port = expected[engine]
        line = next(l for l in result.output.splitlines() if not l.startswith("#"))
        flags = parse(shlex.split(line), tool)
        assert flags.get("--port", flags.get("--url", "").rsplit(":", 1)[-1]) == port
    assert seen == set(expected)


def test_the_claim_printed_is_the_plans_estimate() -> None:
    name = "qwen3-30b-a3b-8xh100"
    estimate = json.loads(run("estimate", str(GOLDEN / f"{name}.json"), "--scenario", name, "--json", "-").output)
    result = run("bench-command", str(GOLDEN / f"{name}.json"), "--scenario", name)
    assert f"TTFT {estimate['ttft_s'] * 1e3:.1f} ms" in result.output
    assert f"TPOT {estimate['tpot_s'] * 1e3:.2f} ms" in result.output


def test_a_rate_scenario_offers_its_rate_not_a_concurrency() -> None:
    scenario = load_scenario("qwen3-30b-a3b-8xh100")
    rate = scenario.model_copy(update={
        "search": scenario.search.model_copy(update={"objective": Objective.FEWEST_GPUS}),
        "targets": scenario.targets.model_copy(update={"request_rate_per_s": 12.5})})
    plan = json.loads((GOLDEN / "qwen3-30b-a3b-8xh100.json").read_text())["plan"]
    doc = {"plan": {**plan, "engine": "vllm"}, "estimate": {"ttft_s": 0.1, "tpot_s": 0.01, "output_tokens_per_s": 1000.0}}
    for tool in ("vllm", "sglang", "genai-perf"):
        command = bench_command(doc, scenario=rate, tool=tool)
        flags = parse(list(command.argv), tool)
        assert flags["--request-rate"] == "12.5"
        assert "--max-concurrency" not in flags and "--concurrency" not in flags
        assert command.concurrency is None and command.num_prompts >= 60 * 12.5


def test_bad_input_exits_2() -> None:
    assert run("bench-command", "no-such-plan.json", "--scenario", "qwen3-30b-a3b-8xh100").exit_code == 2
    assert run("bench-command", "--scenario", "no-such-scenario").exit_code == 2
    bad_tool = run("bench-command", str(GOLDEN / "qwen3-30b-a3b-8xh100.json"), "--scenario", "qwen3-30b-a3b-8xh100", "--tool", "ab")
    assert bad_tool.exit_code == 2
