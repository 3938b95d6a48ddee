"""Batch sweeps: reference plans for many scenarios at once.

Inputs are scenario files, folders, globs or shipped names, crossed with a grid (GPU counts, GPU kinds,
models, ISL, OSL). Each scenario of the grid is a ``Job``; jobs run in parallel processes (or on a Ray
cluster) and each writes its plan JSON and Markdown, exactly as ``optimize --json/--markdown`` would, into
``OUT/plans/``. A sweep is resumable: a job whose JSON already holds the very same validated scenario (and
whose Markdown is there) is kept and skipped. A job that fails (bad input, solver error) is recorded in
``OUT/errors/`` with its error, its plan files from an earlier run are removed, and the others go on.

At the end ``summary.csv``, ``summary.md`` and per-model plots are rebuilt from every result in ``OUT``:
this sweep's scenarios in grid order, then the plans and errors earlier sweeps into ``OUT`` left (another
grid), by name. A sweep that is stopped (Ctrl-C, SIGTERM) ends its workers, keeps every finished plan
and writes no summary; running it again resumes. Only one sweep at a time writes a folder: it holds an
advisory lock (``fcntl.flock`` on ``OUT/.lock``) for its whole run.

Determinism: each job solves with one CP-SAT worker and seed 0, so the files do not depend on the
executor, the number of processes or the order jobs finish in.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import re
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optimizer.inputs import catalog
from optimizer.errors import Infeasible, OptimizerError, ScenarioError
from optimizer.inputs.loader import read_mapping, scenario_from_dict, shipped_scenarios
from optimizer.outputs.report import infeasible_document, render_markdown, solution_document, to_json
from optimizer.inputs.scenario import Scenario
from optimizer.units import DEFAULT_BUDGET_S

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; sweeps into one folder are then not kept apart
    fcntl = None  # type: ignore[assignment]

EXECUTORS = ("process", "ray")
LOCK_NAME = ".lock"
WORKER_EXIT_S = 1.0  # how long an ended worker may take to go before it is killed
RAY_POLL_S = 0.5  # how often the Ray driver looks up from waiting (Ctrl-C is seen in between)
SUMMARY_COLUMNS = (
    "name", "status", "model", "gpu", "num_gpus", "gpus_per_node", "engine", "input_tokens", "output_tokens",
    "concurrent_sequences", "tp", "pp", "dp", "ep", "etp", "edp", "ttft_s", "tpot_s", "request_latency_s",
    "output_tokens_per_s", "output_tokens_per_s_per_gpu", "peak_memory_bytes", "proved_optimal", "reason",
)


class SweepBusy(OptimizerError):
    """Another sweep holds the output folder's lock (it is writing the folder now)."""


@dataclass(frozen=True)
class Job:
    """One scenario of a sweep: its unique ``name`` (also the file stem of its outputs), the scenario
    mapping as written (catalog names unresolved), where it came from, and the folder relative paths in it
    are read from. ``error`` is set when the input could not even be read."""

    name: str
    data: dict[str, Any] | None
    source: str
    base_dir: str
    error: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What one job produced. ``status``: optimal | feasible (a plan, not proved) | infeasible | error."""

    name: str
    status: str
    json_text: str | None = None
    markdown_text: str | None = None
    error: str | None = None
    seconds: float = 0.0
    skipped: bool = False


@dataclass
class SweepResult:
    """Every job's outcome, in job order, and the files written."""

    outcomes: list[Outcome] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)


# --- the grid ------------------------------------------------------------------------------------------


