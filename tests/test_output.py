"""What people read first (issue 14 item 14): `estimate` and `verify` of a plan that breaks a structural
rule list the failing rules, numbered and with their integers, before anything else and mark the estimate
as for a plan that cannot run (JSON: `runnable`, `failing_rules`); `--top` gives each plan's gap in ms or
% and its engine instances; the README names the schema version the code writes."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

import pytest
from click.testing import CliRunner

from optimizer.cli import main
from optimizer.inputs.loader import load_scenario
from optimizer.inputs.schema import SCHEMA_VERSION, PlanDocument
from optimizer.search.solve import optimize
from optimizer.search.verify import certify

ROOT = Path(__file__).resolve().parent.parent
BROKEN = ("--scenario", "3gpu-32gb", "--tp", "3")  # Llama-3.1-8B: 32 heads, 8 KV heads, FFN 14336 over TP 3
BROKEN_RULES = ["attention_heads_divisible", "kv_heads_divisible", "dense_ffn_divisible"]


@pytest.fixture
def run():
    def invoke(*args):
        result = CliRunner().invoke(main, list(args), catch_exceptions=False)
        assert "Traceback" not in result.output
        return result

    return invoke


def test_estimate_of_a_broken_plan_lists_the_failing_rules_first(run):
    result = run("estimate", *BROKEN)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "This plan cannot run: it breaks 3 rule(s), 3 of them structural (the engine cannot start it as written):"
    for number, (line, name) in enumerate(zip(lines[1:4], BROKEN_RULES), start=1):
        assert line.startswith(f"  {number}. {name} [structural]: ")
    assert "2 == 0 is false (num_attention_heads % tp == 0)" in lines[1]  # 32 % 3 = 2, the integers
    assert "Estimate for 3gpu-32gb, for a plan that cannot run: TP 3" in result.stdout
    assert result.stdout.index("This plan cannot run") < result.stdout.index("prefill step")


def test_estimate_json_says_runnable_and_names_the_failing_rules(run):
    doc = json.loads(run("estimate", *BROKEN, "--json", "-").stdout)
    assert doc["runnable"] is False and doc["plan_holds"] is False
    assert [(r["number"], r["name"], r["structural"]) for r in doc["failing_rules"]] == [
        (i, name, True) for i, name in enumerate(BROKEN_RULES, start=1)]
    first = doc["failing_rules"][0]
    assert (first["lhs"], first["op"], first["rhs"]) == (2, "==", 0)
    sound = json.loads(run("estimate", "--scenario", "3gpu-32gb", "--json", "-").stdout)
    assert sound["runnable"] is True and sound["failing_rules"] == []
    assert "cannot run" not in run("estimate", "--scenario", "3gpu-32gb").stdout


def test_verify_of_a_broken_plan_lists_the_failing_rules_first(run, tmp_path):
    result = run("verify", *BROKEN, "--json", str(tmp_path / "v.json"))
    assert result.exit_code == 1
    assert result.stdout.startswith("This plan cannot run: it breaks 3 rule(s)")
    assert "Verified plan for 3gpu-32gb: 3 x a100-like-32gb (1 node(s) x 3), engine megatron; the estimate is for a plan " \
           "that cannot run" in result.stdout
    assert result.stderr.startswith("the plan breaks 3 rule(s):\n  - attention_heads_divisible: ")  # the exit reason
    doc = json.loads((tmp_path / "v.json").read_text())
    PlanDocument.model_validate(doc)
    cert = doc["certificate"]
    assert cert["runnable"] is False and [r["name"] for r in cert["failing_rules"]] == BROKEN_RULES
    # JSON on stdout: nothing else there; the exit reason still names each rule with its integers
    piped = run("verify", *BROKEN, "--json", "-")
    assert piped.exit_code == 1 and json.loads(piped.stdout)["certificate"]["runnable"] is False
    assert "attention_heads_divisible: num_attention_heads = 32 is not divisible by TP = 3" in piped.stderr
    assert "(2 == 0 is false)" in piped.stderr


def test_a_plan_that_misses_only_a_target_runs():
    scenario = load_scenario("3gpu-32gb")
    plan = optimize(scenario).plan
    strict = scenario.model_copy(update={"targets": scenario.targets.model_copy(update={"tpot_s": Fraction(1, 10**6)})})
    certificate = certify(strict, plan)
    assert [c.name for c in certificate.failing] == ["tpot_target"]
    assert certificate.runnable and not certificate.holds
    huge = replace(plan, batch_per_replica=10**6)  # a KV cache that cannot fit: memory_cap, structural
    assert not certify(scenario, huge).runnable


def test_top_shows_gaps_in_ms_and_percent_with_instances(run, tmp_path):
    out = tmp_path / "p.json"
    result = run("--scenario", "qwen3-235b-a22b-16xh100", "--top", "3", "--json", str(out))
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    PlanDocument.model_validate(doc)
    rows = doc["alternatives"]
    assert rows[0]["instances"] == doc["plan"]["instances"]
    table = result.stdout[result.stdout.index("Top 3 plans"):].splitlines()
    assert table[0] == "Top 3 plans on distinct layouts (objective request_latency; gap to #1 in request latency):"
    assert "instances" in table[1] and "EDP" in table[1]
    assert table[2].rstrip().endswith("best")
    for row, line in zip(rows[1:], table[3:5]):
        assert line.rstrip().endswith(f"+{row['gap'] / 1e6:,.3f} ms (+{row['gap_percent']:.2f} %)")
        assert f" {row['instances']:9d} " in line


def test_top_for_throughput_per_gpu_shows_the_tokens_given_up(run):
    result = run("--scenario", "deepseek-v3-8xb200-trtllm", "--top", "2")
    assert result.exit_code == 0, result.output
    last = result.stdout.rstrip().splitlines()[-1]
    assert re.search(r"-[\d,]+\.\d tok/s/GPU \(-\d+\.\d\d %\)$", last), last


def test_readme_states_the_schema_version_the_code_writes():
    readme = (ROOT / "README.md").read_text()
    stated = set(re.findall(r"schema_version (\d+\.\d+)", readme))
    assert stated == {SCHEMA_VERSION}, f"README says schema_version {sorted(stated)}, optimizer/inputs/schema.py writes {SCHEMA_VERSION}"
