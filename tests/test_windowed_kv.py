"""Sliding-window layers keep only their window's KV cache when ``engine.windowed_kv_cache`` is on (vLLM's
hybrid KV cache manager, docs.vllm.ai design/hybrid_kv_cache_manager); off (the default) every layer keeps
the whole sequence, as before. The per-stage charge is a bound linear in the stage's layer count
(``memory.WindowedKv``): never below the exact bytes, exact for an all-sliding model."""

from __future__ import annotations

import pytest

from conftest import make_scenario
from optimizer.inputs import catalog
from optimizer.model.memory import (kv_cache_bytes_per_token_layer, layer_pattern, memory_table, sliding_period,
                                    stage_memory, windowed_kv)
from optimizer.model.parallel import Layout

WORKLOAD = {"concurrent_sequences": 8, "input_tokens": 8192, "output_tokens": 1024}


def catalog_scenario(name: str, *, windowed: bool, gpus: int = 8):
    return make_scenario(model=name, workload=WORKLOAD,
                         engine={"name": "vllm", "windowed_kv_cache": windowed},
                         cluster={"num_nodes": 1, "gpus_per_node": gpus})


def test_off_by_default_and_then_every_layer_keeps_the_whole_sequence():
    scenario = make_scenario(model="gpt-oss-20b", workload=WORKLOAD, engine={"name": "vllm"})
    assert scenario.engine.windowed_kv_cache is False
    (stage,) = stage_memory(scenario=scenario, layout=Layout(tp=1, pp=1, dp=8), layers_per_stage=(24,), batch=1)
    per_token = kv_cache_bytes_per_token_layer(model=scenario.model, workload=scenario.workload, tp=1)
    assert stage.kv_cache_bytes == 24 * per_token * (8192 + 1024)


def test_an_all_sliding_model_keeps_exactly_the_window():
    """Mistral 7B: every layer slides over 4096 of the 9216 tokens; the charge is exact."""
    scenario = catalog_scenario("Mistral-7B-v0.1", windowed=True)
    layout = Layout(tp=2, pp=1, dp=4)
    per_token = kv_cache_bytes_per_token_layer(model=scenario.model, workload=scenario.workload, tp=2)
    (stage,) = stage_memory(scenario=scenario, layout=layout, layers_per_stage=(32,), batch=2)
    assert stage.kv_cache_bytes == 32 * per_token * 2 * 4096
    off = stage_memory(scenario=catalog_scenario("Mistral-7B-v0.1", windowed=False), layout=layout,
                       layers_per_stage=(32,), batch=2)[0]
    assert off.kv_cache_bytes == 32 * per_token * 2 * 9216


@pytest.mark.parametrize("name", ["gpt-oss-20b", "gpt-oss-120b", "gemma-2-9b", "gemma-3-1b-it", "Mistral-7B-v0.1"])
def test_the_stage_bound_is_never_below_the_exact_bytes_wherever_the_stage_starts(name):
    scenario = catalog_scenario(name, windowed=True)
    model, seq = scenario.model, 8192 + 1024
    per_token = kv_cache_bytes_per_token_layer(model=model, workload=scenario.workload, tp=1)
    batch = 3
    w = windowed_kv(scenario=scenario, per_token=per_token, batch=batch)
    full, window = per_token * batch * seq, per_token * batch * min(model.sliding_window, seq)
    pattern = layer_pattern(model)
    p, s = sliding_period(model)
    assert all(pattern[i] == pattern[i % p] for i in range(len(pattern))) and sum(pattern[:p]) == s
    worst = 0
    for start in range(len(pattern)):
        for end in range(start + 1, len(pattern) + 1):
            exact = sum(window if pattern[i] else full for i in range(start, end))
            bound = (end - start) * (full - w.per_layer_saving) + w.stage_give_back
            assert bound >= exact, (start, end)
            worst = max(worst, bound - exact)
    assert worst <= w.stage_give_back + p * w.per_layer_saving  # and it stays close