def _safe(text: str) -> str:
    """A file-name-safe form of ``text``: letters, digits, ``.``, ``_`` and ``-`` only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "scenario"


def input_files(inputs: Sequence[str]) -> list[tuple[str, Path | None]]:
    """Each input as (label, path): a file, every ``*.yaml``/``*.yml``/``*.json`` in a folder (sorted), a
    glob's matches, or a shipped scenario name. Unknown inputs come back with path None (recorded as an
    error job, not raised)."""
    shipped = shipped_scenarios()
    found: list[tuple[str, Path | None]] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += [(str(p), p) for p in sorted(path.iterdir()) if p.suffix in (".yaml", ".yml", ".json") and p.is_file()]
        elif path.is_file():
            found.append((item, path))
        elif any(ch in item for ch in "*?["):
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            found += [(str(p), p) for p in matches if p.is_file()] or [(item, None)]
        elif item in shipped:
            found.append((item, shipped[item]))
        else:
            found.append((item, None))
    return found


def expand_jobs(
    inputs: Sequence[str],
    *,
    gpus: Sequence[int] = (),
    gpu_names: Sequence[str] = (),
    models: Sequence[str] = (),
    isl: Sequence[int] = (),
    osl: Sequence[int] = (),
) -> list[Job]:
    """Every input scenario crossed with every value of every grid axis that is given.

    Args:
        gpus: total GPU counts: ``num_nodes = N / gpus_per_node`` (one node of N when N is smaller).
        gpu_names: catalog GPU kinds; the node shape and links then come from the catalog entry.
        models: catalog model names, or paths to Hugging Face ``config.json`` files.
        isl, osl: ``workload.input_tokens`` and ``workload.output_tokens``.

    Job names are the file's stem plus one ``--axis-value`` part per axis given, made unique; the
    scenario's ``name`` becomes the job name.
    """
    jobs: list[Job] = []
    for label, path in input_files(inputs):
        if path is None:
            names = ", ".join(shipped_scenarios()) or "none"
            jobs.append(Job(_safe(label), None, label, ".", f"no such file, folder, glob match or shipped scenario (shipped: {names})"))
            continue
        try:
            base = read_mapping(path)
        except ScenarioError as exc:
            jobs.append(Job(_safe(path.stem), None, str(path), str(path.parent), str(exc)))
            continue
        stem = _safe(path.stem)  # file names are unique in a folder; the scenario's own name may repeat
        for variant, suffix in _variants(base, gpus=gpus, gpu_names=gpu_names, models=models, isl=isl, osl=osl):
            name = stem + suffix
            jobs.append(Job(name, {**variant, "name": name}, str(path), str(path.parent.resolve())))
    return _unique(jobs)


def _variants(base: dict[str, Any], *, gpus, gpu_names, models, isl, osl) -> Iterable[tuple[dict[str, Any], str]]:
    for gpu in gpu_names or (None,):
        for n in gpus or (None,):
            for model in models or (None,):
                for i in isl or (None,):
                    for o in osl or (None,):
                        data = json.loads(json.dumps(base))  # a deep copy of plain YAML data
                        suffix = ""
                        cluster = data.get("cluster") if isinstance(data.get("cluster"), dict) else None
                        if gpu is not None and cluster is not None:
                            total = _total_gpus(cluster)
                            for key in ("gpus_per_node", "intra_node_link", "inter_node_link"):
                                cluster.pop(key, None)  # the catalog's node shape and links for this GPU
                            cluster["gpu"] = gpu
                            entry = catalog.gpu_entry(gpu) or {}  # unknown names: validation says so
                            cluster["gpus_per_node"] = entry.get("gpus_per_node", 8)
                            _set_gpu_count(cluster, n if n is not None else total)
                            suffix += f"--{_safe(gpu)}"
                        if n is not None and cluster is not None:
                            _set_gpu_count(cluster, n)
                            suffix += f"--{n}gpu"
                        if model is not None:
                            as_path = Path(model)
                            if model.endswith(".json") or as_path.is_file():
                                data["model"] = {"config_json": str(as_path.resolve())}
                                label = as_path.parent.name if as_path.name == "config.json" else as_path.stem
                            else:
                                data["model"], label = model, model
                            suffix += f"--{_safe(label)}"
                        workload = data.setdefault("workload", {}) if isinstance(data.get("workload", {}), dict) else None
                        if i is not None and workload is not None:
                            workload["input_tokens"] = i
                            suffix += f"--isl{i}"
                        if o is not None and workload is not None:
                            workload["output_tokens"] = o
                            suffix += f"--osl{o}"
                        yield data, suffix


def _total_gpus(cluster: dict[str, Any]) -> Any:
    nodes, per_node = cluster.get("num_nodes"), cluster.get("gpus_per_node")
    if isinstance(nodes, int) and isinstance(per_node, int):
        return nodes * per_node
    return None


def _set_gpu_count(cluster: dict[str, Any], n: Any) -> None:
    """``n`` GPUs in whole nodes of ``gpus_per_node`` (one smaller node when ``n`` is less). A count that
    is not a whole number of nodes is left for validation to reject with the field named."""
    per_node = cluster.get("gpus_per_node")
    if not isinstance(n, int) or not isinstance(per_node, int) or per_node <= 0:
        return
    if n < per_node:
        cluster["num_nodes"], cluster["gpus_per_node"] = 1, n
    elif n % per_node == 0:
        cluster["num_nodes"] = n // per_node
    else:
        cluster["num_nodes"] = f"{n} GPUs is not a whole number of nodes of {per_node}"


def _unique(jobs: list[Job]) -> list[Job]:
    seen: dict[str, int] = {}
    out = []
    for job in jobs:
        count = seen.get(job.name, 0)
        seen[job.name] = count + 1
        if count:
            name = f"{job.name}-{count + 1}"
            data = None if job.data is None else {**job.data, "name": name}
            job = Job(name, data, job.source, job.base_dir, job.error)
        out.append(job)
    return out


# --- one job -----------------------------------------------------------------------------------------------


def validate(job: Job) -> Scenario | str:
    """The job's Scenario, or the error message that says why it has none."""
    if job.error is not None or job.data is None:
        return job.error or "no scenario"
    try:
        return scenario_from_dict(job.data, source=job.source, base_dir=Path(job.base_dir))
    except ScenarioError as exc:
        return str(exc)


