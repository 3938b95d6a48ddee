"""Llama 4 Maverick: MoE on every second layer (``interleave_moe_layer_step``), dense layers of their own
width (``intermediate_size_mlp``), one shared expert; a pipeline split of interleaved layers is refused
(rule ``interleaved_layers_one_stage``) and chunked attention is named as not modelled on the plan."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from conftest import make_scenario
from optimizer.cli import main
from optimizer.inputs import catalog
from optimizer.inputs.scenario import ModelSpec
from optimizer.model.memory import active_params, total_params
from optimizer.model.parallel import Layout
from optimizer.search.rules import InterleavedOneStage, build_rules

MAVERICK = "Llama-4-Maverick-17B-128E-Instruct"


def maverick(**override) -> ModelSpec:
    return ModelSpec.model_validate({**catalog.model_entry(MAVERICK), **override})


def test_interleaved_layers_count_as_published():
    """400B total and 17B active (Meta's card) need the dense half at intermediate_size_mlp: counted as 48
    MoE layers the same fields would give 780B."""
    model = maverick()
    assert (model.num_dense_layers, model.num_moe_layers) == (24, 24)
    assert model.dense_ffn_width == 16384 and model.expert_width == 8192 and model.shared_ffn_width == 8192
    assert 399.5e9 <= total_params(model) < 401e9
    assert 16.5e9 <= active_params(model) < 18e9
    every_layer_moe = maverick(interleave_moe_layer_step=1)
    assert total_params(every_layer_moe) > 750e9


def test_interleave_step_follows_transformers_moe_layers():
    """transformers Llama4TextConfig: moe_layers = range(step - 1, num_hidden_layers, step)."""
    for step in (1, 2, 3, 4):
        model = maverick(interleave_moe_layer_step=step)
        assert model.num_moe_layers == len(range(step - 1, 48, step))
    with pytest.raises(ValueError, match="interleave_moe_layer_step > 1 needs num_experts"):
        ModelSpec.model_validate({**catalog.model_entry("Llama-3.1-8B"), "interleave_moe_layer_step": 2})


def test_defaults_change_nothing_for_deepseek_style_models():
    model = ModelSpec.model_validate(catalog.model_entry("DeepSeek-V3"))
    assert model.interleave_moe_layer_step == 1 and model.num_dense_layers == 3 and model.dense_ffn_width == 18432


def test_pipeline_split_of_interleaved_layers_is_refused():
    scenario = make_scenario(model=MAVERICK, engine={"name": "vllm"})
    rules = [r for r in build_rules(scenario) if isinstance(r, InterleavedOneStage)]
    assert len(rules) == 1
    assert rules[0].holds(scenario, Layout(tp=8, pp=1, dp=1, ep=1, etp=8, edp=1))
    check = rules[0].evaluate(scenario, Layout(tp=4, pp=2, dp=1, ep=1, etp=4, edp=1))
    assert not check.holds and "not modelled" in check.detail
    assert not any(isinstance(r, InterleavedOneStage) for r in build_rules(make_scenario(model="DeepSeek-V3")))


def test_a_maverick_plan_keeps_pp_1_and_names_what_is_not_modelled():
    result = CliRunner().invoke(main, ["--model", MAVERICK, "--gpu", "h100", "--gpus", "16", "--isl", "2048",
                                       "--osl", "256", "--solver", "exhaustive", "--json", "-"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["plan"]["pp"] == 1
    notes = doc["plan"]["notes"]
    assert any(n.startswith("not modelled: a pipeline split of interleaved layers") for n in notes), notes
    assert any("36 of 48 layers attend within chunks of 8192 tokens" in n for n in notes), notes


def test_chunked_layers_count_as_sliding_windows_of_the_chunk():
    """transformers Llama4TextConfig: no_rope_layers[i] = (i + 1) % 4 != 0, and those RoPE layers are the
    chunked ones (vLLM Llama4Attention: use_chunked_local_attn = not nope and attention_chunk_size)."""
    model = maverick()
    assert model.num_sliding_layers == 36 and model.local_attention_window == 8192
    assert maverick(attention_chunk_size=None).num_sliding_layers == 0


def test_chunked_attention_costs_less_than_full_attention_on_long_prompts(tmp_path):
    """At a 64k-token prompt, 36 layers attending within 8k chunks take less prefill time than the same
    layers attending to everything (the same model with attention_chunk_size removed)."""
    import yaml

    def ttft_s(model) -> float:
        scenario = {"name": "maverick", "cluster": {"gpu": "h200", "num_nodes": 1},
                    "model": model, "engine": {"name": "vllm"},
                    "workload": {"concurrent_sequences": 1, "input_tokens": 65536, "output_tokens": 64}}
        path = tmp_path / "s.yaml"
        path.write_text(yaml.safe_dump(scenario))
        result = CliRunner().invoke(main, ["estimate", "--scenario", str(path), "--tp-size", "8", "--json", "-"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["ttft_s"]

    entry = {**catalog.model_entry(MAVERICK)}
    full = {**entry, "name": "maverick-full-attention", "attention_chunk_size": None}
    assert ttft_s(MAVERICK) < 0.95 * ttft_s(full)
