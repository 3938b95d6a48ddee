"""Batch sweeps (process pool and Ray), resumability, failure isolation, the summary, and the JSON Schemas
of scenario files and plan documents."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from conftest import DENSE, scenario_dict
from optimizer.cli import main
from optimizer.inputs.loader import shipped_scenarios
from optimizer.inputs.schema import SCHEMA_VERSION, PlanDocument, plan_schema, scenario_schema
from optimizer.outputs.sweep import expand_jobs, run_sweep

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "golden"


def invoke(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def plans(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "plans").iterdir())}


@pytest.fixture(scope="module")
def shipped_sweep(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sweep") / "results"
    result = invoke("sweep", str(ROOT / "scenarios"), "--out", str(out), "--workers", "2")
    assert result.exit_code == 0, result.output
    return out


def test_every_shipped_scenario_gets_a_plan_or_an_infeasibility(shipped_sweep):
    names = set(shipped_scenarios())
    assert {p.stem for p in (shipped_sweep / "plans").glob("*.json")} == names
    assert {p.stem for p in (shipped_sweep / "plans").glob("*.md")} == names
    rows = list(csv.DictReader((shipped_sweep / "summary.csv").open()))
    assert {r["name"] for r in rows} == names
    for row in rows:  # the status agrees with the golden files
        golden = json.loads((GOLDEN / f"{row['name']}.json").read_text())
        assert row["status"] == ("infeasible" if "infeasible" in golden else "optimal"), row["name"]
        if "plan" in golden:
            assert int(row["tp"]) == golden["plan"]["tp"] and int(row["ep"]) == golden["plan"]["ep"]
    text = (shipped_sweep / "summary.md").read_text()
    assert text.startswith("# Sweep summary") and "| 16gpu-30b |" in text
    # DeepSeek-V3 is shipped at three ISL/OSL pairs (2000/512: the SGLang large-EP scenario, the blog's
    # 2000-token inputs): one plot each (plots/<model>--isl<I>-osl<O>.png)
    plots = sorted((shipped_sweep / "plots").glob("DeepSeek-V3--isl*-osl*.png"))
    assert [p.name for p in plots] == ["DeepSeek-V3--isl1024-osl2048.png", "DeepSeek-V3--isl2000-osl512.png",
                                       "DeepSeek-V3--isl2048-osl512.png"]
    assert all(p.stat().st_size > 10_000 for p in plots)


def test_a_sweep_plan_is_byte_identical_to_optimize_json(shipped_sweep):
    single = invoke("--scenario", str(ROOT / "scenarios" / "qwen3-235b-a22b-16xh100.yaml"), "--json", "-").output
    assert (shipped_sweep / "plans" / "qwen3-235b-a22b-16xh100.json").read_text() == single


def test_every_document_matches_the_plan_schema(shipped_sweep):
    schema = plan_schema()
    for path in (shipped_sweep / "plans").glob("*.json"):
        document = json.loads(path.read_text())
        jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)
        PlanDocument.model_validate(document)  # extra="forbid": a key the schema does not know fails here
        assert document["schema_version"] == SCHEMA_VERSION


def test_every_shipped_scenario_matches_the_scenario_schema():
    schema = scenario_schema()
    for path in shipped_scenarios().values():
        jsonschema.validate(yaml.safe_load(path.read_text()), schema, cls=jsonschema.Draft202012Validator)
    broken = {"cluster": {"gpu": "no-such-gpu", "num_nodes": 1}, "model": "Llama-3.1-70B",
              "workload": {"concurrent_sequences": 1, "input_tokens": 1, "output_tokens": 1}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema, cls=jsonschema.Draft202012Validator)


def test_schema_command_prints_both_schemas():
    for kind, title in (("scenario", "optimizer scenario file"), ("plan", f"optimizer plan document, schema {SCHEMA_VERSION}")):
        result = invoke("schema", kind)
        assert result.exit_code == 0 and json.loads(result.output)["title"] == title


def write(folder: Path, name: str, data: dict) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_grid_expansion_names_and_counts(tmp_path):
    base = write(tmp_path, "base", scenario_dict(model=DENSE))
    jobs = expand_jobs([str(base)], gpus=[4, 8, 12], isl=[64, 128], osl=[16])
    assert len(jobs) == 6 and len({j.name for j in jobs}) == 6
    assert "base--8gpu--isl128--osl16" in {j.name for j in jobs}
    [eight] = [j for j in jobs if j.name == "base--8gpu--isl64--osl16"]
    assert eight.data["cluster"]["num_nodes"] == 2 and eight.data["workload"]["input_tokens"] == 64
    # 6 GPUs are not a whole number of 4-GPU nodes: left for validation to name (the job then fails alone).
    [bad] = expand_jobs([str(base)], gpus=[6])
    assert isinstance(bad.data["cluster"]["num_nodes"], str)


def test_gpu_and_model_axes_take_catalog_shapes(tmp_path):
    base = ROOT / "scenarios" / "llama-3.1-70b-8xh100.yaml"
    jobs = expand_jobs([str(base)], gpu_names=["h200-sxm"], gpus=[16], models=["Qwen3-30B-A3B"])
    [job] = jobs
    assert job.name == "llama-3.1-70b-8xh100--h200-sxm--16gpu--Qwen3-30B-A3B"
    assert job.data["cluster"] == {"gpu": "h200-sxm", "num_nodes": 2, "gpus_per_node": 8}


def test_one_failure_is_recorded_and_the_rest_go_on(tmp_path):
    good = write(tmp_path, "good", scenario_dict(model=DENSE))
    (tmp_path / "broken.yaml").write_text("cluster: [not, a, mapping\n")
    out = tmp_path / "out"
    result = invoke("sweep", str(good), str(tmp_path / "broken.yaml"), "--gpus", "4,6", "--out", str(out), "--workers", "1")
    assert result.exit_code == 1
    assert "broken" in result.output and "6 GPUs is not a whole number of nodes of 4" in result.output
    assert (out / "plans" / "good--4gpu.json").exists()
    assert (out / "errors" / "good--6gpu.txt").exists() and (out / "errors" / "broken.txt").exists()
    statuses = {r["name"]: r["status"] for r in csv.DictReader((out / "summary.csv").open())}
    assert statuses == {"good--4gpu": "optimal", "good--6gpu": "error", "broken": "error"}


def test_resume_keeps_done_results_and_redoes_changed_ones(tmp_path):
    a = write(tmp_path, "a", scenario_dict(model=DENSE))
    b = write(tmp_path, "b", scenario_dict(model=DENSE, workload={"input_tokens": 256}))
    out = tmp_path / "out"
    first = run_sweep(expand_jobs([str(a), str(b)]), out, workers=1)
    assert [o.skipped for o in first.outcomes] == [False, False]
    stamp = (out / "plans" / "a.json").stat().st_mtime_ns
    write(tmp_path, "b", scenario_dict(model=DENSE, workload={"input_tokens": 512}))  # b changes
    second = run_sweep(expand_jobs([str(a), str(b)]), out, workers=1)
    assert [o.skipped for o in second.outcomes] == [True, False]
    assert (out / "plans" / "a.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "plans" / "b.json").read_text())["scenario"]["workload"]["input_tokens"] == 512
    fresh = run_sweep(expand_jobs([str(a), str(b)]), out, workers=1, resume=False)
    assert not any(o.skipped for o in fresh.outcomes)


def test_a_grid_of_200_runs_resumably(tmp_path):
    # 2 scenarios x 5 GPU counts x 5 ISL x 4 OSL = 200 small scenarios; the first pass is cut short (only
    # the first 80 jobs), the second finishes the rest and keeps those 80.
    a = write(tmp_path, "dense", scenario_dict(model=DENSE))
    b = write(tmp_path, "moe", scenario_dict())
    jobs = expand_jobs([str(a), str(b)], gpus=[1, 2, 4, 8, 16], isl=[64, 128, 256, 512, 1024], osl=[8, 16, 32, 64])
    assert len(jobs) == 200
    out = tmp_path / "out"
    run_sweep(jobs[:80], out, workers=2)
    result = run_sweep(jobs, out, workers=2)
    assert sum(o.skipped for o in result.outcomes) == 80
    assert result.count("error") == 0 and len(list(csv.DictReader((out / "summary.csv").open()))) == 200


def test_process_count_does_not_change_the_files(tmp_path):
    inputs = [str(ROOT / "scenarios" / n) for n in ("16gpu-30b.yaml", "3gpu-32gb.yaml", "mixtral-8x7b-8xh100.yaml")]
    run_sweep(expand_jobs(inputs), tmp_path / "one", workers=1)
    run_sweep(expand_jobs(inputs), tmp_path / "two", workers=2)
    assert plans(tmp_path / "one") == plans(tmp_path / "two")


def test_ray_executor_gives_the_same_files_as_the_process_pool(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed (CI installs it: pip install -e '.[test,ray]')")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a throwaway local instance
    inputs = [str(ROOT / "scenarios" / n) for n in ("16gpu-30b.yaml", "3gpu-32gb.yaml", "4gpu-10b.yaml")]
    run_sweep(expand_jobs(inputs), tmp_path / "pool", workers=2)
    result = invoke("sweep", *inputs, "--out", str(tmp_path / "ray"), "--executor", "ray", "--workers", "2")
    assert result.exit_code == 0, result.output
    assert plans(tmp_path / "pool") == plans(tmp_path / "ray")
    assert (tmp_path / "pool" / "summary.csv").read_text() == (tmp_path / "ray" / "summary.csv").read_text()


def test_unknown_inputs_are_recorded_not_raised(tmp_path):
    result = invoke("sweep", "no-such-scenario", "--out", str(tmp_path / "out"))
    assert result.exit_code == 1 and "no such file" in result.output


# --- interrupting, resuming, locking and progress (issue 14, items 11 and 12) ------------------------------

# 64 GPUs take ~0.2 s to plan, 8,192 and 16,384 one to a few seconds each: when the first plan is
# written, the workers are busy with the others.
GRID = ("128gpu-64e", "--gpus", "64,8192,16384")
GRID_SIZE = 3


def sweep_command(out: Path, *, workers: int = 2) -> list[str]:
    return [sys.executable, "-m", "optimizer.cli", "sweep", *GRID, "--workers", str(workers), "--out", str(out)]


def start_sweep(out: Path, logs: Path, *, workers: int = 2, executor: str = "process") -> subprocess.Popen:
    """The sweep in its own process group with SIGINT at its default (as a terminal's foreground job),
    once it has written its first plan (its workers are then busy with the next ones)."""

    def own_group() -> None:
        os.setpgrp()
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    logs.mkdir(exist_ok=True)
    proc = subprocess.Popen([*sweep_command(out, workers=workers), "--executor", executor], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_AUTH_MODE": "disabled"},
                            stdout=(logs / "stdout").open("w"), stderr=(logs / "stderr").open("w"),
                            preexec_fn=own_group)
    deadline = time.monotonic() + 120
    while not list(out.glob("plans/*.json")):
        assert proc.poll() is None, (logs / "stderr").read_text()
        assert time.monotonic() < deadline, "the sweep wrote no plan in 120 s"
        time.sleep(0.05)
    return proc


def processes() -> dict[int, tuple[str, int, int]]:
    """Every process as pid: (state, parent pid, process group), read from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # it ended while we looked
            found[int(entry.name)] = (fields[0], int(fields[1]), int(fields[2]))
    return found


def live_members(group: int) -> list[int]:
    """The processes of process group ``group`` that are not zombies."""
    return [pid for pid, (state, _, pgrp) in processes().items() if pgrp == group and state != "Z"]


def descendants(pid: int) -> set[int]:
    """The children of ``pid``, theirs, and so on (a Ray instance starts its own process groups)."""
    table, found, todo = processes(), set(), [pid]
    while todo:
        parent = todo.pop()
        children = {child for child, (_, ppid, _) in table.items() if ppid == parent}
        found |= children
        todo += children
    return found


def still_running(pids: set[int]) -> set[int]:
    table = processes()
    return {pid for pid in pids if pid in table and table[pid][0] != "Z"}


def stop(proc: subprocess.Popen, signum: int, *, to_group: bool) -> float:
    """Send ``signum`` (to the process group, as Ctrl-C does, or to the sweep alone, as ``kill`` does);
    the seconds until the sweep has exited."""
    start = time.monotonic()
    if to_group:
        os.killpg(proc.pid, signum)
    else:
        os.kill(proc.pid, signum)
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return time.monotonic() - start


needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")


@needs_proc
def test_ctrl_c_ends_the_workers_within_2_s_and_the_folder_resumes(tmp_path):
    out = tmp_path / "out"
    proc = start_sweep(out, tmp_path / "logs")
    workers = descendants(proc.pid)
    assert len(workers) >= 2
    seconds = stop(proc, signal.SIGINT, to_group=True)
    stderr = (tmp_path / "logs" / "stderr").read_text()
    assert proc.returncode == 130, stderr
    assert seconds < 2.0, f"{seconds:.2f} s"
    assert live_members(proc.pid) == [] and still_running(workers) == set()
    assert "interrupted" in stderr and "run the same command again" in stderr and "Traceback" not in stderr
    kept = {p: p.stat().st_mtime_ns for p in (out / "plans").glob("*.json")}
    assert 0 < len(kept) < GRID_SIZE, "interrupted mid-run"
    assert not list(out.rglob("*.tmp")), "no half-written file is left"
    again = subprocess.run(sweep_command(out), cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"({len(kept)} kept from an earlier run)" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    assert len(list(csv.DictReader((out / "summary.csv").open()))) == GRID_SIZE


@needs_proc
def test_ctrl_c_with_one_worker_is_as_clean(tmp_path):
    # One worker is a process too: CP-SAT in this process would take SIGINT (catch_sigint_signal), end a
    # solve early as if out of time and leave SIGINT at its default, which kills without clean-up.
    out = tmp_path / "out"
    proc = start_sweep(out, tmp_path / "logs", workers=1)
    seconds = stop(proc, signal.SIGINT, to_group=True)
    assert proc.returncode == 130, (tmp_path / "logs" / "stderr").read_text()
    assert seconds < 2.0, f"{seconds:.2f} s"
    assert live_members(proc.pid) == []


@needs_proc
def test_sigterm_leaves_no_worker_behind(tmp_path):
    out = tmp_path / "out"
    proc = start_sweep(out, tmp_path / "logs")
    workers = descendants(proc.pid)
    assert workers
    seconds = stop(proc, signal.SIGTERM, to_group=False)  # the sweep alone: its workers are its business
    stderr = (tmp_path / "logs" / "stderr").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert seconds < 2.0, f"{seconds:.2f} s"
    assert still_running(workers) == set() and live_members(proc.pid) == [], "orphaned workers"
    assert not list(out.rglob("*.tmp"))


@needs_proc
def test_ctrl_c_shuts_a_local_ray_instance_down(tmp_path):
    pytest.importorskip("ray", reason="the ray extra is not installed (CI installs it: pip install -e '.[test,ray]')")
    out = tmp_path / "out"
    proc = start_sweep(out, tmp_path / "logs", executor="ray")
    ray_processes = descendants(proc.pid)  # raylet, GCS, workers: in process groups of their own
    assert ray_processes
    seconds = stop(proc, signal.SIGINT, to_group=True)
    stderr = (tmp_path / "logs" / "stderr").read_text()
    assert proc.returncode == 130 and "interrupted" in stderr, stderr
    assert seconds < 5.0, f"{seconds:.2f} s"  # ray.shutdown() of a local instance takes 1-2 s of it
    assert still_running(ray_processes) == set()


@needs_proc
def test_a_second_sweep_into_the_same_folder_is_refused_while_the_first_runs(tmp_path):
    out = tmp_path / "out"
    proc = start_sweep(out, tmp_path / "logs")
    try:
        second = invoke("sweep", "16gpu-30b", "--out", str(out), "--workers", "1")
        assert second.exit_code == 2
        assert str(out) in second.output and "another sweep is writing" in second.output
        assert "Traceback" not in second.output
    finally:
        stop(proc, signal.SIGINT, to_group=True)
    assert not (out / "plans" / "16gpu-30b.json").exists()
    run_sweep([], out)  # the lock went with the first sweep


def test_resume_rewrites_a_missing_markdown_file(tmp_path):
    a = write(tmp_path, "a", scenario_dict(model=DENSE))
    b = write(tmp_path, "b", scenario_dict(model=DENSE, workload={"input_tokens": 256}))
    out = tmp_path / "out"
    run_sweep(expand_jobs([str(a), str(b)]), out, workers=1)
    markdown = (out / "plans" / "a.md").read_text()
    (out / "plans" / "a.md").unlink()
    again = run_sweep(expand_jobs([str(a), str(b)]), out, workers=1)
    assert [o.skipped for o in again.outcomes] == [False, True]
    assert (out / "plans" / "a.md").read_text() == markdown


def test_a_job_that_now_fails_removes_its_old_plan(tmp_path):
    a = write(tmp_path, "a", scenario_dict(model=DENSE))
    out = tmp_path / "out"
    run_sweep(expand_jobs([str(a)]), out, workers=1)
    assert (out / "plans" / "a.json").exists() and (out / "plans" / "a.md").exists()
    write(tmp_path, "a", scenario_dict(model=DENSE, cluster={"num_nodes": 0}))  # a now fails
    result = invoke("sweep", str(a), "--out", str(out), "--workers", "1")
    assert result.exit_code == 1 and "num_nodes" in result.output
    assert sorted(p.name for p in (out / "plans").iterdir()) == []
    assert (out / "errors" / "a.txt").exists()
    [row] = csv.DictReader((out / "summary.csv").open())
    assert row["name"] == "a" and row["status"] == "error" and "num_nodes" in row["reason"]


def test_the_summary_lists_every_result_in_the_folder(tmp_path):
    # summary.csv and .md list every plan and error in OUT: this sweep's scenarios in grid order, then
    # those left by earlier sweeps into the folder, by name.
    base = write(tmp_path, "base", scenario_dict(model=DENSE))
    out = tmp_path / "out"
    assert invoke("sweep", str(base), "--gpus", "8,6", "--out", str(out), "--workers", "1").exit_code == 1
    assert invoke("sweep", str(base), "--gpus", "4", "--out", str(out), "--workers", "1").exit_code == 0
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(r["name"], r["status"]) for r in rows] == [
        ("base--4gpu", "optimal"), ("base--6gpu", "error"), ("base--8gpu", "optimal")]
    assert (out / "summary.md").read_text().count("| base--") == 3


def test_progress_off_a_terminal_is_a_line_per_finished_scenario(tmp_path):
    a = write(tmp_path, "a", scenario_dict(model=DENSE))
    b = write(tmp_path, "b", scenario_dict(model=DENSE, workload={"input_tokens": 256}))
    out = tmp_path / "out"
    first = invoke("sweep", str(a), str(b), "--out", str(out), "--workers", "1")
    assert first.exit_code == 0
    assert re.fullmatch(r"\[1/2\] a: optimal \(\d+\.\d s\)\n\[2/2\] b: optimal \(\d+\.\d s\)\n", first.stderr)
    assert first.stdout.startswith("2 scenario(s) in ") and first.stdout.count("\n") == 1  # stdout as before
    (out / "plans" / "b.json").unlink()
    second = invoke("sweep", str(a), str(b), "--out", str(out), "--workers", "1")
    assert second.stderr.startswith("[1/2] a: optimal (kept from an earlier run)\n[2/2] b: optimal (")
    quiet = invoke("sweep", str(a), str(b), "--out", str(out), "--no-progress")
    assert quiet.exit_code == 0 and quiet.stderr == ""