def run_job(job: Job, *, time_limit_s: float | None = DEFAULT_BUDGET_S, explain: bool = False) -> Outcome:
    """Plan one job: the same documents ``optimize --json/--markdown`` writes. Never raises for a bad
    scenario or a failed solve: the outcome records it (a sweep goes on)."""
    start = time.perf_counter()
    scenario = validate(job)
    if isinstance(scenario, str):
        return Outcome(job.name, "error", error=scenario, seconds=time.perf_counter() - start)
    from optimizer.search.diagnose import diagnose  # the search loads in the worker that runs it (CP-SAT at use)
    from optimizer.search.exhaustive import runner_up
    from optimizer.search.solve import Deadline, optimize

    deadline = Deadline(time_limit_s)
    try:
        solution = optimize(scenario, time_limit_s=time_limit_s, deadline=deadline)
    except Infeasible as exc:
        diagnosis = diagnose(scenario, exc.conflicts, deadline=deadline) if explain else None
        reasons = diagnosis.reasons if diagnosis else tuple(exc.reasons)
        document = infeasible_document(scenario=scenario, reasons=reasons, diagnosis=diagnosis)
        return Outcome(job.name, "infeasible", to_json(document), _infeasible_markdown(document),
                       seconds=time.perf_counter() - start)
    except OptimizerError as exc:
        return Outcome(job.name, "error", error=f"{scenario.name}: {exc}", seconds=time.perf_counter() - start)
    document = solution_document(solution)
    second = runner_up(solution)
    markdown = render_markdown(document, solution_document(second) if second else None)
    status = "optimal" if solution.evidence.proved_optimal else "feasible"
    return Outcome(job.name, status, to_json(document), markdown, seconds=time.perf_counter() - start)