def test_gpt_oss_keeps_about_half_the_kv_cache_with_windows():
    """gpt-oss-20b: 12 of 24 layers slide over 128 tokens; at 9216 tokens its KV cache roughly halves."""
    layout = Layout(tp=1, pp=1, dp=8)
    on = stage_memory(scenario=catalog_scenario("gpt-oss-20b", windowed=True), layout=layout, layers_per_stage=(24,), batch=4)[0]
    off = stage_memory(scenario=catalog_scenario("gpt-oss-20b", windowed=False), layout=layout, layers_per_stage=(24,), batch=4)[0]
    per_token = kv_cache_bytes_per_token_layer(model=catalog_scenario("gpt-oss-20b", windowed=True).model,
                                               workload=catalog_scenario("gpt-oss-20b", windowed=True).workload, tp=1)
    exact = 4 * per_token * (12 * 9216 + 12 * 128)
    assert exact <= on.kv_cache_bytes <= exact + 4 * per_token * 9216  # within one layer's worth
    assert on.kv_cache_bytes < 0.55 * off.kv_cache_bytes  # exact 0.507, plus at most half a layer (the give-back)
    assert on.weights_bytes == off.weights_bytes


def test_the_memory_table_charges_what_stage_memory_reports():
    """The search (tables) and the certificate (stage_memory) read one definition: for a 2-stage split the
    table's per-layer and fixed charges add up to the stage's KV + weights + activations."""
    scenario = catalog_scenario("gpt-oss-20b", windowed=True)
    layout = Layout(tp=1, pp=2, dp=4)
    table = memory_table(scenario=scenario, layouts=(layout,), batches=(4,))
    stages = stage_memory(scenario=scenario, layout=layout, layers_per_stage=(13, 11), batch=4)
    for limit_table, _ in table.with_caps(scenario):
        for stage, layers, fixed in ((stages[0], 13, limit_table.fixed_first[0]), (stages[1], 11, limit_table.fixed_last[0])):
            assert layers * limit_table.moe_layer[0] + fixed == stage.charge(limit_table.limit)


def test_a_sequence_inside_the_window_saves_nothing():
    scenario = make_scenario(model="gpt-oss-20b", workload={"concurrent_sequences": 8, "input_tokens": 100, "output_tokens": 20},
                             engine={"name": "vllm", "windowed_kv_cache": True})
    assert windowed_kv(scenario=scenario, per_token=1000, batch=4).per_layer_saving == 0


def test_every_catalog_model_with_a_window_has_a_period():
    for name in catalog.model_names():
        model = catalog_scenario(name, windowed=True).model
        assert (sliding_period(model) is None) == (model.num_sliding_layers == 0), name


