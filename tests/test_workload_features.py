"""Issue 16 item 5, workload features: speculative decoding / MTP (``engine.speculative``) and prefix caching
(``workload.prefix_cache_hit_rate``). Each effect is checked on the integrated model (certificate, tables,
plan document, launch lines), with a case where it must not hold."""

from __future__ import annotations

import json
from fractions import Fraction

import pytest
import yaml
from click.testing import CliRunner

from conftest import BASE, DENSE, deep_merge
from optimizer.cli import main
from optimizer.errors import Infeasible
from optimizer.inputs.loader import scenario_from_dict
from optimizer.inputs.schema import PlanDocument
from optimizer.model.cost import integer_costs
from optimizer.model.engines import memory_limits
from optimizer.model.memory import attention_weight_bytes, ffn_weight_bytes, kv_cache_bytes_per_token_layer, memory_table, stage_memory
from optimizer.model.parallel import Layout, Plan
from optimizer.model.workload_features import cached_prompt_tokens, uncached_pair_share
from optimizer.outputs.launch import NotExpressible, sglang_commands, trtllm_commands, vllm_commands
from optimizer.search.exhaustive import optimize_exhaustive
from optimizer.search.solve import optimize
from optimizer.search.verify import certify

LLAMA = {"name": "t", "cluster": {"gpu": "h100-sxm", "num_nodes": 1, "gpus_per_node": 8}, "model": "Llama-3.1-70B",
         "workload": {"concurrent_sequences": 8, "input_tokens": 2048, "output_tokens": 512}, "engine": {"name": "vllm"}}
TP8 = Plan(layout=Layout(tp=8, pp=1, dp=1, ep=1, etp=8, edp=1), layers_per_stage=(80,), batch_per_replica=8)


def llama(spec: dict | None = None, *, hit: str | None = None, **workload) -> object:
    data = deep_merge(LLAMA, {"workload": workload})
    if spec is not None:
        data["engine"]["speculative"] = spec
    if hit is not None:
        data["workload"]["prefix_cache_hit_rate"] = hit
    return scenario_from_dict(data)


def eagle(k: int, a: str, method: str = "eagle") -> dict:
    return {"method": method, "num_speculative_tokens": k, "acceptance_rate": a}


def tpot_ns(scenario, plan=TP8) -> int:
    cert = certify(scenario, plan)
    assert cert.holds, [(c.name, c.detail) for c in cert.failing]
    return cert.estimate.tpot_ns


# --- the acceptance model ------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "a", "expected"), [
    (1, "0", Fraction(1)), (3, "1", Fraction(4)), (2, "0.5", Fraction(7, 4)), (3, "0.7", Fraction(2533, 1000))])
def test_expected_tokens_per_step_is_leviathan_eq_1(k, a, expected):
    """(1 - a^(k+1)) / (1 - a), exact; k + 1 at a = 1, one token at a = 0."""
    spec = llama(eagle(k, a)).engine.speculative
    assert spec.expected_tokens_per_step == expected


def test_tpot_falls_as_acceptance_rises():
    tpots = [tpot_ns(llama(eagle(3, a))) for a in ("0.1", "0.4", "0.7", "0.95")]
    assert tpots == sorted(tpots, reverse=True) and len(set(tpots)) == 4
    # a high acceptance beats no speculation; at zero acceptance speculation only costs
    assert tpot_ns(llama(eagle(3, "0.95"))) < tpot_ns(llama()) < tpot_ns(llama(eagle(3, "0")))


def test_more_drafts_pay_off_at_high_acceptance_and_cost_at_low():
    """Each extra draft adds verify and draft work; at low acceptance it yields almost nothing, so TPOT has a
    minimum in k and rises past it; at high acceptance it keeps falling over the same range."""
    low = [tpot_ns(llama(eagle(k, "0.3"))) for k in (1, 2, 4, 8)]
    high = [tpot_ns(llama(eagle(k, "0.9"))) for k in (1, 2, 4, 8)]
    assert low[-1] > min(low) and low.index(min(low)) < 3
    assert high == sorted(high, reverse=True)


def test_tpot_is_the_whole_step_over_the_expected_tokens():
    """The tables hold each term of the verify + draft step divided by E, rounded up: TPOT lies within one
    ns per term of step / E (PP = 1, one micro-batch, prefill share added as is)."""
    sc = llama(eagle(3, "0.7"))
    table = integer_costs(scenario=sc, layouts=(TP8.layout,), batches=(8,))
    step = table.phase_total_ns(table.decode_step, 0)
    per_token = table.phase_total_ns(table.decode, 0)
    e = sc.engine.speculative.expected_tokens_per_step
    assert step / e <= per_token <= step / e + 82  # 80 layers, first and last extras
    assert table.draft_ns[0] > 0 and table.draft_ns[0] < step
    assert tpot_ns(sc) == per_token + table.prefill_share_ns[0]
    ngram = integer_costs(scenario=llama(eagle(3, "0.7", "ngram")), layouts=(TP8.layout,), batches=(8,))
    assert ngram.draft_ns[0] == 0 and ngram.phase_total_ns(ngram.decode_step, 0) < step