def _infeasible_markdown(document: dict[str, Any]) -> str:
    inf = document["infeasible"]
    lines = [f"# No feasible plan: {document['scenario']['name']}", "", "## Conflicting rules", ""]
    lines += [f"{i}. `{reason}`" for i, reason in enumerate(inf["reasons"], 1)]
    if inf["changes"]:
        lines += ["", "## Smallest changes that admit a plan", "", *[f"- {c['text']}" for c in inf["changes"]]]
    return "\n".join(lines) + "\n"


def _status_of(document: dict[str, Any]) -> str:
    if document.get("plan") is None:
        return "infeasible"
    return "optimal" if (document.get("evidence") or {}).get("proved_optimal") else "feasible"


# --- the sweep -------------------------------------------------------------------------------------------


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and a rename: a reader sees the
    old file or the new one, never half of one. A path that is a symbolic link is written through (its
    target is replaced, the link stays). The file gets the mode a plain ``open`` would give: ``0o666``
    less the umask (``mkstemp`` alone leaves 0600). Raises OSError (the temp file is removed)."""
    if path.is_symlink():
        path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    with signals_deferred():  # Ctrl-C between mkstemp and try would leave the temp file behind
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back for the block and deliver them when it ends, to the handlers they had
    (Ctrl-C then raises KeyboardInterrupt; a default SIGTERM still ends the process): a short step, such as
    writing a file or ending the workers, is never cut in half. Only the main thread can set handlers;
    elsewhere nothing is held back."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {signum: signal.signal(signum, lambda signum, frame: caught.append(signum))
                for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


def _umask() -> int:
    """The process umask (read by setting it and setting it back: the only portable way)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _done(out: Path, job: Job, scenario: Scenario | str) -> Outcome | None:
    """The outcome already on disk for ``job`` if its JSON holds this very scenario and its Markdown is
    there too, else None (the job is run again and writes both)."""
    path = out / "plans" / f"{job.name}.json"
    if isinstance(scenario, str) or not path.is_file() or not path.with_suffix(".md").is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("scenario") != scenario.model_dump(mode="json"):
        return None
    return Outcome(job.name, _status_of(document), skipped=True)


def run_sweep(
    jobs: Sequence[Job],
    out: Path,
    *,
    executor: str = "process",
    workers: int | None = None,
    resume: bool = True,
    time_limit_s: float | None = DEFAULT_BUDGET_S,
    explain: bool = False,
    ray_address: str | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> SweepResult:
    """Run ``jobs`` and write ``out/plans/<name>.json|.md``, ``out/errors/<name>.txt``, the summary and plots.

    The summary (``summary.csv``, ``summary.md``, ``plots/``) lists every result in ``out``: ``jobs`` in
    their order, then the plans and errors that earlier sweeps into ``out`` left, by name. The folder is
    locked (``out/.lock``) while the sweep runs.

    Args:
        executor: ``process`` (a pool of ``workers`` processes, default all cores; this one only waits) or
            ``ray`` (the ``ray`` extra; a local Ray instance of ``workers`` CPUs, or ``ray_address``).
        resume: keep and skip jobs whose JSON already holds the same validated scenario (and whose
            Markdown is there).
        time_limit_s: each job's budget in seconds (solve and diagnosis); None for no limit.
        explain: diagnose infeasible scenarios (smallest changes); off by default, it costs re-solves.
        on_outcome: called in this process as each job finishes (progress), kept jobs first.

    Raises:
        OptimizerError: unknown executor, or Ray asked for but not installed.
        SweepBusy: another sweep is writing ``out``.
        OSError: ``out`` cannot be written.
        KeyboardInterrupt: Ctrl-C (or a signal handler that raises it): the workers were ended (a pool's
            processes terminated, a local Ray instance shut down), every finished plan is on disk and
            no summary was written; calling again with ``resume`` resumes.
    """
    if executor not in EXECUTORS:
        raise OptimizerError(f"unknown executor {executor!r}; expected one of {', '.join(EXECUTORS)}")
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):
        return _sweep_locked(jobs, out, executor=executor, workers=workers, resume=resume,
                             settings={"time_limit_s": time_limit_s, "explain": explain},
                             ray_address=ray_address, on_outcome=on_outcome)


