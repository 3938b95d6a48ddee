"""Never wrong, never cryptic: why no plan (conflicts and confirmed smallest changes), hand-written plans
read the way people write them, edge cases, solver limits and proofs, byte-identical output, atomic writes.
(Fuzzing of scenario and plan files through the CLI is in test_fuzz.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import DENSE, make_scenario
from optimizer.search import solve
from optimizer.cli import main
from optimizer.search.diagnose import _with, _with_gpus, diagnose, fewest_gpus, memory_needed, min_gpus_lower_bound
from optimizer.errors import Infeasible, OptimizerError, PlanError
from optimizer.search.exhaustive import optimize_exhaustive
from optimizer.inputs.loader import load_scenario
from optimizer.search.result import build_tables
from optimizer.search.solve import confirm_optimum, is_feasible, optimize
from optimizer.units import GIB
from optimizer.search.verify import plan_from_mapping

ROOT = Path(__file__).resolve().parent.parent


def run(*args: str):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def cleared_targets(scenario):
    return _with(scenario, "targets", ttft_s=None, tpot_s=None, output_tokens_per_s=None)


# --- 1. why no plan ----------------------------------------------------------------------------------


def test_llama_405b_on_4_h100_prints_its_conflicts_and_the_fewest_gpus():
    result = run("--scenario", "llama-3.1-405b-4xh100")
    assert result.exit_code == 1
    out = result.output
    assert "memory_cap" in out and "tpot_target" in out
    assert "12 x h100-sxm (3 node(s) x 4) is the fewest that admits a plan" in out
    assert "memory per GPU:" in out and "GiB" in out


def test_fewest_gpus_is_exact_and_confirmed():
    s = load_scenario("llama-3.1-405b-4xh100")
    change, _ = fewest_gpus(s)
    assert change is not None and change.proposed == 12
    assert is_feasible(_with_gpus(s, 12))
    for n in (4, 8):  # the smaller whole-node counts fail too (not only those under the memory bound)
        assert not is_feasible(_with_gpus(s, n))


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_memory_lower_bound_is_sound(n):
    # Below the bound no plan fits in memory: checked by the solver on a model too big for few GPUs.
    s = make_scenario(model={**DENSE, "num_hidden_layers": 8, "hidden_size": 4096, "intermediate_size": 16384,
                             "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128},
                      cluster={"gpu": {"memory_bytes": 2_000_000_000}, "num_nodes": 1, "gpus_per_node": 8},
                      engine={"reserve_bytes": 0, "cuda_graph_bytes": 0, "comm_buffer_bytes": 0})
    lower = min_gpus_lower_bound(s)
    assert lower is not None and lower > 1
    if n < lower:
        assert not is_feasible(_with_gpus(s, n))


def test_memory_needed_is_exact_to_the_gib():
    s = cleared_targets(load_scenario("llama-3.1-405b-4xh100"))
    with pytest.raises(Infeasible) as exc:
        optimize(s)
    assert exc.value.conflicts == (("memory_cap",),)
    change, _ = memory_needed(s)
    gib = change.proposed // GIB
    gpu = s.cluster.gpu

    def with_memory(b):
        return s.model_copy(update={"cluster": s.cluster.model_copy(update={"gpu": gpu.model_copy(update={"memory_bytes": b})})})

    assert is_feasible(with_memory(gib * GIB)) and not is_feasible(with_memory((gib - 1) * GIB))


def test_largest_batch_and_prompt_are_boundaries():
    s = load_scenario("llama-3.1-405b-4xh100")
    changes = {c.field: c for c in diagnose(s).changes}
    lifted = _with(s, "cluster", gpu=s.cluster.gpu.model_copy(update={"memory_bytes": 1 << 50}).model_dump())
    for field in ("concurrent_sequences", "input_tokens"):
        best = changes[f"workload.{field}"].proposed
        assert is_feasible(_with(lifted, "workload", **{field: best}))
        assert not is_feasible(_with(lifted, "workload", **{field: best + 1}))


def test_best_target_is_reachable_and_not_beaten():
    s = load_scenario("4gpu-10b")
    [change] = [c for c in diagnose(s).changes if c.field == "targets.output_tokens_per_s"]
    # Meeting the reported maximum (rounded down to whole tokens/s) is feasible; 1% more is not.
    assert is_feasible(_with(s, "targets", output_tokens_per_s=int(change.proposed)))
    assert not is_feasible(_with(s, "targets", output_tokens_per_s=int(change.proposed * 1.01)))


def test_a_switch_is_suggested_when_it_is_in_the_conflict():
    # 3 layers do not fit one GPU; PP = 2 needs a 2 + 1 split, which allow_uneven_layers: false forbids.
    s = make_scenario(
        model={**DENSE, "num_hidden_layers": 3, "num_key_value_heads": 1, "head_dim": 128},
        workload={"concurrent_sequences": 1, "input_tokens": 100_000, "output_tokens": 16},
        cluster={"gpu": {"memory_bytes": 130_000_000}, "num_nodes": 1, "gpus_per_node": 2},
        engine={"reserve_bytes": 0, "cuda_graph_bytes": 0, "comm_buffer_bytes": 0, "max_num_batched_tokens": 256},
        search={"gpu_memory_utilization": 1, "allow_uneven_layers": False},
    )
    d = diagnose(s)
    assert d.conflicts == (("even_layers", "memory_cap"),)
    fields = {c.field: c.proposed for c in d.changes}
    assert fields["search.allow_uneven_layers"] is True
    assert is_feasible(_with(s, "search", allow_uneven_layers=True))


def test_infeasible_json_names_conflicts_and_changes(tmp_path):
    out = tmp_path / "plan.json"
    assert run("--scenario", "llama-3.1-405b-4xh100", "--json", str(out)).exit_code == 1
    doc = json.loads(out.read_text())
    assert doc["plan"] is None and doc["schema_version"] == "3.5"
    assert doc["infeasible"]["conflicts"] == [["memory_cap"], ["tpot_target"]]
    assert {"field": "cluster.num_gpus", "current": 4, "proposed": 12}.items() <= doc["infeasible"]["changes"][0].items()


def test_no_explain_skips_the_search():
    result = run("--scenario", "llama-3.1-405b-4xh100", "--no-explain")
    assert result.exit_code == 1 and "memory_cap" in result.output and "fewest" not in result.output


def test_diagnose_refuses_a_feasible_scenario():
    with pytest.raises(OptimizerError, match="nothing to diagnose"):
        diagnose(make_scenario())


# --- 2. hand-written plans ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["tp", "TP", "tensor_parallel_size", "--tensor-parallel-size", "tensor-parallel-size",
                                 "tp_size", "--tp-size", "tensor_model_parallel_size", "--tp"])
def test_tp_is_read_under_every_name(key):
    s = make_scenario(model=DENSE)
    assert plan_from_mapping({key: 2, "pp": 1}, s).layout.tp == 2


def test_the_same_size_twice_is_an_error():
    with pytest.raises(PlanError, match="given twice"):
        plan_from_mapping({"tp": 2, "tensor_parallel_size": 2}, make_scenario(model=DENSE))


def test_sizes_are_derived_as_the_engine_would():
    megatron = plan_from_mapping({"tp": 2, "ep": 2}, make_scenario()).layout  # 8 GPUs: DP = 4
    assert (megatron.dp, megatron.etp, megatron.ep, megatron.edp) == (4, 2, 2, 2)  # Megatron: ETP defaults to TP
    vllm_ep = plan_from_mapping({"tp": 2}, make_scenario(engine={"name": "vllm", "enable_expert_parallel": True})).layout
    assert (vllm_ep.ep, vllm_ep.etp, vllm_ep.edp) == (8, 1, 1)  # vLLM expert parallel: EP = TP x DP
    vllm = plan_from_mapping({"tp": 2}, make_scenario(engine={"name": "vllm"})).layout
    assert (vllm.ep, vllm.etp, vllm.edp) == (1, 8, 1)  # without it: experts tensor-parallel over TP x DP


def test_verify_takes_sizes_as_options_and_explains_each_failure_in_one_line():
    result = run("verify", "--scenario", "16gpu-30b", "--tp", "4", "--pp", "4", "--dp", "2", "--ep", "16")
    assert result.exit_code == 1
    failing = result.output.split("the plan breaks")[1].splitlines()[1:]
    assert failing[0] == ("  - gpu_product: TP x PP x DP = 4 x 4 x 2 = 32, but the cluster has 16 GPUs (32 == 16 is false)")
    assert all(line.startswith("  - ") for line in failing if line)
    ok = run("verify", "--scenario", "16gpu-30b", "--tensor-parallel-size", "1", "--dp", "16", "--ep", "4", "--etp", "4")
    assert ok.exit_code == 0, ok.output


def test_verify_memory_failure_says_by_how_much():
    result = run("verify", "--scenario", "llama-3.1-70b-8xh100", "--tp", "1", "--dp", "8")
    assert result.exit_code == 1
    [line] = [ln for ln in result.output.splitlines() if ln.startswith("  - memory_cap")]
    assert "GiB over" in line and "of 71.68 GiB usable" in line  # 0.9 x 81,559 MiB


def test_verify_file_and_option_clash_is_bad_input(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text("tensor_parallel_size: 2\n")
    result = CliRunner().invoke(main, ["verify", str(plan), "--scenario", "16gpu-30b", "--tp", "4"])
    assert result.exit_code == 2 and "given both" in result.output


# --- 4. edge cases -------------------------------------------------------------------------------------


def test_one_gpu():
    sol = optimize(make_scenario(model=DENSE, cluster={"num_nodes": 1, "gpus_per_node": 1}))
    assert sol.plan.layout.gpus == 1 and sol.evidence.proved_optimal


@pytest.mark.parametrize("n", [7, 13])
def test_a_prime_gpu_count(n):
    # 7 GPUs in one node: TP must divide 8 heads, so TP = 1 and DP or PP takes the 7.
    sol = optimize(make_scenario(model=DENSE, cluster={"num_nodes": 1, "gpus_per_node": n}))
    layout = sol.plan.layout
    assert layout.tp * layout.pp * layout.dp == n and layout.tp == 1


def test_65536_gpus():
    s = make_scenario(cluster={"num_nodes": 8192, "gpus_per_node": 8}, workload={"concurrent_sequences": 65536})
    sol = optimize(s)
    assert sol.plan.layout.gpus == 65536 and sol.evidence.proved_optimal
    assert sol.evidence.candidates > 10_000  # the product objective would have overflowed 64 bits here


def test_a_model_larger_than_the_cluster():
    s = load_scenario("llama-3.1-405b-4xh100")
    with pytest.raises(Infeasible) as exc:
        optimize(cleared_targets(s))
    assert exc.value.conflicts == (("memory_cap",),)


@pytest.mark.parametrize("experts", [4, 64])
def test_more_and_fewer_experts_than_gpus(experts):
    sol = optimize(make_scenario(model={"num_experts": experts}))
    assert experts % sol.plan.layout.ep == 0 and sol.plan.layout.ep <= min(experts, 8)


def test_zero_output_tokens(tmp_path):
    # A prefill-only workload (scoring, embeddings): the request ends with its first token.
    path = _write_scenario(make_scenario(workload={"output_tokens": 0}), tmp_path)
    doc = json.loads(run("--scenario", str(path), "--json", "-").output)
    assert doc["estimate"]["request_latency_ns"] == doc["estimate"]["ttft_ns"]
    assert doc["estimate"]["output_tokens_per_s"] == 0 and doc["evidence"]["proved_optimal"]


def _write_scenario(scenario, folder: Path) -> Path:
    path = folder / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario.model_dump(mode="json")))
    return path


def test_memory_near_2_to_the_63_is_fine():
    sol = optimize(make_scenario(cluster={"gpu": {"memory_bytes": (1 << 63) - 1}}))
    assert sol.evidence.proved_optimal


def test_a_model_of_absurd_width_is_infeasible_not_a_crash(tmp_path):
    path = _write_scenario(make_scenario(model={"hidden_size": 1 << 40}), tmp_path)
    result = CliRunner().invoke(main, ["--scenario", str(path)])
    assert result.exit_code == 1 and "memory_cap" in result.output and "at least 1,085,662" in result.output


def test_a_vocabulary_of_2_to_the_60_is_infeasible_in_exact_integers(tmp_path):
    """Python integers carry the byte counts exactly: the embedding alone cannot fit, and that is the answer."""
    path = _write_scenario(make_scenario(model={"vocab_size": 1 << 60}), tmp_path)
    result = CliRunner().invoke(main, ["--scenario", str(path), "--no-explain"])
    assert result.exit_code == 1 and "memory_cap" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("override", [
    {"cluster": {"gpu": {"hbm_bytes_per_s": 1}}, "workload": {"output_tokens": 1 << 24}},  # ~1e22 ns
])
def test_numbers_beyond_the_solver_range_are_bad_input(override, tmp_path):
    path = _write_scenario(make_scenario(**override), tmp_path)
    result = CliRunner().invoke(main, ["--scenario", str(path)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "Traceback" not in result.output


# --- 5. limits, proofs, double check -------------------------------------------------------------------


@pytest.fixture
def first_solution_only(monkeypatch):
    """CP-SAT stops at its first solution, found before presolve or the LP see the objective: a
    deterministic stand-in for a budget that ran out (the model otherwise proves at the root)."""
    original = solve._solver

    def stopping(**kwargs):
        solver = original(**kwargs)
        solver.parameters.stop_after_first_solution = True
        solver.parameters.cp_model_presolve = False
        solver.parameters.linearization_level = 0
        return solver

    monkeypatch.setattr(solve, "_solver", stopping)


def test_a_stopped_search_returns_its_plan_not_proved_with_the_gap(first_solution_only, tmp_path):
    out = tmp_path / "plan.json"
    result = run("--scenario", "deepseek-v3-32xh800", "--time-limit", "60", "--json", str(out))
    assert result.exit_code == 0 and "NOT proved optimal" in result.output
    ev = json.loads(out.read_text())["evidence"]
    assert ev["status"] == "FEASIBLE" and not ev["proved_optimal"]
    assert ev["gap"] == ev["objective"] - ev["best_bound"] > 0 and ev["gap_ns"] >= 0  # the primary may already be the best
    assert json.loads(out.read_text())["certificate"]["holds"]  # not proved optimal, but still a valid plan


def test_require_proof_turns_an_unproved_plan_into_exit_1(first_solution_only, tmp_path):
    out = tmp_path / "plan.json"
    result = run("--scenario", "deepseek-v3-32xh800", "--require-proof", "--json", str(out))
    assert result.exit_code == 1 and "--require-proof" in result.output
    assert out.exists()  # the plan found is still written, marked not proved


def test_require_proof_passes_a_proved_plan():
    assert run("--scenario", "16gpu-30b", "--require-proof").exit_code == 0


@pytest.mark.parametrize("solver", ["cp-sat", "exhaustive"])
def test_double_check(solver):
    doc = json.loads(run("--scenario", "16gpu-30b", "--solver", solver, "--double-check", "--require-proof", "--json", "-").output)
    assert doc["evidence"]["double_check"] == "INFEASIBLE" and doc["evidence"]["proved_optimal"]


def test_the_double_check_can_fail():
    # Claim an optimum one above the true one: the double check finds the better plan and says so.
    s = load_scenario("16gpu-30b")
    tables = build_tables(s)
    best = optimize(s, tables=tables).evidence.objective
    assert confirm_optimum(s, tables, best) == "INFEASIBLE"
    with pytest.raises(OptimizerError, match="below the proved optimum"):
        confirm_optimum(s, tables, best + 1)


def test_exhaustive_and_cp_sat_agree_after_the_two_stage_solve():
    s = load_scenario("128gpu-64e")
    assert optimize(s).evidence.objective == optimize_exhaustive(s).evidence.objective


# --- 6. determinism --------------------------------------------------------------------------------


def test_json_and_markdown_are_byte_identical_across_runs_and_worker_counts():
    first = run("--scenario", "deepseek-v3-32xh800", "--json", "-").output
    assert first == run("--scenario", "deepseek-v3-32xh800", "--json", "-").output
    assert first == run("--scenario", "deepseek-v3-32xh800", "--json", "-", "--workers", "4").output
    md = run("--scenario", "16gpu-30b", "--markdown", "-").output
    assert md == run("--scenario", "16gpu-30b", "--markdown", "-", "--workers", "3").output


def test_json_is_byte_identical_across_processes_and_hash_seeds():
    outputs = []
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        proc = subprocess.run([sys.executable, "-m", "optimizer.cli", "--scenario", "qwen3-235b-a22b-16xh100", "--json", "-"],
                              capture_output=True, text=True, env=env, cwd=ROOT, check=True)
        outputs.append(proc.stdout)
    assert outputs[0] == outputs[1] and outputs[0].startswith("{")


# --- 7. writes ---------------------------------------------------------------------------------------


def test_a_failed_write_leaves_no_half_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    out = tmp_path / "plan.json"
    out.write_text("previous plan\n")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    result = CliRunner().invoke(main, ["--scenario", "3gpu-32gb", "--json", str(out)])
    assert result.exit_code == 2 and "cannot write" in result.output
    assert out.read_text() == "previous plan\n"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.json"]  # the temp file was removed


def test_bad_input_writes_nothing(tmp_path):
    out = tmp_path / "plan.json"
    result = CliRunner().invoke(main, ["--scenario", str(tmp_path / "missing.yaml"), "--json", str(out)])
    assert result.exit_code == 2 and not out.exists()


def test_an_input_file_is_never_overwritten(tmp_path):
    path = _write_scenario(make_scenario(), tmp_path)
    before = path.read_bytes()
    result = CliRunner().invoke(main, ["--scenario", str(path), "--json", str(path)])
    assert result.exit_code == 2 and "refusing to overwrite" in result.output
    assert path.read_bytes() == before


def test_the_gpu_search_is_bounded_and_says_where_it_stopped():
    change, note = fewest_gpus(load_scenario("4gpu-10b"), max_layouts=500)
    assert change is None and "the search stopped there" in note and "500 layouts" in note


def test_a_plan_for_another_cluster_size_gets_no_rank_map():
    # 16 million DP replicas on 3 GPUs: the verdict is immediate, no rank map of 16 million entries is drawn.
    result = CliRunner().invoke(main, ["verify", "--scenario", "3gpu-32gb", "--dp", "16777216", "--json", "-"])
    assert result.exit_code == 1
    document = json.loads(result.output.split("\n}\n")[0] + "\n}")
    assert document["rank_map"] is None and not document["certificate"]["holds"]