def test_the_loaded_ttft_carries_the_whole_speculative_step():
    """A prompt's chunk shares its scheduler step with the batch's whole verify + draft step, not the
    per-token share: TTFT does not fall when acceptance rises."""
    plain, spec_low, spec_high = (integer_costs(scenario=s, layouts=(TP8.layout,), batches=(8,))
                                  for s in (llama(), llama(eagle(3, "0.1")), llama(eagle(3, "0.9"))))
    assert spec_low.ttft_ns(0) == spec_high.ttft_ns(0) > plain.ttft_ns(0)


# --- memory: the draft module ---------------------------------------------------------------------------


def test_memory_includes_the_draft_on_the_last_stage_only():
    sc_off, sc_on = llama(), llama(eagle(2, "0.6", "eagle3"))
    plan = Plan(layout=Layout(tp=4, pp=2, dp=1, ep=1, etp=4, edp=1), layers_per_stage=(40, 40), batch_per_replica=8)
    off = stage_memory(scenario=sc_off, layout=plan.layout, layers_per_stage=(40, 40), batch=8)
    on = stage_memory(scenario=sc_on, layout=plan.layout, layers_per_stage=(40, 40), batch=8)
    assert on[0] == off[0]
    m, w = sc_on.model, sc_on.workload
    h = m.hidden_size
    # one dense layer at TP 4 plus EAGLE-3's fc (3h x h, BF16, replicated), computed here from the parts
    layer = attention_weight_bytes(model=m, workload=w, tp=4) + ffn_weight_bytes(model=m, workload=w, layout=plan.layout, dense=True)
    assert on[1].draft_weight_bytes == layer + 3 * h * h * 2
    assert on[1].weights_bytes - off[1].weights_bytes == on[1].draft_weight_bytes
    kv = kv_cache_bytes_per_token_layer(model=m, workload=w, tp=4) * 8 * (2048 + 512)
    assert on[1].draft_kv_cache_bytes == kv == on[1].kv_cache_bytes - off[1].kv_cache_bytes
    ngram = stage_memory(scenario=llama(eagle(2, "0.6", "ngram")), layout=plan.layout, layers_per_stage=(40, 40), batch=8)
    assert [(s.weights_bytes, s.kv_cache_bytes) for s in ngram] == [(s.weights_bytes, s.kv_cache_bytes) for s in off]
    assert ngram[0] == off[0]


def test_mtp_draft_is_a_moe_layer_with_eh_proj():
    """DeepSeek-V3's MTP module is one MoE block plus eh_proj (2h x h) and two norms (arXiv 2412.19437 §2.2)."""
    data = deep_merge(BASE, {"engine": {"speculative": {"method": "mtp", "num_speculative_tokens": 1, "acceptance_rate": "0.8"}},
                             "model": {"num_nextn_predict_layers": 1}})
    sc = scenario_from_dict(data)
    layout = Layout(tp=1, pp=1, dp=8, ep=8, etp=1, edp=1)
    [on] = stage_memory(scenario=sc, layout=layout, layers_per_stage=(4,), batch=1)
    h = sc.model.hidden_size
    moe = attention_weight_bytes(model=sc.model, workload=sc.workload, tp=1) + ffn_weight_bytes(
        model=sc.model, workload=sc.workload, layout=layout, dense=False)
    assert on.draft_weight_bytes == moe + (2 * h * h + 2 * h) * 2