def _sweep_locked(jobs: Sequence[Job], out: Path, *, executor: str, workers: int | None, resume: bool,
                  settings: dict[str, Any], ray_address: str | None,
                  on_outcome: Callable[[Outcome], None] | None) -> SweepResult:
    result = SweepResult()
    by_name: dict[str, Outcome] = {}
    pending: list[Job] = []
    for job in jobs:
        done = _done(out, job, validate(job)) if resume else None
        if done is not None:
            by_name[job.name] = done
            if on_outcome:
                on_outcome(done)
        else:
            pending.append(job)
    run = _run_ray if executor == "ray" else _run_processes
    # closing(): an interrupt raised here (not in the generator) still ends the workers now, not at exit
    with closing(run(pending, workers=workers, settings=settings, ray_address=ray_address)) as outcomes:
        for outcome in outcomes:
            result.files += _write_outcome(out, outcome)
            by_name[outcome.name] = outcome
            if on_outcome:
                on_outcome(outcome)
    result.outcomes = [by_name[job.name] for job in jobs]
    result.files += write_summary(out, [job.name for job in jobs], workers=workers or os.cpu_count() or 1)
    return result


@contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock (``fcntl.flock``) on ``out/.lock`` for the block, so that a second
    sweep into ``out`` is refused instead of mixing its files with the first one's. The lock goes with the
    process (even when it is killed); the file stays, holding the last holder's process id. No lock where
    ``fcntl`` is missing (Windows).

    Raises:
        SweepBusy: another process holds the lock.
        OSError: the lock file cannot be created (or is a symbolic link).
    """
    if fcntl is None:
        yield
        return
    path = out / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    with os.fdopen(fd, "r+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip()
            by = f" (process {holder})" if holder.isdigit() else ""
            raise SweepBusy(f"{out}: another sweep is writing this folder{by}; wait for it to finish, "
                            f"or give another --out") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield  # closing the file releases the lock


def _worker_signals() -> None:
    """A worker's initializer. Ctrl-C reaches the whole process group, and the parent alone decides (it
    ends the workers): a worker that took it would record a job as failed and carry on. SIGTERM, which
    ends a worker, ends it at once (a forked worker would otherwise keep the parent's handler)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextmanager
def _worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A process pool that, left by an exception (Ctrl-C, SIGTERM turned into one, a closed generator),
    ends its workers at once instead of waiting for their jobs (each may run its whole time limit)."""
    pool = ProcessPoolExecutor(max_workers=workers, initializer=_worker_signals)
    try:
        yield pool
    except BaseException:
        _end_workers(pool)
        raise
    pool.shutdown(wait=True)


def _end_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel the queued jobs and terminate the running ones' processes, then wait (at most
    ``WORKER_EXIT_S`` each, then kill) until they are gone: none is left behind as an orphan. A second
    Ctrl-C meanwhile waits until this is done. Python 3.14 has ``terminate_workers()``; before it the
    processes are only reachable as ``_processes``."""
    with signals_deferred():
        processes = list((getattr(pool, "_processes", None) or {}).values())
        manager = getattr(pool, "_executor_manager_thread", None)
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()
        for process in processes:
            process.join(WORKER_EXIT_S)
            if process.is_alive():
                process.kill()
                process.join()
        if manager is not None:
            manager.join(WORKER_EXIT_S)


def _run_processes(jobs: Sequence[Job], *, workers: int | None, settings: dict[str, Any], ray_address: str | None) -> Iterable[Outcome]:
    """The jobs in a pool of worker processes, one job too: this process never solves, so it sees Ctrl-C at
    once (CP-SAT returns to Python only when its solve ends) and CP-SAT cannot take its SIGINT handler
    (``catch_sigint_signal``, on by default, stops a solve early as if out of time and then leaves SIGINT
    at its default, which kills without clean-up)."""
    if not jobs:
        return
    with _worker_pool(min(workers or os.cpu_count() or 1, len(jobs))) as pool:
        futures = {pool.submit(run_job, job, **settings): job for job in jobs}
        for future in as_completed(futures):
            job = futures[future]
            try:
                yield future.result()
            except Exception as exc:  # a worker that died (out of memory, killed): record it, go on
                yield Outcome(job.name, "error", error=f"worker failed: {type(exc).__name__}: {exc}")


def _run_ray(jobs: Sequence[Job], *, workers: int | None, settings: dict[str, Any], ray_address: str | None) -> Iterable[Outcome]:
    """The same jobs as Ray tasks (docs.ray.io: ``ray.init``, ``ray.remote``, ``ray.wait``)."""
    try:
        import ray
    except ImportError:
        raise OptimizerError("--executor ray needs Ray: pip install 'optimizer[ray]'") from None
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "ignore_reinit_error": True}
        if ray_address:
            kwargs["address"] = ray_address
        else:
            kwargs["num_cpus"] = workers or os.cpu_count() or 1
        on_sigterm = signal.getsignal(signal.SIGTERM)
        ray.init(**kwargs)
        if on_sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, on_sigterm)  # ray.init puts sys.exit there: keep the caller's way out
    waiting: list[Any] = []
    try:
        task = ray.remote(num_cpus=1)(run_job)
        refs = {task.remote(job, **settings): job for job in jobs}
        waiting = list(refs)
        while waiting:
            # a bounded wait: Ctrl-C is only seen between Python calls, and a job may take a minute
            ready, waiting = ray.wait(waiting, num_returns=1, timeout=RAY_POLL_S)
            if not ready:
                continue
            job = refs[ready[0]]
            try:
                yield ray.get(ready[0])
            except Exception as exc:  # a task that failed on the cluster: record it, go on
                yield Outcome(job.name, "error", error=f"Ray task failed: {type(exc).__name__}: {exc}")
    except BaseException:
        if not started:  # the caller's Ray goes on: stop our tasks (with our own, shutdown ends them)
            for ref in waiting:
                ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def _write_outcome(out: Path, outcome: Outcome) -> list[Path]:
    """Write a plan's Markdown, then its JSON (the JSON marks the job done), and remove its error file;
    or write the error and remove the plan files an earlier run left (they no longer hold)."""
    with signals_deferred():  # all of one outcome's files, or none
        return _write_outcome_files(out, outcome)


