"""Issue 13 item 3: large-scale expert parallelism as the engines run it (DeepEP normal and low-latency
kernels with per-node deduplication and FP8 dispatch, two-batch overlap, redundant experts). Each test
failed on the branch the issue was filed against (no such switches: every top-k copy in BF16, serially)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from optimizer.errors import ScenarioError
from optimizer.inputs.loader import load_scenario, scenario_from_dict
from optimizer.model.calibration import shipped_calibration
from optimizer.model.cost import grid, hit_probability, layer_time, layer_works, tbo_layer_s
from optimizer.model.engines import tbo_expert_sm_share
from optimizer.model.memory import ffn_params, layer_bytes
from optimizer.model.parallel import Layout
from optimizer.search.rules import build_rules
from optimizer.units import bytes_for

ROOT = Path(__file__).resolve().parent.parent
EP32 = Layout(tp=1, pp=1, dp=32, ep=32, etp=1, edp=1)  # 4 nodes x 8 GPUs, attention DP, experts over all


def _deepseek(**engine) -> object:
    return scenario_from_dict({
        "name": "t", "cluster": {"gpu": "h100-sxm", "num_nodes": 4, "gpus_per_node": 8}, "model": "DeepSeek-V3",
        "workload": {"concurrent_sequences": 1024, "input_tokens": 2000, "output_tokens": 512, "weight_dtype": "fp8-block"},
        "engine": {"name": "sglang", **engine}})


def _moe_works(sc, *, tokens: float, prefill: bool, layout: Layout = EP32) -> dict:
    g = grid(sc, (layout,), (8,))
    t = np.ones(1) * tokens
    return layer_works(scenario=sc, g=g, tokens=t, seqs=t / 2000 if prefill else t, context=2000, prefill=prefill, dense=False)


def _wire(work) -> tuple[float, float]:
    """(NVLink, inter-node) bus bytes of an all-to-all Work, as work_time_s costs them."""
    n = float(np.asarray(work.peers).ravel()[0])
    bus = (n - 1) / n * float(np.asarray(work.bytes).ravel()[0]) * float(np.asarray(work.repeat).ravel()[0])
    off = float(np.asarray(work.offnode).ravel()[0])
    return bus * (1 - off), bus * off


def test_deepep_normal_sends_a_token_once_per_destination_node():
    """DeepEP's normal kernels (prefill) send a token over RDMA once per node that holds one of its top-k
    experts, then forward it over NVLink (DeepEP get_dispatch_layout: num_tokens_per_rdma_rank): per GPU,
    tokens x (N - 1) x p(node) x hidden x bytes across nodes, with p = 1 - C(E - E/N, k) / C(E, k). Before:
    every one of the k copies crossed, (k x (EP - 8) / EP of them off-node), in BF16."""
    tokens, h, k, e = 2000.0, 7168, 8, 256
    sc = _deepseek(moe_a2a_backend="deepep", a2a_dispatch_dtype="bf16")
    works = _moe_works(sc, tokens=tokens, prefill=True)
    assert "ep_alltoall" not in works
    p_node = 1 - np.prod([(e - e / 4 - i) / (e - i) for i in range(k)])
    p_gpu = 1 - np.prod([(e - e / 32 - i) / (e - i) for i in range(k)])
    nvlink, internode = _wire(works["ep_dispatch"])
    assert internode == pytest.approx(tokens * 3 * p_node * h * 2)
    assert nvlink == pytest.approx(tokens * 31 * p_gpu * h * 2)
    # the old model, for the same layout: every top-k copy, 24 of every 31 peers off-node
    plain = _moe_works(_deepseek(), tokens=tokens, prefill=True)["ep_alltoall"]
    old_nvlink, old_internode = _wire(plain)
    assert old_internode / 2 == pytest.approx(tokens * k * 24 / 32 * h * 2)  # repeat 2: dispatch + combine
    assert internode < 0.5 * old_internode / 2  # 2.7 node copies instead of 6 off-node top-k copies
    assert hit_probability(slots=e, group_slots=e / 4, k=k) == pytest.approx(p_node)


def test_fp8_dispatch_halves_the_dispatch_bytes_and_the_combine_stays_bf16():
    """DeepEP dispatches e4m3 with one FP32 scale per 128 values when the experts run FP8 (SGLang
    token_dispatcher/deepep.py: sglang_per_token_group_quant_fp8(hidden_states, 128)); the combine is BF16.
    The default follows the experts' format: FP8 for DeepSeek-V3's block-FP8 checkpoint."""
    for mode, prefill in (("normal", True), ("low_latency", False)):
        fp8 = _moe_works(_deepseek(moe_a2a_backend="deepep", deepep_mode=mode), tokens=2000.0 if prefill else 64.0, prefill=prefill)
        bf16 = _moe_works(_deepseek(moe_a2a_backend="deepep", deepep_mode=mode, a2a_dispatch_dtype="bf16"),
                          tokens=2000.0 if prefill else 64.0, prefill=prefill)
        ratio = (8 + 32 / 128) / 16
        assert sum(_wire(fp8["ep_dispatch"])) == pytest.approx(ratio * sum(_wire(bf16["ep_dispatch"])))
        assert sum(_wire(fp8["ep_combine"])) == pytest.approx(sum(_wire(bf16["ep_combine"])))
        assert sum(_wire(fp8["ep_dispatch"])) == pytest.approx(ratio * sum(_wire(fp8["ep_combine"])))


def test_low_latency_mode_sends_every_top_k_copy_and_auto_splits_the_phases():
    """DeepEP low-latency: one RDMA write per (token, expert), no deduplication. SGLang's default
    --deepep-mode auto runs normal for prefill and low-latency for decode (DeepEPMode.resolve)."""
    tokens, h, k = 64.0, 7168, 8
    sc = _deepseek(moe_a2a_backend="deepep")  # auto
    decode = _moe_works(sc, tokens=tokens, prefill=False)["ep_combine"]
    nvlink, internode = _wire(decode)
    assert nvlink + internode == pytest.approx(tokens * k * 31 / 32 * h * 2)
    assert internode == pytest.approx(tokens * k * 24 / 32 * h * 2)
    prefill = _moe_works(sc, tokens=tokens, prefill=True)["ep_combine"]
    assert _wire(prefill)[1] < 0.5 * internode  # normal mode sends once per node across the network


def _layer(sc, *, tokens: float, prefill: bool):
    cal = shipped_calibration()
    c = cal.for_gpu(sc.cluster.gpu.name, cal.stack_for(sc.engine.name.value, None))
    g = grid(sc, (EP32,), (8,))
    t = np.ones(1) * tokens
    return layer_time(scenario=sc, g=g, tokens=t, seqs=t / 2000 if prefill else t, context=2000, prefill=prefill, dense=False, cal=c)


@pytest.mark.parametrize("prefill,tokens", [(True, 16000.0), (False, 64.0)])
def test_two_batch_overlap_costs_the_engines_schedule_between_the_max_and_the_sum(prefill, tokens):
    """SGLang --enable-two-batch-overlap (vLLM --enable-dbo): two micro-batches of half the tokens, one's
    all-to-all under the other's compute, in the engine's stage order (``tbo_layer_s``). The layer costs
    that schedule + the overheads of the two halves: below the sum of its parts, never below either part
    (at most perfect overlap)."""
    off = _layer(_deepseek(moe_a2a_backend="deepep"), tokens=tokens, prefill=prefill)
    on = _layer(_deepseek(moe_a2a_backend="deepep", enable_two_batch_overlap=True), tokens=tokens, prefill=prefill)
    assert "tbo_overlap" not in off.ops
    exchange = float(on.ops["ep_dispatch"][0] + on.ops["ep_combine"][0])
    overhead = float(on.ops["layer_overhead"][0])
    compute = float(on.total_s[0]) - float(on.ops["tbo_overlap"][0]) - exchange - overhead
    assert float(on.ops["tbo_overlap"][0]) < 0
    assert float(on.total_s[0]) >= max(compute, exchange) + overhead - 1e-12
    assert float(on.total_s[0]) < compute + exchange + overhead
    if prefill:  # a long prompt: the overlap wins
        assert float(on.total_s[0]) < float(off.total_s[0])
    else:  # 32 tokens a micro-batch: each reads the touched experts' weights and pays the launches again, and
        # the overlap does not win that back (SGLang's TBO gains "depend on batch size", lmsys blog)
        assert float(on.total_s[0]) > 0.9 * float(off.total_s[0])
    # a micro-batch of one token cannot be split: the layer runs whole
    one = _layer(_deepseek(moe_a2a_backend="deepep", enable_two_batch_overlap=True), tokens=1.0, prefill=False)
    assert float(one.ops["tbo_overlap"][0]) == 0.0
    assert float(one.total_s[0]) == pytest.approx(float(_layer(_deepseek(moe_a2a_backend="deepep"), tokens=1.0, prefill=False).total_s[0]))


def _per_layer(order: str, **durations: float) -> float:
    groups = {k: np.array([durations.get(k, 0.0)]) for k in ("attention_prepare", "attention", "shared", "experts")}
    comm = {k: np.array([durations.get(k, 0.0)]) for k in ("dispatch", "combine")}
    return float(tbo_layer_s(groups, comm, order)[0])


def test_two_batch_overlap_schedules_worked_by_hand():
    """Per-micro-batch times, worked through SGLang's stage orders by hand (batch_overlap/
    operations_strategy.py). Prefill, exchange-bound (attention 1, experts 1, dispatch 3, combine 3): A's
    next-layer attention waits behind B's combine wait, so a layer is 1 + 4 x 3 = 13, not max(4, 12) = 12.
    Compute-bound (attention 4, experts 4, shared 1, dispatch 1, combine 1): the exchanges hide, 2 x 9 = 18.
    Decode, exchange-bound (prepare 1, attention 1, experts 1, dispatch 3, combine 3, delta 2): each
    micro-batch's routed experts wait for its dispatch and its next stage for its combine, so a layer is
    2 x (3 + 1 + 3) = 14; DeepSeek's decode profile runs the same order (profile-data decode.jpg)."""
    assert _per_layer("prefill_order", attention=1, experts=1, dispatch=3, combine=3) == pytest.approx(13.0)
    assert _per_layer("prefill_order", attention=4, experts=4, shared=1, dispatch=1, combine=1) == pytest.approx(18.0)
    assert _per_layer("decode_order", attention_prepare=1, attention=1, experts=1, dispatch=3, combine=3) == pytest.approx(14.0)
    # no exchange: the compute of the two micro-batches, one after the other
    assert _per_layer("decode_order", attention_prepare=1, attention=2, shared=1, experts=3) == pytest.approx(14.0)