def _limit_charges(sc, layout, batch, pp):
    """(solver's table charge, the certificate's stage charge) for the last stage, every limit."""
    table = memory_table(scenario=sc, layouts=(layout,), batches=(batch,))
    layers = sc.model.num_hidden_layers
    split = (layers,) if pp == 1 else (layers - layers // 2, layers // 2)
    stages = stage_memory(scenario=sc, layout=layout, layers_per_stage=split, batch=batch)
    pairs = []
    for lt, limit in zip(table.limits, memory_limits(sc)):
        fixed = lt.fixed_only[0] if pp == 1 else lt.fixed_last[0]
        dense, moe = stages[-1].dense_layers, stages[-1].moe_layers
        pairs.append((dense * lt.dense_layer[0] + moe * lt.moe_layer[0] + fixed, stages[-1].charge(limit)))
    return pairs


@pytest.mark.parametrize("engine", ["vllm", "sglang", "tensorrt-llm"])
@pytest.mark.parametrize("pp", [1, 2])
def test_the_memory_rule_and_the_recheck_agree_with_a_draft(engine, pp):
    sc = scenario_from_dict(deep_merge(LLAMA, {"engine": {"name": engine, "speculative": eagle(3, "0.7", "eagle3")}}))
    layout = Layout(tp=8 // pp, pp=pp, dp=1, ep=1, etp=8 // pp, edp=1)
    for table_charge, stage_charge in _limit_charges(sc, layout, 8, pp):
        assert table_charge == stage_charge
    off = scenario_from_dict(deep_merge(LLAMA, {"engine": {"name": engine}}))
    pairs = list(zip(_limit_charges(sc, layout, 8, pp), _limit_charges(off, layout, 8, pp)))
    # the limits that count weights and KV cache grow (SGLang's second limit holds only what sits outside
    # --mem-fraction-static, which the draft's weights and KV pool do not)
    assert all(a[0] >= b[0] for a, b in pairs) and pairs[0][0][0] > pairs[0][1][0]


def test_the_draft_can_tip_a_plan_over_memory():
    """A batch that fits without the draft and not with it: certify says so on memory_cap, and both solvers
    agree on the optimum with speculation on."""
    base = deep_merge(BASE, {"model": DENSE, "cluster": {"num_nodes": 1, "gpus_per_node": 1},
                             "workload": {"concurrent_sequences": 1}})
    off = scenario_from_dict(base)
    plan = Plan(layout=Layout(tp=1, pp=1, dp=1, ep=1, etp=1, edp=1), layers_per_stage=(4,), batch_per_replica=1)
    [stage] = certify(off, plan).memory
    spec = {"method": "eagle", "num_speculative_tokens": 2, "acceptance_rate": "0.8"}
    [drafted] = stage_memory(scenario=scenario_from_dict(deep_merge(base, {"engine": {"speculative": spec}})),
                             layout=plan.layout, layers_per_stage=(4,), batch=1)
    draft = drafted.draft_weight_bytes + drafted.draft_kv_cache_bytes
    assert draft > 0
    # GPU memory so that usable = 0.9 x memory sits between the two footprints
    memory = (stage.total_bytes + draft // 2) * 10 // 9
    tight_off = scenario_from_dict(deep_merge(base, {"cluster": {"gpu": {"memory_bytes": memory}}}))
    tight_on = scenario_from_dict(deep_merge(base, {"cluster": {"gpu": {"memory_bytes": memory}}, "engine": {"speculative": spec}}))
    assert certify(tight_off, plan).holds
    failing = {c.name.split("[")[0] for c in certify(tight_on, plan).failing}
    assert failing == {"memory_cap"}
    for solve in (optimize, optimize_exhaustive):
        with pytest.raises(Infeasible):
            solve(tight_on)


def test_cp_sat_matches_the_oracle_with_both_features_on():
    sc = scenario_from_dict(deep_merge(BASE, {"engine": {"name": "vllm", "speculative": eagle(2, "0.6")},
                                              "workload": {"prefix_cache_hit_rate": "0.25"}}))
    cp, ex = optimize(sc), optimize_exhaustive(sc)
    assert cp.evidence.objective == ex.evidence.objective and cp.plan == ex.plan
    assert cp.evidence.proved_optimal and certify(sc, cp.plan, cp.tables).holds


# --- prefix caching -------------------------------------------------------------------------------------


def test_cached_tokens_and_attention_pairs_are_exact():
    sc = llama(hit="0.5")
    assert cached_prompt_tokens(sc) == 1024
    assert uncached_pair_share(sc) == Fraction(2048 * 2049 - 1024 * 1025, 2048 * 2049)
    assert cached_prompt_tokens(llama(hit="1/3", input_tokens=10)) == 3  # rounded down: never under-count prefill


def test_prefill_work_scales_with_the_uncached_tokens():
    """Prefill computes ISL x (1 - h) tokens; its GEMMs scale with them, while the weight reads, launches
    and the attention core over the whole prompt (the uncached tail attends to the cached head) fall less,
    so the prefill time lands above the token share and below the whole, falling as h rises."""
    whole = integer_costs(scenario=llama(), layouts=(TP8.layout,), batches=(8,))
    ratios = []
    for hit, share in (("0.5", 0.5), ("0.75", 0.25)):
        cached = integer_costs(scenario=llama(hit=hit), layouts=(TP8.layout,), batches=(8,))
        assert cached.chunk_tokens[0] == int(2048 * share)
        ratio = cached.phase_total_ns(cached.prefill, 0) / whole.phase_total_ns(whole.prefill, 0)
        assert share < ratio < min(1.0, 1.5 * share), ratio
        ratios.append(ratio)
        assert cached.ttft_ns(0) < whole.ttft_ns(0)
        assert cached.prefill_share_ns[0] < whole.prefill_share_ns[0]
    assert ratios[1] < ratios[0]
    # the running sequences' KV cache is unchanged
    assert certify(llama(hit="0.75"), TP8).memory == certify(llama(), TP8).memory


def test_the_prefix_cache_does_not_touch_decode_steps():
    a, b = (integer_costs(scenario=s, layouts=(TP8.layout,), batches=(8,)) for s in (llama(), llama(hit="0.9")))
    assert a.phase_total_ns(a.decode, 0) == b.phase_total_ns(b.decode, 0)


# --- the CLI: documents, bad input, launch lines --------------------------------------------------------


def _scenario_file(tmp_path, engine: dict | None = None, workload: dict | None = None):
    data = deep_merge(BASE, {"engine": engine or {}, "workload": workload or {}})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_plan_shows_the_new_terms(tmp_path):
    path = _scenario_file(tmp_path, {"name": "vllm", "speculative": eagle(2, "0.6", "eagle3")}, {"prefix_cache_hit_rate": 0.5})
    result = CliRunner().invoke(main, ["--scenario", str(path), "--json", "-"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    PlanDocument.model_validate(doc)
    wf = doc["estimate"]["workload_features"]
    assert wf["expected_tokens_per_step"] == pytest.approx(1 + 0.6 + 0.36)
    assert wf["draft_ns"] > 0 and wf["speculative_step_ns"] > wf["draft_ns"]
    assert wf["draft_weight_bytes"] > 0 and wf["cached_prompt_tokens"] == 64 and wf["uncached_prompt_tokens"] == 64
    table = CliRunner().invoke(main, ["--scenario", str(path)], catch_exceptions=False)
    assert "workload: speculative decoding (eagle3)" in table.output and "prefix cache: 64 of 128" in table.output
    plain = CliRunner().invoke(main, ["--scenario", str(_scenario_file(tmp_path)), "--json", "-"], catch_exceptions=False)
    assert "workload_features" not in json.loads(plain.output)["estimate"]


@pytest.mark.parametrize(("engine", "workload", "field"), [
    ({"speculative": eagle(2, "1.5")}, {}, "engine.speculative.acceptance_rate"),
    ({"speculative": eagle(0, "0.5")}, {}, "engine.speculative.num_speculative_tokens"),
    ({"speculative": {"method": "medusa", "num_speculative_tokens": 2, "acceptance_rate": 0.5}}, {}, "engine.speculative.method"),
    ({"speculative": {"method": "mtp", "num_speculative_tokens": 2}}, {}, "engine.speculative.acceptance_rate"),
    ({}, {"prefix_cache_hit_rate": 1}, "workload.prefix_cache_hit_rate"),
    ({}, {"prefix_cache_hit_rate": -0.1}, "workload.prefix_cache_hit_rate"),
    ({}, {"prefix_cache_hit_rate": "lots"}, "workload.prefix_cache_hit_rate"),
])
def test_bad_values_exit_2_naming_the_field(tmp_path, engine, workload, field):
    result = CliRunner().invoke(main, ["--scenario", str(_scenario_file(tmp_path, engine, workload))])
    assert result.exit_code == 2, result.output
    assert field in result.output and "Traceback" not in result.output


def _document(engine: str, method: str, **spec) -> dict:  # a plan document at TP 8
    if method == "mtp":  # Llama has no MTP layers of its own: say how many the draft has
        spec = {"draft_layers": 1, **spec}
    sc = scenario_from_dict(deep_merge(LLAMA, {"engine": {"name": engine, "speculative": {**eagle(3, "0.7", method), **spec}}}))
    return {"scenario": sc.model_dump(mode="json"),
            "plan": {**TP8.layout.as_dict(), "batch_per_replica": 8, "layers_per_stage": [80], "engine": engine}}


def test_launch_lines_carry_the_speculative_flags():
    from test_launch import check_flag_sources

    v = vllm_commands(_document("vllm", "mtp"))
    check_flag_sources(v)
    argv = v.commands[0].argv
    assert json.loads(argv[argv.index("--speculative-config") + 1]) == {"method": "mtp", "num_speculative_tokens": 3}
    s = sglang_commands(_document("sglang", "eagle3", draft_model="org/eagle3-head"))
    check_flag_sources(s)
    argv = s.commands[0].argv
    flags = {argv[i]: argv[i + 1] for i in range(len(argv) - 1) if argv[i].startswith("--speculative")}
    assert flags == {"--speculative-algorithm": "EAGLE3", "--speculative-num-steps": "3", "--speculative-eagle-topk": "1",
                     "--speculative-num-draft-tokens": "4", "--speculative-draft-model-path": "org/eagle3-head"}
    t = trtllm_commands(_document("tensorrt-llm", "mtp"))
    check_flag_sources(t)
    options = dict(t.files)
    assert "speculative_config:\n  decoding_type: MTP\n  num_nextn_predict_layers: 3\n" in "".join(options.values())
    assert "--speculative-config" not in vllm_commands(deep_merge(_document("vllm", "mtp"), {"scenario": {"engine": {"speculative": None}}})).commands[0].argv
    with pytest.raises(NotExpressible, match="EAGLE-3"):
        trtllm_commands(_document("tensorrt-llm", "eagle"))


# --- KV offload to host memory: a capacity, not a cost or memory term -----------------------------------


def test_kv_offload_is_a_capacity_that_changes_no_estimate_or_memory():
    on = scenario_from_dict(deep_merge(LLAMA, {"engine": {"kv_offload_bytes": 32 << 30}}))
    a, b = certify(llama(), TP8), certify(on, TP8)
    assert a.estimate == b.estimate and a.memory == b.memory  # running sequences still live in HBM only
    from optimizer.model.workload_features import host_kv_cache_tokens

    per_token = 80 * 2 * 1 * 128 * 2  # 80 layers x K and V x ceil(8 KV heads / TP 8) x head_dim 128 x BF16
    assert b.memory[0].kv_bytes_per_token == per_token
    assert host_kv_cache_tokens(kv_offload_bytes=32 << 30, kv_bytes_per_token=(per_token,)) == (32 << 30) // per_token
    # per replica: the stage whose GPUs hold the most KV per token bounds it
    assert host_kv_cache_tokens(kv_offload_bytes=1000, kv_bytes_per_token=(10, 30, 0)) == 33
    assert host_kv_cache_tokens(kv_offload_bytes=0, kv_bytes_per_token=(10,)) == 0


def test_the_plan_reports_the_host_tier(tmp_path):
    path = _scenario_file(tmp_path, {"name": "vllm", "kv_offload_bytes": 1 << 30}, {"prefix_cache_hit_rate": "0.5"})
    doc = json.loads(CliRunner().invoke(main, ["--scenario", str(path), "--json", "-"], catch_exceptions=False).output)
    PlanDocument.model_validate(doc)
    wf = doc["estimate"]["workload_features"]
    per_token = max(s["kv_cache_bytes"] for s in doc["memory"]["stages"]) // (doc["plan"]["batch_per_replica"] * (128 + 64))
    assert wf["kv_offload_bytes"] == 1 << 30 and wf["host_kv_cache_tokens"] == (1 << 30) // per_token
    assert wf["hbm_free_kv_cache_tokens"] == doc["memory"]["kv_cache_capacity_tokens"] - doc["plan"]["batch_per_replica"] * 192
    assert "KV offload: host memory keeps" in wf["text"]


def test_launch_lines_carry_the_kv_offload_flags():
    from test_launch import check_flag_sources

    def doc(engine):
        sc = scenario_from_dict(deep_merge(LLAMA, {"engine": {"name": engine, "kv_offload_bytes": 16 << 30}}))
        return {"scenario": sc.model_dump(mode="json"),
                "plan": {**TP8.layout.as_dict(), "batch_per_replica": 8, "layers_per_stage": [80], "engine": engine}}

    v = vllm_commands(doc("vllm"))
    check_flag_sources(v)
    argv = v.commands[0].argv
    assert argv[argv.index("--kv-offloading-size") + 1] == "128"  # GiB summed over the 8 TP ranks
    s = sglang_commands(doc("sglang"))
    check_flag_sources(s)
    argv = s.commands[0].argv
    assert "--enable-hierarchical-cache" in argv and argv[argv.index("--hicache-size") + 1] == str((16 << 30) // 10 ** 9)
    t = trtllm_commands(doc("tensorrt-llm"))
    check_flag_sources(t)
    assert f"  host_cache_size: {16 << 30}\n" in "".join(dict(t.files).values())
    small = deep_merge(doc("sglang"), {"scenario": {"engine": {"kv_offload_bytes": 10 ** 8}}})
    with pytest.raises(NotExpressible, match="whole GB"):
        sglang_commands(small)


def test_a_negative_offload_exits_2(tmp_path):
    result = CliRunner().invoke(main, ["--scenario", str(_scenario_file(tmp_path, {"kv_offload_bytes": -1}))])
    assert result.exit_code == 2 and "engine.kv_offload_bytes" in result.output


# --- a separate draft model -----------------------------------------------------------------------------


def test_a_draft_model_is_sized_and_costed_as_a_whole_model():
    spec = {"method": "draft_model", "num_speculative_tokens": 4, "acceptance_rate": "0.8", "draft_config": "Llama-3.1-8B"}
    sc = llama(spec)
    assert sc.engine.speculative.draft_config.num_hidden_layers == 32
    [on], [off] = certify(sc, TP8).memory, certify(llama(), TP8).memory
    draft = scenario_from_dict(deep_merge(LLAMA, {"model": "Llama-3.1-8B"}))
    [alone] = stage_memory(scenario=draft, layout=TP8.layout, layers_per_stage=(32,), batch=8)
    # the draft model at the target's TP 8: all its weights (embedding and LM head too) and its KV cache
    assert on.draft_weight_bytes == alone.weights_bytes and on.draft_kv_cache_bytes == alone.kv_cache_bytes
    assert on.weights_bytes == off.weights_bytes + alone.weights_bytes
    table = integer_costs(scenario=sc, layouts=(TP8.layout,), batches=(8,))
    eight_b = integer_costs(scenario=draft, layouts=(TP8.layout,), batches=(8,))
    assert table.draft_ns[0] == 4 * eight_b.phase_total_ns(eight_b.decode, 0)  # k passes of the whole 8B
    assert tpot_ns(sc) < tpot_ns(llama())


def test_draft_config_is_for_draft_model_only_and_resolved_like_model(tmp_path):
    bad = [({"method": "draft_model", "num_speculative_tokens": 2, "acceptance_rate": 0.5}, "draft_config"),
           ({"method": "eagle", "num_speculative_tokens": 2, "acceptance_rate": 0.5, "draft_config": "Llama-3.1-8B"},
            "draft_config is for method draft_model"),
           ({"method": "draft_model", "num_speculative_tokens": 2, "acceptance_rate": 0.5, "draft_config": "Llama-9Z"},
            "engine.speculative.draft_config")]
    for spec, text in bad:
        result = CliRunner().invoke(main, ["--scenario", str(_scenario_file(tmp_path, {"speculative": spec}))])
        assert result.exit_code == 2 and text in result.output, result.output


def test_launch_lines_for_a_draft_model():
    from test_launch import check_flag_sources

    doc = _document("vllm", "draft_model", draft_config="Llama-3.1-8B", draft_model="meta-llama/Llama-3.1-8B")
    v = vllm_commands(doc)
    check_flag_sources(v)
    argv = v.commands[0].argv
    assert json.loads(argv[argv.index("--speculative-config") + 1]) == {
        "method": "draft_model", "model": "meta-llama/Llama-3.1-8B", "num_speculative_tokens": 3}
    s = sglang_commands(deep_merge(doc, {"plan": {"engine": "sglang"}}))
    assert s.commands[0].argv[s.commands[0].argv.index("--speculative-algorithm") + 1] == "STANDALONE"
    t = trtllm_commands(deep_merge(doc, {"plan": {"engine": "tensorrt-llm"}}))
    check_flag_sources(t)
    assert "  decoding_type: DraftTarget\n  max_draft_len: 3\n" in "".join(dict(t.files).values())


def test_the_draft_prefills_the_prompt_too():
    """The draft keeps the prompt's KV cache as well: an EAGLE head adds one layer's prefill to the last stage,
    a draft model its whole prefill; ngram nothing."""
    def prefill(sc):
        t = integer_costs(scenario=sc, layouts=(TP8.layout,), batches=(8,))
        return t.phase_total_ns(t.prefill, 0), int(t.prefill.dense_layer_ns[0])

    plain, layer = prefill(llama())
    assert prefill(llama(eagle(3, "0.7")))[0] == plain + layer
    assert prefill(llama(eagle(3, "0.7", "ngram")))[0] == plain
    spec = {"method": "draft_model", "num_speculative_tokens": 2, "acceptance_rate": "0.8", "draft_config": "Llama-3.1-8B"}
    eight_b = scenario_from_dict(deep_merge(LLAMA, {"model": "Llama-3.1-8B"}))
    assert prefill(llama(spec))[0] == plain + prefill(eight_b)[0]


def test_mtp_takes_its_layers_from_the_model_and_refuses_a_model_without():
    """DeepSeek-V3's catalog entry (config.json num_nextn_predict_layers 1) drafts with its MTP module; a
    model without MTP layers is refused unless draft_layers says how many."""
    from optimizer.model.workload_features import draft_layers

    mtp = {"method": "mtp", "num_speculative_tokens": 2, "acceptance_rate": "0.85"}
    ds = scenario_from_dict(deep_merge(LLAMA, {"model": "DeepSeek-V3", "cluster": {"gpu": "h200-sxm"},
                                               "engine": {"speculative": mtp}}))
    assert ds.model.num_nextn_predict_layers == 1 and draft_layers(ds) == 1
    assert draft_layers(scenario_from_dict(deep_merge(LLAMA, {"model": {"name": "DeepSeek-V3", "num_nextn_predict_layers": 2},
                                                              "cluster": {"gpu": "h200-sxm"},
                                                              "engine": {"speculative": mtp}}))) == 2
    with pytest.raises(Exception, match="num_nextn_predict_layers = 0"):
        llama(mtp)
    assert draft_layers(llama({**mtp, "draft_layers": 1})) == 1


def test_the_verify_step_keeps_logits_for_every_drafted_position():
    [off], [on] = certify(llama(), TP8).memory, certify(llama(eagle(3, "0.7", "ngram")), TP8).memory
    vocab_shard = -(-128256 // 8)
    assert on.activation_bytes - off.activation_bytes == 4 * 8 * 3 * vocab_shard  # FP32, batch 8, 3 more positions


def test_the_plan_warns_when_drafts_overflow_the_token_budget(tmp_path):
    spec = eagle(4, "0.7")
    small = _scenario_file(tmp_path, {"name": "vllm", "speculative": spec, "max_num_batched_tokens": 4})
    doc = json.loads(CliRunner().invoke(main, ["--scenario", str(small), "--json", "-"], catch_exceptions=False).output)
    assert "exceeds engine.max_num_batched_tokens = 4" in doc["estimate"]["workload_features"]["text"]  # 5 tokens a sequence
    roomy = _scenario_file(tmp_path, {"name": "vllm", "speculative": spec})
    doc = json.loads(CliRunner().invoke(main, ["--scenario", str(roomy), "--json", "-"], catch_exceptions=False).output)
    assert "exceeds" not in doc["estimate"]["workload_features"]["text"]


@pytest.mark.parametrize("spec", [eagle(3, "0.7"), eagle(3, "0.7", "eagle3")])
def test_each_draft_pass_pays_a_step_overhead(spec):
    """Every draft pass is a forward of its own (CUDA graph replay, scheduling), so it pays the calibration's
    step overhead as the target's stages do: with a 1 ms step overhead the k = 3 passes cost 3 ms more."""
    from dataclasses import replace

    from optimizer.model.calibration import shipped_calibration, with_step_fit

    shipped = shipped_calibration()
    stack = shipped.stack_for("vllm")
    fit = replace(shipped.for_gpu("h100-sxm", stack, "vllm").step, step_overhead_us=1000.0)
    slow = with_step_fit(shipped, calibration_id="t", gpu="h100-sxm", engine="vllm", stack="overhead-1ms", fit=fit, what="t")
    sc = llama(spec)
    base = integer_costs(scenario=sc, layouts=(TP8.layout,), batches=(8,), calibration=shipped).draft_ns[0]
    more = integer_costs(scenario=sc, layouts=(TP8.layout,), batches=(8,), calibration=slow).draft_ns[0]
    old_overhead_ns = round(shipped.for_gpu("h100-sxm", stack, "vllm").step.step_overhead_us * 1000)
    assert abs((more - base) - 3 * (1_000_000 - old_overhead_ns)) <= 3 * 2  # rounding: 1 ns per term per pass


@pytest.mark.parametrize("engine, method, restricted", [
    ("vllm", "mtp", True), ("vllm", "eagle", True), ("vllm", "draft_model", True), ("vllm", "eagle3", False),
    ("sglang", "eagle3", True), ("tensorrt-llm", "eagle3", False),
])
def test_speculation_keeps_one_stage_where_the_engine_does_not_pipeline_it(engine, method, restricted):
    """Rule speculative_one_stage: vLLM pipelines EAGLE-3 only, SGLang none by default (sources in
    rules.speculative_pipeline_refusal); the rule holds at PP 1 and fails at PP 2, and applies only with
    speculation on such an engine."""
    from optimizer.search.rules import SpeculativeOneStage, build_rules

    spec = {"method": method, "num_speculative_tokens": 2, "acceptance_rate": "0.7"}
    if method == "draft_model":
        spec["draft_config"] = "Llama-3.1-8B"
    data = deep_merge(LLAMA, {"engine": {"name": engine, "speculative": spec}})
    if method == "mtp":  # an MTP head needs the model's own MTP layers
        data["model"] = {"name": "Llama-3.1-70B", "num_nextn_predict_layers": 1}
    sc = scenario_from_dict(data)
    rules = [r for r in build_rules(sc) if isinstance(r, SpeculativeOneStage)]
    assert bool(rules) == restricted
    if restricted:
        [rule] = rules
        one = Layout(tp=8, pp=1, dp=1, ep=1, etp=8, edp=1)
        two = Layout(tp=4, pp=2, dp=1, ep=1, etp=4, edp=1)
        assert rule.holds(sc, one) and rule.evaluate(sc, one).holds
        assert not rule.holds(sc, two) and not rule.evaluate(sc, two).holds
        assert "PP = 2" in rule.evaluate(sc, two).detail
    assert not any(isinstance(r, SpeculativeOneStage) for r in build_rules(llama()))  # no speculation, no rule


# On H200s: on 4 H100s the 72B target at TP <= 2 (draft_heads) needs PP 2, which vLLM does not run with a
# draft model (speculative_one_stage), so no plan exists there.
QWEN_DRAFT = {"name": "qwen-draft", "cluster": {"gpu": "h200-sxm", "num_nodes": 1, "gpus_per_node": 4}, "model": "Qwen2.5-72B",
              "workload": {"concurrent_sequences": 16, "input_tokens": 2048, "output_tokens": 512},
              "engine": {"name": "vllm", "speculative": {"method": "draft_model", "num_speculative_tokens": 3,
                                                         "acceptance_rate": "0.7", "draft_config": "Qwen2.5-0.5B"}}}


def test_the_draft_models_heads_bound_the_tp():
    """The review's reproducer: Qwen2.5-72B drafted by Qwen2.5-0.5B (14 heads, 2 KV heads) on 4 GPUs was planned
    at TP 4, which vLLM cannot load the draft at (14 % 4); rule draft_heads keeps TP at 1 or 2, and CP-SAT and
    the oracle agree on the plan."""
    sc = scenario_from_dict(QWEN_DRAFT)
    cp, ex = optimize(sc), optimize_exhaustive(sc)
    assert cp.evidence.objective == ex.evidence.objective and cp.plan == ex.plan and cp.evidence.proved_optimal
    assert cp.plan.layout.tp in (1, 2)
    cert = certify(sc, cp.plan, cp.tables)
    [check] = [c for c in cert.checks if c.name == "draft_heads"]
    assert cert.holds and check.holds
    tp4 = Plan(layout=Layout(tp=4, pp=1, dp=1, ep=1, etp=4, edp=1), layers_per_stage=(80,), batch_per_replica=16)
    assert [c.name for c in certify(sc, tp4).failing] == ["draft_heads"]
    # an EAGLE head or a draft with the same heads as the target adds no such rule
    assert "draft_heads" not in {c.name for c in certify(llama(eagle(2, "0.6")), TP8).checks}
    # on 4 H100s TP <= 2 needs PP 2, which vLLM does not run with a draft model: no plan, both rules named
    with pytest.raises(Infeasible) as exc:
        optimize(scenario_from_dict(deep_merge(QWEN_DRAFT, {"cluster": {"gpu": "h100-sxm"}})))
    assert "draft_heads" in str(exc.value) and "speculative_one_stage" in str(exc.value)


def test_a_draft_with_another_vocabulary_gets_a_warning(tmp_path):
    """vLLM refuses a draft_model pair whose vocab_size differs (vllm/config/speculative.py,
    verify_equal_vocab_size_if_draft_model): Qwen2.5-0.5B has 151,936 entries, Qwen2.5-72B 152,064. A note,
    not a rule; a Llama-3.1-8B draft for Llama-3.1-70B (both 128,256) gets none."""
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump(QWEN_DRAFT))
    result = CliRunner().invoke(main, ["--scenario", str(path), "--json", "-"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    notes = json.loads(result.output)["plan"]["notes"]
    assert any(n.startswith("WARNING: the draft model's vocab_size = 151936 differs from the target's 152064") for n in notes)
    same = deep_merge(LLAMA, {"engine": {"speculative": {"method": "draft_model", "num_speculative_tokens": 2,
                                                         "acceptance_rate": "0.7", "draft_config": "Llama-3.1-8B"}}})
    path.write_text(yaml.safe_dump(same))
    result = CliRunner().invoke(main, ["--scenario", str(path), "--json", "-"], catch_exceptions=False)
    assert not any("vocab_size" in n for n in json.loads(result.output)["plan"]["notes"])


def test_the_speculative_step_and_its_operators_add_up(tmp_path):
    """Review of issue 16: the reported speculative step left out the stages' step overheads, and the estimate's
    decode operators were the verify pass only. Now the step is the whole phase (every stage with its
    overhead, every hop) and the decode operators (verify pass + one draft row) add up to it; the per-token
    decode step is that over E."""
    path = _scenario_file(tmp_path, {"name": "vllm", "speculative": eagle(2, "0.6", "eagle3")})
    plan = tmp_path / "p.json"
    assert CliRunner().invoke(main, ["--scenario", str(path), "--json", str(plan)]).exit_code == 0
    wf = json.loads(plan.read_text())["estimate"]["workload_features"]
    est = CliRunner().invoke(main, ["estimate", str(plan), "--scenario", str(path), "--json", "-"], catch_exceptions=False)
    assert est.exit_code == 0, est.output
    doc = json.loads(est.output)
    ops = doc["breakdown"]["decode"]["operators"]
    assert [op["operator"] for op in ops].count("speculative_draft") == 1
    total_ns = sum(op["total_s"] for op in ops) * 1e9
    assert total_ns == pytest.approx(wf["speculative_step_ns"], rel=1e-3)
    draft = next(op for op in ops if op["operator"] == "speculative_draft")
    assert draft["total_s"] * 1e9 == pytest.approx(wf["draft_ns"], rel=1e-6)


def _with_sequence_overhead(us: float):
    from dataclasses import replace

    from optimizer.model.calibration import shipped_calibration, with_step_fit

    shipped = shipped_calibration()
    fit = shipped.for_gpu("h100-sxm", shipped.stack_for("vllm"), "vllm").step
    return with_step_fit(shipped, calibration_id="t", gpu="h100-sxm", engine="vllm", stack="seq",
                         fit=replace(fit, sequence_overhead_us=us), what="t")


def test_prefix_hits_cut_attention_not_the_prompts_sampling():
    """Review of issue 16: the uncached pair share also scaled the prefill's LM head and per-sequence host
    work; a prompt with 90% of its tokens cached still samples (and is scheduled) once."""
    cal = _with_sequence_overhead(1000.0)
    seq = {}
    for hit in (None, "0.9"):
        t = integer_costs(scenario=llama(hit=hit), layouts=(TP8.layout,), batches=(8,), calibration=cal)
        seq[hit] = t.prefill.last_breakdown.row(0)["sequence_overhead"]
    assert seq["0.9"] == pytest.approx(seq[None]) and seq[None] == pytest.approx(1e-3, rel=1e-6)


def test_a_verify_step_schedules_each_sequence_once():
    """The verify pass scores 1 + k positions per sequence (LM head) but the host samples and schedules each
    sequence once per step: sequence_overhead is batch x overhead, not batch x (1 + k) x overhead."""
    cal = _with_sequence_overhead(1000.0)
    t = integer_costs(scenario=llama(eagle(3, "0.7")), layouts=(TP8.layout,), batches=(8,), calibration=cal)
    row = t.decode_step.last_breakdown.row(0)
    assert row["sequence_overhead"] == pytest.approx(8 * 1e-3, rel=1e-6)
    plain = integer_costs(scenario=llama(), layouts=(TP8.layout,), batches=(8,), calibration=cal).decode.last_breakdown.row(0)
    assert row["lm_head"] > plain["lm_head"]  # 4 positions per sequence scored