def _write_outcome_files(out: Path, outcome: Outcome) -> list[Path]:
    written = []
    error_path = out / "errors" / f"{outcome.name}.txt"
    plan_paths = [out / "plans" / f"{outcome.name}{suffix}" for suffix in (".md", ".json")]
    if outcome.status == "error":
        atomic_write(error_path, (outcome.error or "error") + "\n")
        for path in plan_paths[::-1]:
            path.unlink(missing_ok=True)
        return [error_path]
    error_path.unlink(missing_ok=True)
    for suffix, text in ((".md", outcome.markdown_text), (".json", outcome.json_text)):
        if text is not None:
            path = out / "plans" / f"{outcome.name}{suffix}"
            atomic_write(path, text)
            written.append(path)
    return written


# --- summary ---------------------------------------------------------------------------------------------


def summary_row(name: str, document: dict[str, Any] | None, *, error: str | None = None) -> dict[str, Any]:
    """One line of ``summary.csv``: the scenario's axes, the plan's sizes and estimate (``document``, a plan
    JSON), or the reason (``error``, when there is no document)."""
    row: dict[str, Any] = {key: "" for key in SUMMARY_COLUMNS}
    row.update(name=name, status="error" if document is None else _status_of(document))
    if document is None:
        row["reason"] = error or ""
        return row
    sc = document["scenario"]
    cl, wl = sc["cluster"], sc["workload"]
    row.update(model=sc["model"]["name"], gpu=cl["gpu"]["name"], num_gpus=cl["num_nodes"] * cl["gpus_per_node"],
               gpus_per_node=cl["gpus_per_node"], engine=sc["engine"]["name"], input_tokens=wl["input_tokens"],
               output_tokens=wl["output_tokens"], concurrent_sequences=wl["concurrent_sequences"])
    plan = document.get("plan")
    if plan is None:
        row["reason"] = "; ".join(document["infeasible"]["reasons"])
        return row
    est = document["estimate"]
    row.update({k: plan[k] for k in ("tp", "pp", "dp", "ep", "etp", "edp")})
    row.update({k: est[k] for k in ("ttft_s", "tpot_s", "request_latency_s", "output_tokens_per_s", "output_tokens_per_s_per_gpu")})
    row["peak_memory_bytes"] = document["memory"]["per_gpu_peak"]["total_bytes"]
    row["proved_optimal"] = document["evidence"]["proved_optimal"]
    return row


