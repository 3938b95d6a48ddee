"""Review artefacts and formats people already have: why a plan beats the runner-up, the deployment
graph in DOT, Hugging Face config.json as the model."""

from __future__ import annotations

import json
from pathlib import Path

import pydot
import pytest
from click.testing import CliRunner

from optimizer.cli import main
from optimizer.inputs.loader import load_scenario
from optimizer.inputs.scenario import EngineName
from optimizer.outputs.report import render_dot, solution_document, why_this_plan
from optimizer.search.exhaustive import optimize_exhaustive, runner_up
from optimizer.search.solve import optimize
from optimizer.outputs.sweep import expand_jobs, run_sweep

ROOT = Path(__file__).resolve().parent.parent
QWEN_CONFIG = ROOT / "tests" / "data" / "Qwen3-30B-A3B" / "config.json"


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


@pytest.mark.parametrize("name", ["16gpu-30b", "deepseek-v3-32xh800"])
def test_the_runner_up_is_the_next_best_other_layout(name):
    s = load_scenario(name)
    best = optimize(s)
    second = runner_up(best)
    assert second is not None and second.plan.layout != best.plan.layout
    assert second.evidence.objective > best.evidence.objective and second.evidence.proved_optimal
    # CP-SAT on the same exclusion agrees (slow on DeepSeek's grid, so checked on the small one).
    if name == "16gpu-30b":
        other = optimize(s, tables=best.tables, exclude=frozenset({best.plan.layout}))
        assert other.evidence.objective == second.evidence.objective and other.evidence.solver_fault is None
        assert other.evidence.certificate["excluded"] == [best.plan.layout.as_dict()]
    # Nothing else lies between them: excluding both leaves only worse plans.
    third = optimize_exhaustive(s, tables=best.tables, exclude=frozenset({best.plan.layout, second.plan.layout}))
    assert third.evidence.objective > second.evidence.objective


def test_markdown_says_which_term_decides():
    text = invoke("--scenario", "16gpu-30b", "--markdown", "-").output
    why = text.split("## Why this plan")[1]
    assert "It beats the runner-up (TP 1 PP 1 DP 16 EP 4 ETP 4 EDP 1)" in why
    assert "Deciding term: TPOT, 511 decode steps" in why
    assert "`decode_moe.etp_allreduce`" in why and "`decode_moe.ep_alltoall`" in why
    qwen = invoke("--scenario", "qwen3-235b-a22b-16xh100", "--markdown", "-").output
    assert "Deciding term: TTFT" in qwen.split("## Why this plan")[1]


def test_markdown_compares_pipelines_when_the_runner_up_has_another_pp():
    """Qwen3-235B on 2 x 8 H100 as a Megatron-Core job (which runs any rank map) pipelines over the nodes, TP 1
    PP 2; against the best PP 1 plan the review names both pipelines. (Under vLLM the search no longer picks
    PP 2 there: vLLM cannot run that rank map, rules.EnginePlacement.)"""
    s = load_scenario("qwen3-235b-a22b-16xh100")
    s = s.model_copy(update={"engine": s.engine.model_copy(update={"name": EngineName.MEGATRON})})
    best = optimize(s)
    assert (best.plan.layout.tp, best.plan.layout.pp, best.plan.layers_per_stage) == (1, 2, (48, 46))
    pipelined = frozenset(lay for lay in best.tables.layouts if lay.pp > 1)
    flat = optimize_exhaustive(s, tables=best.tables, exclude=pipelined)
    why = "\n".join(why_this_plan(solution_document(best), solution_document(flat)))
    assert "Pipeline: PP 2 (layers [48, 46]" in why and "vs PP 1 (layers [94]" in why


def test_dag_is_valid_dot_with_every_rank_and_edge():
    s = load_scenario("deepseek-v3-32xh800")  # TP 1, PP 1, DP 32, EP 16
    solution = optimize(s)
    document = solution_document(solution)
    [graph] = pydot.graph_from_dot_data(render_dot(document))
    layout = solution.plan.layout
    nodes = [n for sub in graph.get_subgraphs() for n in sub.get_nodes() if n.get_name().startswith("r")]
    assert len(nodes) == layout.gpus == 32
    edges = graph.get_edges()
    pp_edges = [e for e in edges if e.get("label") == '"PP"']
    ep_edges = [e for e in edges if e.get("label") == '"EP"']
    assert len(pp_edges) == (layout.pp - 1) * layout.tp * layout.dp
    assert len(ep_edges) == layout.gpus  # one ring of EP ranks per group: as many edges as members
    assert len(graph.get_subgraphs()) == layout.pp


def test_dag_option_writes_the_file(tmp_path):
    out = tmp_path / "plan.dot"
    assert invoke("--scenario", "16gpu-30b", "--dag", str(out)).exit_code == 0
    assert out.read_text().startswith('digraph "16gpu-30b"')


def test_model_config_gives_the_catalog_model_s_plan():
    from_config = json.loads(invoke("--scenario", "qwen3-30b-a3b-8xh100", "--model-config", str(QWEN_CONFIG), "--json", "-").output)
    from_catalog = json.loads(invoke("--scenario", "qwen3-30b-a3b-8xh100", "--json", "-").output)
    notes = from_config["plan"].pop("notes")
    assert from_catalog["plan"].pop("notes") == [] and notes[0].startswith("config.json fields")  # the unread keys, listed
    assert from_config["plan"] == from_catalog["plan"]
    assert from_config["estimate"]["tpot_ns"] == from_catalog["estimate"]["tpot_ns"]
    assert from_config["scenario"]["model"]["architecture"] == "Qwen3MoeForCausalLM"


def test_an_unsupported_architecture_names_the_supported_ones(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "n_layer": 12}))
    result = invoke("--scenario", "qwen3-30b-a3b-8xh100", "--model-config", str(config))
    assert result.exit_code == 2
    assert "GPT2LMHeadModel" in result.output and "Qwen3MoeForCausalLM" in result.output and "LlamaForCausalLM" in result.output


def test_config_json_in_a_scenario_and_as_a_sweep_axis(tmp_path):
    scenario = tmp_path / "s.yaml"
    text = (ROOT / "scenarios" / "qwen3-30b-a3b-8xh100.yaml").read_text()
    scenario.write_text(text.replace("model: Qwen3-30B-A3B", f"model: {{config_json: {QWEN_CONFIG}}}"))
    assert load_scenario(scenario).model.num_experts == 128
    jobs = expand_jobs([str(ROOT / "scenarios" / "llama-3.1-70b-8xh100.yaml")], models=[str(QWEN_CONFIG)])
    assert [j.name for j in jobs] == ["llama-3.1-70b-8xh100--Qwen3-30B-A3B"]
    result = run_sweep(jobs, tmp_path / "out", workers=1)
    assert result.count("optimal") == 1
