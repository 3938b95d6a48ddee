"""Launch commands from real plan documents (the CLI's ``--json`` output through CliRunner) and from
hand-edited variants: exact flags and values per engine, node ranks and DP start ranks, every node's GPUs
used once, the plans each engine cannot run, and every emitted flag traced to ``FLAG_SOURCES``."""

from __future__ import annotations

import copy
import json
import shlex
from fractions import Fraction

import pytest
from click.testing import CliRunner

from optimizer.cli import main
from optimizer.errors import OptimizerError, PlanError
from optimizer.outputs.launch import (
    FLAG_SOURCES,
    CommandRole,
    LaunchEngine,
    LaunchPlan,
    NodeCommand,
    NotExpressible,
    decimal_text,
    launch_commands,
    max_model_len,
    model_reference,
    sglang_commands,
    trtllm_commands,
    vllm_commands,
)
from optimizer.inputs.scenario import Scenario

_DOCS: dict[str, dict] = {}


def document(name: str) -> dict:
    """The plan document ``optimize --scenario NAME --json -`` prints (solved once per test session)."""
    if name not in _DOCS:
        result = CliRunner().invoke(main, ["--scenario", name, "--json", "-"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        _DOCS[name] = json.loads(result.output)
    return copy.deepcopy(_DOCS[name])


def edited(name: str, *, plan: dict | None = None, cluster: dict | None = None, workload: dict | None = None,
           search: dict | None = None) -> dict:
    """A shipped plan document with plan sizes (and scenario fields) replaced by hand. New sizes drop the
    solver's instance count unless ``plan`` gives one (it would describe the old sizes)."""
    doc = document(name)
    if plan:
        doc["plan"].pop("instances")
        doc["plan"].pop("dp_per_instance")
    doc["plan"].update(plan or {})
    doc["scenario"]["cluster"].update(cluster or {})
    doc["scenario"]["workload"].update(workload or {})
    doc["scenario"]["search"].update(search or {})
    return doc


def flags(cmd: NodeCommand) -> dict[str, str | None]:
    """``--name value`` pairs of a command (``None`` for a switch); a flag given twice fails the test."""
    out: dict[str, str | None] = {}
    argv = list(cmd.argv)
    for i, token in enumerate(argv):
        if token.startswith("--"):
            assert token not in out, f"{token} given twice in {cmd.shell}"
            nxt = argv[i + 1] if i + 1 < len(argv) else None
            out[token] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def servers(plan: LaunchPlan) -> list[NodeCommand]:
    return [c for c in plan.commands if c.role in (CommandRole.SERVE, CommandRole.HEADLESS)]


def check_gpus_cover_cluster(plan: LaunchPlan, doc: dict) -> None:
    """Every node's GPUs are brought in exactly once across the commands, and only real GPUs."""
    cluster = doc["scenario"]["cluster"]
    per_node: dict[int, list[int]] = {}
    for cmd in plan.commands:
        per_node.setdefault(cmd.node, []).extend(cmd.gpus)
        for node, gpus in cmd.other_nodes:  # mpirun -H starts ranks there too
            per_node.setdefault(node, []).extend(gpus)
    assert sorted(per_node) == list(range(cluster["num_nodes"]))
    for node, gpus in per_node.items():
        assert sorted(gpus) == list(range(cluster["gpus_per_node"])), (node, gpus)
    for cmd in plan.commands:  # CUDA_VISIBLE_DEVICES says the same as gpus
        env = dict(cmd.env)
        if "CUDA_VISIBLE_DEVICES" in env:
            assert env["CUDA_VISIBLE_DEVICES"] == ",".join(map(str, cmd.gpus))
        elif cmd.gpus:
            assert cmd.gpus == tuple(range(cluster["gpus_per_node"]))


def check_node_ranks(plan: LaunchPlan) -> None:
    """Per instance: one head (the API server) then headless nodes, on distinct nodes; multi-node ranks
    0..k-1 with the same node count everywhere (--nnodes), or vLLM DP start ranks that add up the local
    DP sizes to --data-parallel-size."""
    by_instance: dict[int, list[NodeCommand]] = {}
    for cmd in servers(plan):
        by_instance.setdefault(cmd.instance, []).append(cmd)
    assert sorted(by_instance) == list(range(len(by_instance)))
    for cmds in by_instance.values():
        assert [c.role for c in cmds] == [CommandRole.SERVE] + [CommandRole.HEADLESS] * (len(cmds) - 1)
        assert len({c.node for c in cmds}) == len(cmds)
        head = flags(cmds[0])
        if len(cmds) > 1 and "--nnodes" in head:
            assert [flags(c)["--node-rank"] for c in cmds] == [str(r) for r in range(len(cmds))]
            assert {flags(c)["--nnodes"] for c in cmds} == {str(len(cmds))}
        elif len(cmds) > 1:
            local = [int(flags(c)["--data-parallel-size-local"]) for c in cmds]
            starts = [int(flags(c).get("--data-parallel-start-rank") or 0) for c in cmds]
            assert starts == [sum(local[:i]) for i in range(len(cmds))]
            assert sum(local) == int(head["--data-parallel-size"])
            assert {flags(c)["--data-parallel-address"] for c in cmds} == {head["--data-parallel-address"]}


def check_flag_sources(plan: LaunchPlan) -> None:
    """Every flag and environment variable emitted is in FLAG_SOURCES for its program."""
    known = {(s.program, s.name) for s in FLAG_SOURCES}
    for cmd in plan.commands:
        programs = {"vllm": "vllm", "python3": "sglang", "ray": "ray", "trtllm-serve": "trtllm", "mpirun": "mpirun"}
        program = programs[cmd.argv[0]]
        for token in cmd.argv[1:]:
            if token in ("trtllm-llmapi-launch", "trtllm-serve"):  # mpirun's program, then trtllm-serve's flags
                assert ("trtllm", token) in known
                program = "trtllm"
            elif token.startswith("-"):
                assert (program, token.split("=")[0]) in known, f"{program} {token} has no source"
        for name, _ in cmd.env:
            assert ("env", name) in known, f"{name} has no source"
        if "-x" in cmd.argv:
            assert ("env", cmd.argv[cmd.argv.index("-x") + 1].split("=")[0]) in known
    for _, text in plan.files:  # the options file's top-level keys
        for line in text.splitlines():
            if not line.startswith(" "):
                assert ("trtllm-options", line.split(":")[0]) in known, f"{line} has no source"
    for s in FLAG_SOURCES:
        assert s.source and s.version


def both(doc: dict, **options) -> tuple[LaunchPlan, LaunchPlan]:
    plans = vllm_commands(doc, **options), sglang_commands(doc, **options)
    for plan in plans:
        check_gpus_cover_cluster(plan, doc)
        check_flag_sources(plan)
    for plan in plans:
        check_node_ranks(plan)
    return plans


# ------------------------------------------------------------------------------------ shipped scenarios


def test_llama_70b_dense_tp4_dp2_is_two_instances_on_one_node():
    doc = document("llama-3.1-70b-8xh100")
    assert (doc["plan"]["tp"], doc["plan"]["dp"], doc["plan"]["pp"], doc["plan"]["instances"]) == (4, 2, 1, 2)
    vllm, sglang = both(doc)
    assert [(c.node, c.instance, c.gpus) for c in vllm.commands] == [(0, 0, (0, 1, 2, 3)), (0, 1, (4, 5, 6, 7))]
    batch = str(doc["plan"]["batch_per_replica"])
    for i, cmd in enumerate(vllm.commands):
        assert cmd.argv[:3] == ("vllm", "serve", "meta-llama/Llama-3.1-70B")
        assert flags(cmd) == {"--tensor-parallel-size": "4", "--pipeline-parallel-size": "1",
                              "--gpu-memory-utilization": "0.9", "--max-model-len": "1280", "--max-num-seqs": batch,
                              "--max-num-batched-tokens": "8192", "--port": str(8000 + i)}
        assert dict(cmd.env) == {"CUDA_VISIBLE_DEVICES": ",".join(map(str, cmd.gpus))}
    for i, cmd in enumerate(sglang.commands):
        assert cmd.argv[:5] == ("python3", "-m", "sglang.launch_server", "--model-path", "meta-llama/Llama-3.1-70B")
        assert flags(cmd) == {"--model-path": "meta-llama/Llama-3.1-70B", "--tp-size": "4", "--pp-size": "1",
                              "--mem-fraction-static": "0.9", "--max-running-requests": batch,
                              "--context-length": "1280", "--chunked-prefill-size": "8192",
                              "--host": "0.0.0.0", "--port": str(30000 + 100 * i)}  # SGLang derives ports above each
    assert "2 independent instances, HTTP ports 8000 on node 0, 8001 on node 0: put a load balancer" in vllm.notes[0]
    assert "HTTP ports 30000 on node 0, 30100 on node 0" in " ".join(sglang.notes)
    assert not any("Hugging Face" in n for n in vllm.notes)  # the repo id came from model.source


# DeepSeek-V3 on 32 H800 as one 4-node instance, TP 1 x DP 32 x EP 32: the search's pick until the per-engine
# kernel fits (issue 13 item 6) made 2 instances of EP 16 cheaper; kept by hand to test a 4-node launch.
DSV3_EP32 = {"tp": 1, "pp": 1, "dp": 32, "ep": 32, "etp": 1, "edp": 1}


def test_deepseek_v3_vllm_expert_parallel_over_four_nodes():
    doc = edited("deepseek-v3-32xh800", plan=DSV3_EP32)
    assert (doc["plan"]["tp"], doc["plan"]["dp"], doc["plan"]["ep"], doc["plan"]["etp"]) == (1, 32, 32, 1)
    vllm, _ = both(doc)
    cmds = servers(vllm)
    assert [c.node for c in cmds] == [0, 1, 2, 3] and all(c.instance == 0 for c in cmds)
    batch = str(doc["plan"]["batch_per_replica"])
    shared = {"--tensor-parallel-size": "1", "--pipeline-parallel-size": "1", "--data-parallel-size": "32",
              "--enable-expert-parallel": None, "--gpu-memory-utilization": "0.9", "--max-model-len": "2560",
              "--max-num-seqs": batch, "--max-num-batched-tokens": "8192", "--data-parallel-size-local": "8",
              "--data-parallel-address": "NODE0_ADDR", "--data-parallel-rpc-port": "13345"}
    assert flags(cmds[0]) == {**shared, "--port": "8000"}
    for rank, cmd in enumerate(cmds[1:], start=1):
        assert flags(cmd) == {**shared, "--data-parallel-start-rank": str(8 * rank), "--headless": None}
        assert cmd.env == ()  # whole nodes: no CUDA_VISIBLE_DEVICES
    assert cmds[0].argv[2] == "deepseek-ai/DeepSeek-V3"
    assert not any("--quantization" in c.argv or "--kv-cache-dtype" in c.argv for c in cmds)
    assert any("fp8-block" in n and "quantization_config" in n for n in vllm.notes)
    assert any("NODE<n>_ADDR" in n for n in vllm.notes)
    # DP ranks add up: local sizes cover 0..31 once
    starts = [int(flags(c).get("--data-parallel-start-rank") or 0) for c in cmds]
    assert starts == [0, 8, 16, 24] and starts[-1] + 8 == 32


def test_deepseek_v3_sglang_attention_dp_over_four_nodes():
    doc = edited("deepseek-v3-32xh800", plan=DSV3_EP32)
    _, sglang = both(doc)
    cmds = servers(sglang)
    assert len(cmds) == 4
    batch = doc["plan"]["batch_per_replica"]
    for rank, cmd in enumerate(cmds):
        assert flags(cmd) == {
            "--model-path": "deepseek-ai/DeepSeek-V3", "--tp-size": "32", "--pp-size": "1", "--attn-dp-size": "32",
            "--ep-size": "32", "--mem-fraction-static": "0.9", "--max-running-requests": str(batch * 32),
            "--context-length": "2560", "--chunked-prefill-size": str(8192 * 32), "--host": "0.0.0.0",
            "--port": "30000", "--nnodes": "4", "--node-rank": str(rank), "--dist-init-addr": "NODE0_ADDR:20000"}
    legacy = sglang_commands(doc, legacy_dp_attention=True)
    assert flags(legacy.commands[0])["--dp-size"] == "32" and "--enable-dp-attention" in legacy.commands[0].argv
    assert "--attn-dp-size" not in legacy.commands[0].argv
    check_flag_sources(legacy)


def test_qwen3_30b_single_node_expert_parallel():
    doc = document("qwen3-30b-a3b-8xh100")
    assert (doc["plan"]["tp"], doc["plan"]["dp"], doc["plan"]["ep"], doc["plan"]["instances"]) == (1, 8, 8, 1)
    vllm, sglang = both(doc)
    (cmd,) = vllm.commands
    assert cmd.argv[:3] == ("vllm", "serve", "Qwen/Qwen3-30B-A3B") and cmd.env == () and cmd.gpus == tuple(range(8))
    f = flags(cmd)
    assert (f["--tensor-parallel-size"], f["--data-parallel-size"], f["--port"]) == ("1", "8", "8000")
    assert "--enable-expert-parallel" in f and "--nnodes" not in f and "--headless" not in f
    assert "--data-parallel-size-local" not in f  # single node: vLLM runs all DP ranks locally
    (cmd,) = sglang.commands
    f = flags(cmd)
    assert (f["--tp-size"], f["--attn-dp-size"], f["--ep-size"]) == ("8", "8", "8") and "--nnodes" not in f
    assert vllm.notes == tuple(n for n in vllm.notes if "rank_map" not in n)  # follows the rank map


# What the search picked for Qwen3-235B on 16 H100 under vLLM before the engine_placement rule (issue 13
# item 7), kept as a hand-written plan: the launch must still say what vLLM does with a rank map it cannot run.
QWEN_PP2 = {"tp": 1, "pp": 2, "dp": 8, "ep": 8, "etp": 1, "edp": 1, "layers_per_stage": [48, 46]}


def qwen_pp2() -> dict:
    return edited("qwen3-235b-a22b-16xh100", plan=QWEN_PP2)


def test_qwen3_235b_picked_plan_runs_the_rank_map_under_vllm():
    """Issue 13 item 7: the plan the search picks is one vLLM starts on the rank map's GPUs, so its launch
    has no placement note; each of its 2 instances (TP 2 x DP 4) fills one node."""
    doc = document("qwen3-235b-a22b-16xh100")
    plan = doc["plan"]
    assert (plan["tp"], plan["pp"], plan["dp"], plan["ep"], plan["edp"]) == (2, 1, 8, 8, 2)
    vllm = launch_commands(doc, engine="vllm")
    assert not any("rank_map" in n for n in vllm.notes), vllm.notes
    assert [(c.node, c.gpus) for c in vllm.commands] == [(0, tuple(range(8))), (1, tuple(range(8)))]
    # the hand-written TP 1 PP 2 plan it used to pick is what vLLM cannot run as mapped
    assert any("cannot follow the plan's rank_map" in n for n in launch_commands(qwen_pp2(), engine="vllm").notes)


def test_qwen3_235b_pipeline_across_nodes_uneven_layers():
    doc = qwen_pp2()
    plan = doc["plan"]
    assert (plan["tp"], plan["pp"], plan["dp"], plan["layers_per_stage"]) == (1, 2, 8, [48, 46])
    vllm, sglang = both(doc, node_addresses=["10.0.0.1", "10.0.0.2"])
    for cmd in vllm.commands:  # vLLM would split 94 layers 47/47: the plan's split goes in the env
        assert dict(cmd.env)["VLLM_PP_LAYER_PARTITION"] == "48,46"
        assert flags(cmd)["--data-parallel-address"] == "10.0.0.1"
        assert flags(cmd)["--data-parallel-size-local"] == "4"
    assert flags(vllm.commands[1])["--data-parallel-start-rank"] == "4"
    # vLLM runs whole DP ranks per node, so the plan's PP-across-nodes layout cannot be followed: said so
    (note,) = [n for n in vllm.notes if "rank_map" in n]
    assert "8 of 8 PP groups stay inside a node here" in note and "EP groups cross nodes here" in note
    # SGLang's world is pp-major: it follows the rank map, stage 0 on node 0 and stage 1 on node 1
    for rank, cmd in enumerate(sglang.commands):
        assert dict(cmd.env) == {"SGLANG_PP_LAYER_PARTITION": "48,46"}
        f = flags(cmd)
        assert (f["--tp-size"], f["--pp-size"], f["--attn-dp-size"], f["--ep-size"]) == ("8", "2", "8", "8")
        assert (f["--nnodes"], f["--node-rank"], f["--dist-init-addr"]) == ("2", str(rank), "10.0.0.1:20000")
    assert not any("rank_map" in n for n in sglang.notes)
    assert not any("NODE<n>_ADDR" in n for n in vllm.notes + sglang.notes)


def test_megatron_plan_with_etp2_is_not_expressible_in_vllm():
    # Megatron folding: TP 1, DP 16, EP 8, ETP 2 (the search picked it for 16gpu-30b before issue 13 made EP 16 cheaper)
    doc = edited("16gpu-30b", plan={"tp": 1, "pp": 1, "dp": 16, "ep": 8, "etp": 2, "edp": 1})
    with pytest.raises(NotExpressible) as err:
        vllm_commands(doc)
    message = str(err.value)
    assert message.startswith("vllm: ") and "EP = 8, ETP = 2" in message
    assert "EP = 16, ETP = 1 or EP = 1, ETP = 16" in message
    assert isinstance(err.value, OptimizerError)
    sglang = sglang_commands(doc)  # SGLang's --ep-size leaves ETP = tp_size / ep_size = 2
    f = flags(sglang.commands[0])
    assert (f["--tp-size"], f["--ep-size"], f["--attn-dp-size"]) == ("16", "8", "16")
    assert f["--model-path"] == "moe-30b"
    assert any("not a Hugging Face repo id" in n for n in sglang.notes)
    assert "# note: model 'moe-30b' is the scenario's model name" in sglang.render()
    assert any("costed for engine megatron" in n for n in sglang.notes)


# --------------------------------------------------------------------------------- hand-built variants


def test_dense_replica_over_two_nodes_uses_vllm_multiprocessing_multinode():
    doc = edited("llama-3.1-70b-8xh100", cluster={"num_nodes": 2},
                 plan={"tp": 8, "pp": 2, "dp": 1, "etp": 8, "edp": 1, "layers_per_stage": [41, 39]})
    vllm, sglang = both(doc)
    head, worker = vllm.commands
    assert (head.node, head.role, worker.node, worker.role) == (0, CommandRole.SERVE, 1, CommandRole.HEADLESS)
    common = {"--tensor-parallel-size": "8", "--pipeline-parallel-size": "2", "--nnodes": "2",
              "--master-addr": "NODE0_ADDR", "--master-port": "29501"}
    assert flags(head).items() >= {**common, "--node-rank": "0", "--port": "8000"}.items()
    assert flags(worker).items() >= {**common, "--node-rank": "1", "--headless": None}.items()
    assert "--port" not in flags(worker) and "--data-parallel-size" not in flags(head)
    assert dict(head.env) == dict(worker.env) == {"VLLM_PP_LAYER_PARTITION": "41,39"}
    assert [flags(c)["--dist-init-addr"] for c in sglang.commands] == ["NODE0_ADDR:20000"] * 2
    assert {flags(c)["--tp-size"] for c in sglang.commands} == {"8"}
    assert not any("rank_map" in n for n in vllm.notes + sglang.notes)


def test_two_dense_replicas_each_over_two_nodes_follow_the_rank_map():
    # TP4 PP2 DP2 on 2 x 8: the rank map puts stage 0 of both replicas on node 0 (GPUs 0-3, 4-7), stage 1
    # on node 1; each instance then spans both nodes on half their GPUs, with its own master port.
    doc = edited("llama-3.1-70b-8xh100", cluster={"num_nodes": 2},
                 plan={"tp": 4, "pp": 2, "dp": 2, "etp": 4, "edp": 2, "layers_per_stage": [40, 40]})
    vllm, sglang = both(doc)
    assert [(c.instance, c.node, c.gpus) for c in vllm.commands] == [
        (0, 0, (0, 1, 2, 3)), (0, 1, (0, 1, 2, 3)), (1, 0, (4, 5, 6, 7)), (1, 1, (4, 5, 6, 7))]
    assert [flags(c)["--master-port"] for c in vllm.commands] == ["29501", "29501", "29502", "29502"]
    assert [flags(c).get("--port") for c in vllm.commands] == ["8000", None, "8001", None]
    assert [flags(c)["--dist-init-addr"] for c in sglang.commands] == [
        "NODE0_ADDR:20000", "NODE0_ADDR:20000", "NODE0_ADDR:20100", "NODE0_ADDR:20100"]
    assert [flags(c)["--port"] for c in sglang.commands] == ["30000", "30000", "30100", "30100"]
    assert not any("rank_map" in n for n in vllm.notes + sglang.notes)


def test_moe_dp_ranks_spanning_nodes_use_a_ray_cluster_in_vllm():
    # DeepSeek-V3 TP8 PP2 DP2 (EP 16) on 4 x 8: each DP rank needs 16 GPUs, two nodes.
    doc = edited("deepseek-v3-32xh800",
                 plan={"tp": 8, "pp": 2, "dp": 2, "ep": 16, "etp": 1, "edp": 1, "layers_per_stage": [31, 30]})
    vllm, sglang = both(doc)
    roles = [(c.node, c.role) for c in vllm.commands]
    assert roles == [(0, CommandRole.RAY_HEAD), (1, CommandRole.RAY_WORKER), (2, CommandRole.RAY_WORKER),
                     (3, CommandRole.RAY_WORKER), (0, CommandRole.SERVE)]
    assert vllm.commands[0].argv == ("ray", "start", "--head", "--port=6379")
    assert vllm.commands[1].argv == ("ray", "start", "--address=NODE0_ADDR:6379")
    serve = vllm.commands[-1]
    assert dict(serve.env) == {"VLLM_RAY_DP_PACK_STRATEGY": "span", "VLLM_PP_LAYER_PARTITION": "31,30"}
    f = flags(serve)
    assert (f["--tensor-parallel-size"], f["--pipeline-parallel-size"], f["--data-parallel-size"]) == ("8", "2", "2")
    assert (f["--data-parallel-backend"], f["--distributed-executor-backend"]) == ("ray", "ray")
    assert "--enable-expert-parallel" in f and "--data-parallel-size-local" not in f
    assert any("Ray places the DP ranks" in n for n in vllm.notes)
    # SGLang: one 4-node server, pp 2 over 4 nodes (2 nodes per stage), following the rank map
    assert [flags(c)["--node-rank"] for c in sglang.commands] == ["0", "1", "2", "3"]
    f = flags(sglang.commands[0])
    assert (f["--tp-size"], f["--pp-size"], f["--attn-dp-size"], f["--ep-size"]) == ("16", "2", "2", "16")
    assert not any("rank_map" in n for n in sglang.notes)


def test_edp_that_does_not_divide_dp_is_rejected():
    doc = edited("qwen3-30b-a3b-8xh100", plan={"tp": 8, "dp": 1, "ep": 4, "etp": 1, "edp": 2})
    for build in (vllm_commands, sglang_commands):
        with pytest.raises(NotExpressible, match=r"EDP = 2 expert copies .* do not split DP = 1"):
            build(doc)


def test_instances_that_straddle_nodes_unevenly_are_rejected():
    # 3 nodes x 2 GPUs, dense TP3 DP2: an instance would hold 2 GPUs of one node and 1 of the next.
    doc = edited("3gpu-32gb", cluster={"num_nodes": 3, "gpus_per_node": 2},
                 plan={"tp": 3, "pp": 1, "dp": 2, "etp": 3, "edp": 2})
    with pytest.raises(NotExpressible, match=r"3 GPUs cannot be laid out on nodes of 2 GPUs: it gives the nodes"):
        vllm_commands(doc)
    with pytest.raises(NotExpressible, match=r"^sglang: "):
        sglang_commands(doc)


def test_replicas_split_one_gpu_per_node_follow_the_rank_map():
    # 2 nodes x 3 GPUs, dense TP1 PP2 DP3: replica d has stage 0 on node 0 GPU d, stage 1 on node 1 GPU d.
    doc = edited("3gpu-32gb", cluster={"num_nodes": 2},
                 plan={"tp": 1, "pp": 2, "dp": 3, "etp": 1, "edp": 3, "layers_per_stage": [16, 16]})
    vllm, _ = both(doc)
    assert [(c.instance, c.node, c.gpus) for c in vllm.commands] == [
        (d, n, (d,)) for d in range(3) for n in range(2)]
    assert all(flags(c)["--nnodes"] == "2" for c in vllm.commands)


def test_kv_cache_and_weight_formats():
    doc = edited("llama-3.1-70b-8xh100", workload={"kv_cache_dtype": "fp8", "weight_dtype": "fp8"})
    vllm, sglang = both(doc)
    assert flags(vllm.commands[0])["--kv-cache-dtype"] == "fp8"
    assert flags(sglang.commands[0])["--kv-cache-dtype"] == "fp8_e4m3"
    assert flags(vllm.commands[0])["--quantization"] == "fp8"  # a BF16 repo quantised at load
    assert flags(sglang.commands[0])["--quantization"] == "fp8"
    assert any("--quantization fp8 quantises a BF16 checkpoint" in n for n in vllm.notes)
    gpt_oss = vllm_commands(document("gpt-oss-120b-8xh100"))
    assert "--quantization" not in gpt_oss.commands[0].argv
    assert any(n.startswith("weights bf16, expert weights mxfp4: no --quantization flag") for n in gpt_oss.notes)
    experts_only = edited("qwen3-30b-a3b-8xh100", workload={"expert_weight_dtype": "fp8"})
    assert "--quantization" not in vllm_commands(experts_only).commands[0].argv  # online FP8 would hit attention too
    assert any(n.startswith("weights bf16, expert weights fp8: no --quantization flag")
               for n in vllm_commands(experts_only).notes)
    bad = edited("llama-3.1-70b-8xh100", workload={"kv_cache_dtype": "int4"})
    with pytest.raises(NotExpressible, match="kv_cache_dtype=int4"):
        vllm_commands(bad)


@pytest.mark.parametrize(("written", "text"), [("9/10", "0.9"), (0.85, "0.85"), ("2/3", "0.6666"), (1, "1")])
def test_memory_fraction_written_as_number_or_fraction(written, text):
    doc = edited("qwen3-30b-a3b-8xh100", search={"gpu_memory_utilization": written})
    assert flags(vllm_commands(doc).commands[0])["--gpu-memory-utilization"] == text
    assert flags(sglang_commands(doc).commands[0])["--mem-fraction-static"] == text


def test_decimal_text_rounds_down():
    assert decimal_text(Fraction(9, 10)) == "0.9"
    assert decimal_text(Fraction(1, 3)) == "0.3333"
    assert decimal_text(Fraction(2)) == "2"


def test_model_reference():
    assert model_reference(name="x", source="huggingface.co/deepseek-ai/DeepSeek-V3/config.json; params: y") == (
        "deepseek-ai/DeepSeek-V3", None)
    name, note = model_reference(name="moe-30b", source="task statement")
    assert name == "moe-30b" and "not a Hugging Face repo id" in note


def test_unreadable_documents_raise_plan_error():
    with pytest.raises(PlanError, match="no 'plan' mapping"):
        vllm_commands({"scenario": {}})
    doc = edited("qwen3-30b-a3b-8xh100", plan={"layers_per_stage": [20, 20]})
    with pytest.raises(PlanError, match="must have PP = 1 entries summing to num_hidden_layers = 48"):
        sglang_commands(doc)
    doc = edited("qwen3-30b-a3b-8xh100", plan={"dp": 4})
    with pytest.raises(PlanError, match="TP x PP x DP = 4, the cluster has 8 GPUs"):
        vllm_commands(doc)
    doc = edited("qwen3-30b-a3b-8xh100", cluster={"num_nodes": 0})
    with pytest.raises(PlanError, match="scenario.cluster.num_nodes"):
        vllm_commands(doc)
    doc = edited("llama-3.1-70b-8xh100", plan={"instances": 1})
    with pytest.raises(PlanError, match="plan.instances = 1, but vllm runs this layout as 2"):
        vllm_commands(doc)
    with pytest.raises(PlanError, match="expected 1 addresses"):
        vllm_commands(document("qwen3-30b-a3b-8xh100"), node_addresses=["a", "b"])
    with pytest.raises(PlanError, match="unknown engine 'trtllm'"):
        launch_commands(document("qwen3-30b-a3b-8xh100"), engine="trtllm")


def test_render_and_as_dict_round_trip():
    plan = launch_commands(qwen_pp2(), engine="vllm")
    assert plan.engine is LaunchEngine.VLLM
    text = plan.render()
    assert text.startswith("# vllm 0.33.0 launch for qwen3-235b-a22b-16xh100: TP=1 PP=2 DP=8")
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines == [c.shell for c in plan.commands]
    for cmd in plan.commands:
        tokens = shlex.split(cmd.shell)
        assert tokens == [f"{k}={v}" for k, v in cmd.env] + list(cmd.argv)
    as_json = json.loads(json.dumps(plan.as_dict()))
    assert [c["node"] for c in as_json["commands"]] == [0, 1]
    assert as_json["commands"][1]["env"] == {"VLLM_PP_LAYER_PARTITION": "48,46"}


def test_shell_quotes_odd_values():
    cmd = NodeCommand(node=0, instance=0, role=CommandRole.SERVE, argv=("vllm", "serve", "/models/my model"),
                      env=(("CUDA_VISIBLE_DEVICES", "0,1"),))
    assert cmd.shell == "CUDA_VISIBLE_DEVICES=0,1 vllm serve '/models/my model'"


# ------------------------------------------------------------------------------------------ TensorRT-LLM


def trtllm(doc: dict, **options) -> LaunchPlan:
    plan = trtllm_commands(doc, **options)
    check_gpus_cover_cluster(plan, doc)
    check_flag_sources(plan)
    return plan


def test_trtllm_deepseek_v3_attention_dp_expert_parallel_on_one_node():
    doc = document("deepseek-v3-8xb200-trtllm")  # costed for TensorRT-LLM: TP 1, DP 8, EP 8 in one instance
    plan = doc["plan"]
    assert (plan["tp"], plan["dp"], plan["ep"], plan["etp"], plan["instances"]) == (1, 8, 8, 1, 1)
    launch = trtllm(doc)
    (cmd,) = launch.commands
    assert cmd.argv[:2] == ("trtllm-serve", "deepseek-ai/DeepSeek-V3")
    assert cmd.env == () and cmd.gpus == tuple(range(8))
    assert flags(cmd) == {"--backend": "pytorch", "--tp_size": "8", "--pp_size": "1", "--ep_size": "8",
                          "--max_batch_size": str(plan["batch_per_replica"]), "--max_num_tokens": "8192",
                          "--max_seq_len": "3072", "--kv_cache_free_gpu_memory_fraction": "0.9",
                          "--extra_llm_api_options": "trtllm-extra-llm-api-options.yaml", "--host": "0.0.0.0",
                          "--port": "8000"}
    # attention DP, the expert split and the FP8 KV cache go in the options file, with the fraction repeated
    # (the file's kv_cache_config replaces the one the flags build)
    assert launch.files == (("trtllm-extra-llm-api-options.yaml",
                             "enable_attention_dp: true\nmoe_tensor_parallel_size: 1\nkv_cache_config:\n  dtype: fp8\n"
                             "  free_gpu_memory_fraction: 0.9\n"),)
    text = launch.render()
    assert text.startswith("# tensorrt-llm 1.2 launch for deepseek-v3-8xb200-trtllm")
    assert "cat > trtllm-extra-llm-api-options.yaml <<'EOF'\nenable_attention_dp: true\n" in text
    assert text.rstrip().endswith(cmd.shell)
    assert not any("costed for engine" in n for n in launch.notes)
    assert any("each attention-DP rank's scheduler" in n for n in launch.notes)
    assert json.loads(json.dumps(launch.as_dict()))["files"]["trtllm-extra-llm-api-options.yaml"].startswith("enable_")


def test_trtllm_pipeline_over_two_nodes_runs_under_mpirun_with_the_layer_split():
    doc = qwen_pp2()  # TP 1 PP 2 DP 8 EP 8, layers 48/46, stage s on node s
    launch = trtllm(doc, node_addresses=["10.0.0.1", "10.0.0.2"])
    (cmd,) = launch.commands
    assert cmd.argv[:6] == ("mpirun", "-H", "10.0.0.1:8,10.0.0.2:8", "-n", "16", "trtllm-llmapi-launch")
    assert cmd.other_nodes == ((1, tuple(range(8))),) and cmd.node == 0
    serve = cmd.argv[cmd.argv.index("trtllm-serve"):]
    f = flags(NodeCommand(node=0, instance=0, role=CommandRole.SERVE, argv=serve))
    assert (f["--tp_size"], f["--pp_size"], f["--ep_size"]) == ("8", "2", "8")
    assert launch.files[0][1] == "enable_attention_dp: true\nmoe_tensor_parallel_size: 1\npp_partition: [48, 46]\n"
    assert any("srun" in n for n in launch.notes)


def test_trtllm_dense_replicas_and_what_it_cannot_run():
    doc = document("llama-3.1-70b-8xh100")  # dense TP 4 x DP 2: two instances, no options file
    launch = trtllm(doc)
    assert [(c.instance, c.gpus, flags(c)["--port"]) for c in launch.commands] == [
        (0, (0, 1, 2, 3), "8000"), (1, (4, 5, 6, 7), "8001")]
    assert launch.files == () and "--extra_llm_api_options" not in launch.commands[0].argv
    assert "--ep_size" not in launch.commands[0].argv
    # attention TP 2 inside an instance with 4 attention-DP ranks: TensorRT-LLM has no such mode
    mixed = edited("deepseek-v3-8xb200-trtllm", plan={"tp": 2, "dp": 4, "ep": 8, "etp": 1, "edp": 1})
    with pytest.raises(NotExpressible, match=r"^tensorrt-llm: .*either tensor parallel .* with enable_attention_dp"):
        trtllm_commands(mixed)
    fp8_weights = edited("llama-3.1-70b-8xh100", workload={"weight_dtype": "fp8"})
    assert "--quantization" not in trtllm_commands(fp8_weights).commands[0].argv  # no online quantisation flag
    assert launch_commands(doc, engine="tensorrt-llm").engine is LaunchEngine.TRTLLM


def test_max_model_len_is_the_longest_request_and_says_so():
    doc = document("llama-3.1-70b-8xh100")  # ISL 1024 + OSL 256
    for build, flag in ((vllm_commands, "--max-model-len"), (sglang_commands, "--context-length"),
                        (trtllm_commands, "--max_seq_len")):
        launch = build(doc)
        assert flags(launch.commands[0])[flag] == "1280"
        (note,) = [n for n in launch.notes if n.startswith(flag)]
        assert "longest request the scenario allows: ISL 1024 + OSL 256 = 1280 tokens" in note
    odd = edited("llama-3.1-70b-8xh100", workload={"input_tokens": 1000, "output_tokens": 200})
    assert flags(vllm_commands(odd).commands[0])["--max-model-len"] == "1280"  # 1200 rounded up to 256s
    # a KV cache that holds 1,250 tokens per replica cannot take a 1,280-token request: vLLM would refuse
    # to start, so the exact 1,200 is used
    odd["memory"]["kv_cache_capacity_tokens"] = 1250
    assert flags(vllm_commands(odd).commands[0])["--max-model-len"] == "1200"
    scenario = Scenario.model_validate(odd["scenario"])
    assert max_model_len(scenario) == 1280 and max_model_len(scenario, kv_capacity_tokens=1250) == 1200


def test_launch_cli_tensorrt_llm_and_the_plans_own_engine_by_default():
    runner = CliRunner()
    own = runner.invoke(main, ["launch", "--scenario", "deepseek-v3-8xb200-trtllm"])
    assert own.exit_code == 0, own.output
    assert "trtllm-serve deepseek-ai/DeepSeek-V3 --backend pytorch --tp_size 8" in own.output
    assert "vllm serve" not in own.output and "sglang.launch_server" not in own.output
    chosen = runner.invoke(main, ["launch", "--scenario", "llama-3.1-70b-8xh100", "--engine", "tensorrt-llm"])
    assert chosen.exit_code == 0 and "trtllm-serve meta-llama/Llama-3.1-70B" in chosen.output
    vllm_plan = runner.invoke(main, ["launch", "--scenario", "llama-3.1-70b-8xh100"])
    assert "vllm serve" in vllm_plan.output and "sglang.launch_server" not in vllm_plan.output
    bad = runner.invoke(main, ["launch", "--scenario", "llama-3.1-70b-8xh100", "--engine", "trtllm"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output


def test_the_chunked_prefill_choice_reaches_the_command_lines():
    """engine.chunked_prefill (issue 13 item 4: the TTFT model's chunking) reaches the engines where it
    differs from their default: vLLM --no-enable-chunked-prefill, SGLang --chunked-prefill-size -1,
    TensorRT-LLM enable_chunked_prefill in the options file; the defaults add nothing."""
    doc = document("qwen3-30b-a3b-8xh100")
    vllm, sglang = both(doc)
    assert "--no-enable-chunked-prefill" not in vllm.commands[0].argv
    assert "--chunked-prefill-size=-1" not in sglang.commands[0].argv
    doc["scenario"]["engine"]["chunked_prefill"] = False
    vllm, sglang = both(doc)
    assert "--no-enable-chunked-prefill" in vllm.commands[0].argv
    assert "--chunked-prefill-size=-1" in sglang.commands[0].argv and "--chunked-prefill-size" not in sglang.commands[0].argv
    doc = document("deepseek-v3-8xb200-trtllm")
    assert not any("enable_chunked_prefill" in text for _, text in trtllm_commands(doc).files)
    doc["scenario"]["engine"]["chunked_prefill"] = True
    plan = trtllm_commands(doc)
    check_flag_sources(plan)
    assert any("enable_chunked_prefill: true" in text for _, text in plan.files)