def write_summary(out: Path, names: Sequence[str] = (), *, workers: int = 1) -> list[Path]:
    """``summary.csv``, ``summary.md`` and ``plots/<model>.png`` for every result in ``out``: a line per
    ``plans/<name>.json`` or ``errors/<name>.txt`` (the error when there are both, as an older version
    could leave), ``names`` first in their order (the sweep's jobs), then the rest by name. A plan file
    that does not parse is listed as an error. Raises OSError when ``out`` cannot be written."""
    on_disk = {p.stem for p in out.glob("plans/*.json")} | {p.stem for p in out.glob("errors/*.txt")}
    ordered = list(dict.fromkeys(names)) + sorted(on_disk - set(names))
    rows = [_summary_row_on_disk(out, name) for name in ordered if name in on_disk]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "summary.csv", buffer.getvalue())
    atomic_write(out / "summary.md", summary_markdown(rows))
    return [out / "summary.csv", out / "summary.md", *write_plots(out / "plots", rows, workers=workers)]


def _summary_row_on_disk(out: Path, name: str) -> dict[str, Any]:
    error_path, plan_path = out / "errors" / f"{name}.txt", out / "plans" / f"{name}.json"
    if error_path.is_file():
        return summary_row(name, None, error=error_path.read_text(encoding="utf-8", errors="replace").strip())
    try:
        document = json.loads(plan_path.read_text(encoding="utf-8"))
        return summary_row(name, document)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # edited or foreign: listed, not fatal
        return summary_row(name, None, error=f"{plan_path}: not a plan document ({type(exc).__name__}: {exc})")


def progress_line(outcome: Outcome, *, position: int, total: int) -> str:
    """One line per finished job, for logs: ``[3/12] name: optimal (1.2 s)``, ``... (kept from an earlier
    run)``, or ``... error (0.1 s): the reason's first line``."""
    when = "kept from an earlier run" if outcome.skipped else f"{outcome.seconds:.1f} s"
    line = f"[{position}/{total}] {outcome.name}: {outcome.status} ({when})"
    if outcome.status == "error" and outcome.error:
        line += ": " + outcome.error.splitlines()[0]
    return line