def test_sglang_prefill_runs_the_experts_on_the_sms_deepep_leaves():
    """SGLang's prefill under TBO gives DeepGEMM total SMs - DeepEP's 20 (deep_gemm_num_sms): the routed
    experts take 132 / 112 as long on an H100; decode (low-latency, no SMs held) and a GPU without a known SM
    count keep the whole GPU."""
    sc = _deepseek(moe_a2a_backend="deepep", enable_two_batch_overlap=True)
    assert tbo_expert_sm_share(sc, prefill=True) == pytest.approx(112 / 132)
    assert tbo_expert_sm_share(sc, prefill=False) == 1.0
    assert tbo_expert_sm_share(_deepseek(moe_a2a_backend="deepep"), prefill=True) == 1.0
    on = _layer(sc, tokens=16000.0, prefill=True)
    whole = _layer(_deepseek(moe_a2a_backend="deepep"), tokens=8000.0, prefill=True)  # one micro-batch's experts
    assert float(on.ops["experts"][0]) == pytest.approx(2 * float(whole.ops["experts"][0]) * 132 / 112)
    unknown = sc.model_copy(update={"cluster": sc.cluster.model_copy(update={"gpu": sc.cluster.gpu.model_copy(update={"sm_count": None})})})
    assert tbo_expert_sm_share(unknown, prefill=True) == 1.0