def test_the_plan_says_which_kv_cache_a_sliding_window_model_gets():
    import json

    from click.testing import CliRunner

    from optimizer.cli import main

    args = ["--model", "gpt-oss-20b", "--gpu", "h100", "--gpus", "8", "--isl", "8192", "--osl", "1024",
            "--solver", "exhaustive", "--json", "-"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    notes = json.loads(result.output)["plan"]["notes"]
    assert any(n.startswith("sliding-window KV cache counted at full length: 12 of 24 layers") for n in notes), notes
    dense = CliRunner().invoke(main, ["--model", "Qwen3-8B", *args[2:]])
    assert not any("sliding" in n for n in json.loads(dense.output)["plan"]["notes"])


def test_the_windowed_note_names_the_bound():
    from optimizer.outputs.report import window_notes

    (note,) = window_notes(catalog_scenario("gemma-3-1b-it", windowed=True))
    assert note.startswith("windowed KV cache: 22 of 26 layers attend to the last 512 tokens") and "bound" in note
    assert window_notes(catalog_scenario("Qwen3-8B", windowed=True)) == []


def test_a_sequence_takes_its_window_in_sliding_layers_and_all_of_it_in_full_ones():
    """gpt-oss-20b alternates sliding (128 tokens) and full layers: one 9216-token sequence takes 12 x 9216 +
    12 x 128 tokens' KV on one GPU with windows on, 24 x 9216 off; a stage of layers 3..8 holds 3 of each."""
    from optimizer.model.memory import kv_bytes_per_sequence_layers

    on, off = catalog_scenario("gpt-oss-20b", windowed=True), catalog_scenario("gpt-oss-20b", windowed=False)
    layout = Layout(tp=2, pp=1, dp=4)
    per_token = kv_cache_bytes_per_token_layer(model=on.model, workload=on.workload, tp=2)
    assert kv_bytes_per_sequence_layers(scenario=on, layout=layout, layers=range(24)) == per_token * (12 * 9216 + 12 * 128)
    assert kv_bytes_per_sequence_layers(scenario=off, layout=layout, layers=range(24)) == per_token * 24 * 9216
    assert kv_bytes_per_sequence_layers(scenario=on, layout=layout, layers=range(3, 9)) == per_token * (3 * 9216 + 3 * 128)
    short = make_scenario(model="gpt-oss-20b", workload={"concurrent_sequences": 8, "input_tokens": 100, "output_tokens": 20},
                          engine={"name": "vllm", "windowed_kv_cache": True})
    assert kv_bytes_per_sequence_layers(scenario=short, layout=layout, layers=range(24)) == per_token * 24 * 120


@pytest.mark.parametrize("name", ["gpt-oss-20b", "gemma-3-1b-it", "Mistral-7B-v0.1"])
def test_the_capacity_counts_whole_sequences_at_their_windowed_bytes(name):
    """``kv_capacity_tokens // (ISL + OSL)`` is the most sequences whose exact bytes fit beside the rest, and
    never below the batch the (conservative) charge fits."""
    from optimizer.model.engines import memory_limits

    scenario, seq, batch = catalog_scenario(name, windowed=True), 9216, 3
    for layers_per_stage in ((scenario.model.num_hidden_layers,), (5, scenario.model.num_hidden_layers - 5)):
        layout = Layout(tp=1, pp=len(layers_per_stage), dp=8 // len(layers_per_stage))
        for stage in stage_memory(scenario=scenario, layout=layout, layers_per_stage=layers_per_stage, batch=batch):
            limits = memory_limits(scenario)
            sequences = stage.kv_capacity_tokens(limits) // seq
            assert stage.kv_bytes_per_sequence * batch <= stage.kv_cache_bytes
            for limit in limits:
                rest = stage.charge(limit) - limit.kv_cache * stage.kv_cache_bytes
                assert rest + limit.kv_cache * sequences * stage.kv_bytes_per_sequence <= limit.cap
            assert any(stage.charge(limit) - limit.kv_cache * stage.kv_cache_bytes
                       + limit.kv_cache * (sequences + 1) * stage.kv_bytes_per_sequence > limit.cap for limit in limits)


def test_the_plan_holds_the_batch_it_picks_with_windows(tmp_path):
    """The review's reproducer: gpt-oss-120b on one H100 at ISL 32768 picks batch 4 and said it holds 3
    sequences (the capacity counted every layer at full length)."""
    import json

    import yaml
    from click.testing import CliRunner

    from optimizer.cli import main

    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "windowed-capacity", "cluster": {"gpu": "h100-sxm", "num_nodes": 1, "gpus_per_node": 1},
        "model": "gpt-oss-120b", "engine": {"name": "vllm", "windowed_kv_cache": True},
        "workload": {"concurrent_sequences": 64, "input_tokens": 32768, "output_tokens": 1024,
                     "expert_weight_dtype": "mxfp4"},
        "search": {"objective": "output_tokens_per_s_per_gpu"}}))
    result = CliRunner().invoke(main, ["--scenario", str(path), "--solver", "exhaustive", "--json", "-"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    memory, batch = document["memory"], document["plan"]["batch_per_replica"]
    assert memory["max_sequences_per_replica"] >= batch >= 4
    assert memory["max_sequences_per_replica"] == memory["kv_cache_capacity_tokens"] // (32768 + 1024)


def test_a_draft_layer_keeps_the_whole_sequence_with_windows_on():
    """An EAGLE head on gpt-oss attends fully: its KV cache is charged at ISL + OSL, never at a window saving
    (the windowed bound's give-back covers the target's layers only)."""
    from optimizer.model.memory import draft_bytes

    spec = {"method": "eagle", "num_speculative_tokens": 2, "acceptance_rate": "0.8"}
    scenario = make_scenario(model="gpt-oss-20b", workload=WORKLOAD,
                             engine={"name": "vllm", "windowed_kv_cache": True, "speculative": spec})
    per_token = kv_cache_bytes_per_token_layer(model=scenario.model, workload=scenario.workload, tp=1)
    draft = draft_bytes(scenario=scenario, layout=Layout(tp=1, pp=1, dp=8), batch=3)
    assert draft.kv_cache == 3 * per_token * 9216 and draft.kv_bytes_per_sequence == per_token * 9216