def summary_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """A review table: one line per scenario, sorted by model, GPU, GPU count, ISL, OSL."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("optimal", "feasible", "infeasible", "error")}
    lines = [
        "# Sweep summary", "",
        f"{len(rows)} scenarios: {counts['optimal']} proved optimal, {counts['feasible']} feasible (not proved), "
        f"{counts['infeasible']} infeasible, {counts['error']} errors.", "",
        "| scenario | model | GPU | GPUs | ISL/OSL | status | TP | PP | DP | EP | ETP | TTFT (ms) | TPOT (ms) "
        "| tok/s/GPU | note |",
        "|---|---|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]

    def key(r: dict[str, Any]) -> tuple:
        return (str(r["model"]), str(r["gpu"]), r["num_gpus"] or 0, r["input_tokens"] or 0, r["output_tokens"] or 0, r["name"])

    for r in sorted(rows, key=key):
        planned = r["status"] in ("optimal", "feasible")
        num = (lambda k, scale, fmt: format(r[k] * scale, fmt)) if planned else (lambda k, scale, fmt: "")
        note = str(r["reason"]).replace("|", "\\|")
        lines.append(
            f"| {r['name']} | {r['model']} | {r['gpu']} | {r['num_gpus']} | "
            f"{r['input_tokens']}/{r['output_tokens']} | {r['status']} | {r['tp']} | {r['pp']} | {r['dp']} | {r['ep']} "
            f"| {r['etp']} | {num('ttft_s', 1e3, '.1f')} | {num('tpot_s', 1e3, '.2f')} "
            f"| {num('output_tokens_per_s_per_gpu', 1, ',.0f')} | {note} |"
        )
    return "\n".join(lines) + "\n"


def write_plots(folder: Path, rows: Sequence[dict[str, Any]], *, workers: int = 1) -> list[Path]:
    """Request latency and output tokens/s per GPU against GPU count (log 2), one PNG per model
    (``plots/<model>.png``), or per model and ISL/OSL when a model was swept over several
    (``plots/<model>--isl<I>-osl<O>.png``); one line per GPU kind and engine. matplotlib, Agg backend;
    drawn in ``workers`` processes (a figure costs ~0.1 s, and a grid can ask for a hundred). Models with
    no planned scenario get no plot."""
    planned = [r for r in rows if r["status"] in ("optimal", "feasible")]
    panels: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for r in planned:
        panels.setdefault((r["model"], r["input_tokens"], r["output_tokens"]), []).append(r)
    combos_per_model: dict[str, int] = {}
    for model, _, _ in panels:
        combos_per_model[model] = combos_per_model.get(model, 0) + 1
    tasks = []
    for (model, isl, osl), members in sorted(panels.items()):
        stem = _safe(model) if combos_per_model[model] == 1 else f"{_safe(model)}--isl{isl}-osl{osl}"
        tasks.append((folder / f"{stem}.png", f"{model}, ISL {isl} / OSL {osl}", members))
    if not tasks:
        return []
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if workers > 1 and len(tasks) > 2:
            with _worker_pool(min(workers, len(tasks))) as pool:
                return list(pool.map(_plot_panel, *zip(*tasks)))
        return [_plot_panel(*task) for task in tasks]
    except BaseException:  # interrupted: a worker ended mid-figure leaves its temp file
        for leftover in folder.glob(".*.tmp.png"):
            leftover.unlink(missing_ok=True)
        raise


def _plot_panel(path: Path, title: str, members: list[dict[str, Any]]) -> Path:
    """One PNG: latency and tokens/s per GPU against GPUs, a line per GPU kind and engine."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_lat, ax_tput) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[str, list[dict[str, Any]]] = {}
    for r in members:
        series.setdefault(f"{r['gpu']} ({r['engine']})", []).append(r)
    for label, points in sorted(series.items()):
        points.sort(key=lambda r: (r["num_gpus"], r["name"]))
        x = [r["num_gpus"] for r in points]
        ax_lat.plot(x, [r["request_latency_s"] for r in points], marker="o", label=label)
        ax_tput.plot(x, [r["output_tokens_per_s_per_gpu"] for r in points], marker="o", label=label)
    for ax, ylabel in ((ax_lat, "request latency (s)"), (ax_tput, "output tokens/s per GPU")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("GPUs")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax_tput.legend(fontsize=8, loc="best")
    fig.suptitle(f"{title}: estimate of each scenario's optimal plan")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")  # through a temp name and a rename, like every other output
    fig.savefig(tmp, dpi=100, metadata={"Software": None})
    os.replace(tmp, path)
    plt.close(fig)
    return path