def test_redundant_experts_add_memory_and_change_the_divisibility_rule():
    """SGLang --ep-num-redundant-experts R: E + R expert slots, each EP rank holds (E + R) / EP, and
    (E + R) % ep_size == 0 is asserted (eplb/expert_location.py), so EP need not divide E."""
    plain, redundant = _deepseek(), _deepseek(num_redundant_experts=32)
    expert = bytes_for(ffn_params(hidden_size=7168, width=2048), plain.workload.experts_dtype.bits)
    before = layer_bytes(scenario=plain, layout=EP32, batch=8, dense=False).weights
    after = layer_bytes(scenario=redundant, layout=EP32, batch=8, dense=False).weights
    assert after - before == pytest.approx((9 - 8) * expert, abs=2)  # 288 / 32 = 9 experts per GPU instead of 8

    def divisible(sc, ep: int) -> bool:
        rule = next(r for r in build_rules(sc) if r.name == "experts_divisible")
        return rule.evaluate(sc, Layout(tp=1, pp=1, dp=ep, ep=ep, etp=1, edp=1)).holds

    assert not divisible(plain, 48) and divisible(redundant, 48)  # 256 % 48 != 0, 288 % 48 == 0
    assert divisible(plain, 32) and divisible(redundant, 32)
    assert not divisible(_deepseek(num_redundant_experts=8), 32)  # 264 % 32 != 0
    assert "num_redundant_experts" in next(r for r in build_rules(redundant) if r.name == "experts_divisible").formula


def test_fp8_dispatch_without_deepep_is_refused_with_the_field_named():
    with pytest.raises(ScenarioError, match="a2a_dispatch_dtype"):
        _deepseek(a2a_dispatch_dtype="fp8")
    with pytest.raises(ScenarioError, match="num_redundant_experts"):
        _deepseek(num_redundant_experts=-1)


@pytest.mark.parametrize("name,layout", [("deepseek-v3-32xh100-sglang-deepep", ["--tp", "1", "--dp", "32", "--ep", "16"]),
                                         ("qwen3-235b-a22b-16xh100-sglang-deepep", ["--tp", "1", "--dp", "16", "--ep", "16"])])
def test_estimate_shows_the_ep_exchange_of_the_shipped_deepep_scenarios(name, layout):
    """Done-when of issue 13 item 3: `optimize estimate` for DeepSeek-V3 and Qwen3 shows the dispatch and
    combine with their bytes, and the overlap."""
    run = subprocess.run([sys.executable, "-m", "optimizer.cli", "estimate", "--scenario", name, *layout, "--json", "-"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["ep_exchange"]["moe_a2a_backend"] == "deepep" and doc["ep_exchange"]["two_batch_overlap"] is True
    ops = {op["operator"]: op for op in doc["breakdown"]["prefill"]["operators"]}
    assert ops["ep_dispatch"]["each_internode_bytes"] > 0 and ops["ep_combine"]["each_nvlink_bytes"] > 0
    assert ops["tbo_overlap"]["total_s"] < 0
    if name.startswith("deepseek"):
        assert doc["ep_exchange"]["dispatch_dtype"] == "fp8" and doc["ep_exchange"]["expert_slots"] == 288
        assert ops["ep_dispatch"]["each_internode_bytes"] < ops["ep_combine"]["each_internode_bytes"]
    else:  # BF16 experts: the dispatch stays BF16
        assert doc["ep_exchange"]["dispatch_dtype"] == "bf16"
    text = subprocess.run([sys.executable, "-m", "optimizer.cli", "estimate", "--scenario", name, *layout],
                          cwd=ROOT, capture_output=True, text=True, timeout=120).stdout
    assert "ep_dispatch:" in text and "across nodes per GPU per layer" in text and "EP exchange: deepep" in text


def test_large_scale_ep_prefill_against_the_sglang_96_h100_measurement():
    """lmsys.org/blog/2025-05-05-large-scale-ep: SGLang prefill of DeepSeek-V3 on H100 nodes at EP 32 with
    DeepEP, two-batch overlap and EPLB, 52.3k input tokens/s per node for 2000-token inputs. With steps of
    16,000 tokens per GPU (an assumption) `python scripts/large_scale_ep.py` gives: old EP model 15.6k
    (-70%), speed of light 25.6k, below the measurement (the issue's "2x beyond the speed of light"); new
    model 45.3k (-13%), speed of light 64.6k. Nothing is fitted to the figure; this pins only that the
    measurement now lies between the estimate and its speed of light."""
    run = subprocess.run([sys.executable, "scripts/large_scale_ep.py"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    old, new = [line for line in run.stdout.splitlines() if "EP model" in line]
    assert "below the measurement" in old and "above the measurement" in new
    predicted = float(new.split(":")[1].split("tokens/s")[0].replace(",", ""))
    assert predicted < 52_300  # conservative: the estimate does not beat the measurement


def test_launch_lines_carry_the_ep_switches():
    """`optimize launch` writes the scenario's EP switches as each engine spells them: SGLang --moe-a2a-backend
    deepep --deepep-mode --enable-two-batch-overlap --ep-num-redundant-experts; vLLM --all2all-backend
    deepep_high_throughput|deepep_low_latency, --enable-dbo, --enable-eplb --eplb-config. vLLM has no auto mode."""
    import copy

    from optimizer.errors import OptimizerError
    from optimizer.outputs.launch import sglang_commands, vllm_commands
    from tests.test_launch import check_flag_sources

    run = subprocess.run([sys.executable, "-m", "optimizer.cli", "--scenario", "deepseek-v3-32xh100-sglang-deepep", "--json", "-"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    sglang = sglang_commands(doc)
    check_flag_sources(sglang)
    argv = " ".join(sglang.commands[0].argv)
    assert ("--moe-a2a-backend deepep --deepep-mode auto --enable-two-batch-overlap --ep-num-redundant-experts 32" in argv)
    with pytest.raises(OptimizerError, match="no auto DeepEP mode"):
        vllm_commands(doc)
    # the same sizes under vLLM (EP = TP x DP of an instance: one instance of 32), normal mode
    vdoc = copy.deepcopy(doc)
    vdoc["scenario"]["engine"].update(name="vllm", enable_expert_parallel=True, deepep_mode="normal")
    vdoc["plan"].update(ep=32, edp=1, instances=1)
    vllm = vllm_commands(vdoc)
    check_flag_sources(vllm)
    argv = vllm.commands[0].argv
    assert argv[argv.index("--all2all-backend") + 1] == "deepep_high_throughput"
    assert "--enable-dbo" in argv and json.loads(argv[argv.index("--eplb-config") + 1]) == {"num_redundant_experts": 32}


def test_deepep_needs_whole_experts_per_rank():
    """SGLang sets ep_size = tp_size with DeepEP (server_args.py _handle_a2a_moe): no expert is split (ETP 1)."""
    sc = _deepseek(moe_a2a_backend="deepep")
    rule = next(r for r in build_rules(sc) if r.name == "deepep_whole_experts")
    assert rule.evaluate(sc, EP32).holds
    split = Layout(tp=1, pp=1, dp=32, ep=16, etp=2, edp=1)
    check = rule.evaluate(sc, split)
    assert not check.holds and (check.lhs, check.rhs) == (2, 1)
    assert "deepep_whole_experts" not in {r.name for r in build_rules(_deepseek())}


def test_a_misspelt_backend_is_bad_input_with_file_and_field(tmp_path):
    text = (ROOT / "scenarios" / "qwen3-235b-a22b-16xh100-sglang-deepep.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("moe_a2a_backend: deepep", "moe_a2a_backend: deepepp"))
    run = subprocess.run([sys.executable, "-m", "optimizer.cli", "--scenario", str(bad)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2
    assert "bad.yaml" in run.stderr and "engine.moe_a2a_backend" in run.stderr and "'deepep'" in run.stderr


def test_sglang_data_parallel_dense_ffn_and_lm_head():
    """SGLang's --moe-dense-tp-size 1 and --enable-dp-lm-head (the large-scale EP recipe, lmsys.org
    2025-05-05: "Users can enable this feature by setting `--moe-dense-tp-size=1`"; the LM head "we adopt Data
    Parallelism"): the dense MLP and the LM head run on each GPU's own tokens, so the dense layers lose their
    all-reduce over the 32-GPU --tp-size group and the LM head its logits gather, while each GPU holds the
    whole dense MLP and LM head. Default off: SGLang's defaults shard both over --tp-size."""
    from optimizer.errors import ScenarioError as BadInput
    from optimizer.model.cost import integer_costs
    from optimizer.model.memory import stage_memory
    from optimizer.search.rules import MoeDenseTpOne

    default, dp = _deepseek(), _deepseek(moe_dense_tp_size=1, enable_dp_lm_head=True)
    t0 = integer_costs(scenario=default, layouts=(EP32,), batches=(32,))
    t1 = integer_costs(scenario=dp, layouts=(EP32,), batches=(32,))
    assert "ffn_allreduce" in t0.decode.dense_breakdown.row(0) and "ffn_allreduce" not in t1.decode.dense_breakdown.row(0)
    assert t1.decode.last_breakdown.row(0)["logits_gather"] < t0.decode.last_breakdown.row(0)["logits_gather"] / 10
    assert t1.decode.dense_layer_ns[0] < t0.decode.dense_layer_ns[0] and t1.decode.last_extra_ns[0] < t0.decode.last_extra_ns[0]
    [m0], [m1] = (stage_memory(scenario=s, layout=EP32, layers_per_stage=(61,), batch=32) for s in (default, dp))
    vocab_h = 129280 * 7168 * 2  # the whole LM head in BF16 on each GPU
    assert m1.weights_bytes - m0.weights_bytes >= vocab_h - vocab_h // 32
    # the rule: the switch is planned with attention TP 1
    rule = next(r for r in build_rules(dp) if isinstance(r, MoeDenseTpOne))
    assert rule.holds(dp, EP32) and not rule.holds(dp, Layout(tp=2, pp=1, dp=16, ep=32, etp=1, edp=1))
    assert not any(isinstance(r, MoeDenseTpOne) for r in build_rules(default))
    with pytest.raises(BadInput, match="SGLang switches"):
        scenario_from_dict({"name": "t", "cluster": {"gpu": "h100-sxm", "num_nodes": 1}, "model": "Qwen3-30B-A3B",
                            "workload": {"concurrent_sequences": 8, "input_tokens": 128, "output_tokens": 16},
                            "engine": {"name": "vllm", "enable_dp_lm_head": True}})


def test_the_large_ep_launch_carries_the_data_parallel_switches():
    from optimizer.outputs.launch import sglang_commands
    from tests.test_launch import check_flag_sources

    run = subprocess.run([sys.executable, "-m", "optimizer.cli", "--scenario", "deepseek-v3-32xh100-sglang-deepep", "--json", "-"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    doc = json.loads(run.stdout)
    doc["scenario"]["engine"].update(moe_dense_tp_size=1, enable_dp_lm_head=True)
    cmds = sglang_commands(doc)
    check_flag_sources(cmds)
    argv = " ".join(cmds.commands[0].argv)
    assert "--moe-dense-tp-size 1" in argv and "--enable-dp-lm-head" in argv
    assert "--moe-dense-tp-size" not in " ".join(sglang_commands(json.loads(run.stdout)).commands[0].argv)
