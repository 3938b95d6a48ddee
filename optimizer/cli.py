"""``optimize``: the command line. The only module that prints or exits.

Exit codes: 0 a plan was found (and proved, unless a time limit stopped the proof) or a plan verified;
1 no feasible plan, a verified plan breaks a rule, or ``--require-proof`` and the plan is not proved;
2 bad input (the file, the field, what is wrong).
"""

from __future__ import annotations

import json
from fractions import Fraction
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

# Only what every command needs is imported here: the search (CP-SAT, matplotlib for Pareto plots) is
# imported inside the commands that run it, so `optimize --help`, `verify`, `estimate` of a given plan and
# `launch` of a plan file never load OR-Tools.
from optimizer.errors import Infeasible, OptimizerError, ScenarioError, SolveIncomplete
from optimizer.inputs.fleet import fleet_schema, load_fleet, shipped_fleets
from optimizer.inputs.loader import load_scenario, read_mapping, scenario_from_dict, scenario_from_flags, shipped_scenarios
from optimizer.inputs.scenario import Objective, Scenario
from optimizer.inputs.schema import plan_schema, scenario_schema
from optimizer.outputs.launch import LaunchEngine, NotExpressible, launch_commands
from optimizer.outputs.report import (
    alternatives_section,
    render_alternatives,
    estimate_document,
    render_estimate,
    render_failing,
    infeasible_document,
    model_summary,
    plan_document,
    render_dot,
    render_markdown,
    render_table,
    solution_document,
    to_json,
)
from optimizer.outputs.sweep import EXECUTORS, Outcome, atomic_write, expand_jobs, progress_line, run_sweep
from optimizer.search.certify import check_optimality
from optimizer.search.exhaustive import optimize_exhaustive, runner_up, top_plans
from optimizer.search.result import build_tables
from optimizer.search.rules import build_rules
from optimizer.search.verify import certify, plan_context, read_plan, scenario_for_plan
from optimizer.units import DEFAULT_BUDGET_S

if TYPE_CHECKING:
    from optimizer.model.parallel import Plan
    from optimizer.search.solve import Deadline
    from optimizer.search.verify import Certificate

EXIT_OK, EXIT_INFEASIBLE, EXIT_BAD_INPUT = 0, 1, 2


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}" if code == EXIT_BAD_INPUT else message, err=True)
    sys.exit(code)


class _FlagScenario(str):
    """A scenario asked in one line (``--model --gpu --gpus --isl --osl ...``): its name, carrying the
    mapping ``scenario_from_flags`` built, so every command loads it where it would load a file."""

    data: dict[str, Any]

    def __new__(cls, data: dict[str, Any]) -> _FlagScenario:
        made = super().__new__(cls, data["name"])
        made.data = data
        return made


_ONE_LINE = ("model", "gpu", "gpus", "gpus_per_node", "isl", "osl", "concurrency", "ttft_ms", "tpot_ms", "engine_name",
             "objective", "weight_dtype")


def _one_line_options(*, name_param: str = "scenario_name", print_scenario: bool = False) -> Any:
    """Add the one-line question to a command: ``--model --gpu --gpus --isl --osl`` with ``--ttft-ms``,
    ``--tpot-ms``, ``--engine``, ``--concurrency``, ``--objective``, ``--weight-dtype``, ``--gpus-per-node``
    (defaults in ``loader.ONE_LINE_DEFAULTS``), in place of ``--scenario``. The wrapped command receives the
    built scenario in ``name_param`` (appended when that is a tuple of names)."""
    from functools import wraps

    def decorate(command: Any) -> Any:
        @wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            flags = {key: kwargs.pop(key) for key in _ONE_LINE}
            show = kwargs.pop("print_scenario", False)
            given = {key: value for key, value in flags.items() if value is not None}
            named = kwargs.get(name_param)
            if given:
                if named:
                    _fail("give --scenario or the one-line flags (--model, --gpu, ...), not both; `--print-scenario` "
                          "writes the flags' scenario as YAML to edit", EXIT_BAD_INPUT)
                missing = [f"--{key.replace('_', '-')}" for key in ("model", "gpu", "gpus", "isl", "osl") if key not in given]
                if missing:
                    _fail(f"a one-line question needs {', '.join(missing)} too (e.g. --model Qwen3-30B-A3B --gpu h100-sxm "
                          "--gpus 8 --isl 2048 --osl 512)", EXIT_BAD_INPUT)
                try:
                    data = scenario_from_flags(
                        model=given["model"], gpu=given["gpu"], gpus=given["gpus"], isl=given["isl"], osl=given["osl"],
                        gpus_per_node=given.get("gpus_per_node"), concurrency=given.get("concurrency"),
                        ttft_ms=given.get("ttft_ms"), tpot_ms=given.get("tpot_ms"), engine=given.get("engine_name"),
                        objective=given.get("objective"), weight_dtype=given.get("weight_dtype"),
                        rate=kwargs.get("rate"))
                    scenario_from_dict(dict(data), source="<command line>")  # bad flags fail here, before any work
                except ScenarioError as exc:
                    _fail(str(exc), EXIT_BAD_INPUT)
                    return None
                if show:
                    click.echo(f"# optimize {' '.join(sys.argv[1:])}\n"
                               "# Built from the command line (defaults: optimizer/inputs/loader.py ONE_LINE_DEFAULTS); edit and "
                               "pass with --scenario FILE.\n" + yaml.safe_dump(data, sort_keys=False), nl=False)
                    return None
                built = _FlagScenario(data)
                kwargs[name_param] = (*named, built) if isinstance(named, tuple) else built
            elif show:
                _fail("--print-scenario writes the scenario the one-line flags build: give --model, --gpu, --gpus, --isl "
                      "and --osl", EXIT_BAD_INPUT)
            elif not named and not print_scenario:  # (the top-level command answers no question with its help)
                _fail("give --scenario NAME|PATH or a one-line question (--model M --gpu G --gpus N --isl I --osl O)",
                      EXIT_BAD_INPUT)
            return command(*args, **kwargs)

        options = [
            click.option("--model", "model", metavar="NAME|REPO|PATH", help="One line: a catalog model, a Hugging Face repo id or a config.json."),
            click.option("--gpu", "gpu", metavar="NAME", help="One line: a catalog GPU (H100, h200-sxm, ...)."),
            click.option("--gpus", "gpus", type=click.IntRange(min=1), help="One line: total GPUs (whole nodes)."),
            click.option("--gpus-per-node", "gpus_per_node", type=click.IntRange(min=1),
                         help="One line: GPUs per node [default: the catalog's, or --gpus when fewer]."),
            click.option("--isl", "isl", type=click.IntRange(min=1), help="One line: input tokens per request."),
            click.option("--osl", "osl", type=click.IntRange(min=0), help="One line: output tokens per request."),
            click.option("--concurrency", "concurrency", type=click.IntRange(min=1),
                         help="One line: sequences in flight [default: 64; chosen when the objective chooses the batch]."),
            click.option("--ttft-ms", "ttft_ms", type=click.FloatRange(min=0, min_open=True), help="One line: TTFT target, ms."),
            click.option("--tpot-ms", "tpot_ms", type=click.FloatRange(min=0, min_open=True), help="One line: TPOT target, ms."),
            click.option("--engine", "engine_name", type=click.Choice(["vllm", "sglang", "tensorrt-llm", "megatron"]),
                         help="One line: the engine [default: vllm]."),
            click.option("--objective", "objective", type=click.Choice([o.value for o in Objective]),
                         help="One line [default: output_tokens_per_s_per_gpu with a target, else request_latency]."),
            click.option("--weight-dtype", "weight_dtype", metavar="DTYPE", help="One line: weight dtype [default: bf16]."),
        ]
        if print_scenario:
            options.append(click.option("--print-scenario", "print_scenario", is_flag=True,
                                        help="Write the scenario the one-line flags build, as YAML, and stop."))
        for option in reversed(options):
            run = option(run)
        return run

    return decorate


def _load(name_or_path: str, *, model_config: str | None = None) -> Scenario:
    """The scenario, with its model replaced by a Hugging Face config.json when one is given."""
    try:
        if isinstance(name_or_path, _FlagScenario):
            data = dict(name_or_path.data)
            if model_config is not None:
                data["model"] = {"config_json": str(Path(model_config).resolve())}
            return scenario_from_dict(data, source="<command line>")
        if model_config is None:
            return load_scenario(name_or_path)
        path = Path(name_or_path) if Path(name_or_path).exists() else shipped_scenarios().get(name_or_path, Path(name_or_path))
        data = read_mapping(path)
        data.setdefault("name", path.stem)
        data["model"] = {"config_json": str(Path(model_config).resolve())}
        return scenario_from_dict(data, source=str(path), base_dir=path.parent)
    except ScenarioError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
        raise  # unreachable; keeps type checkers content


def _write(path: str, text: str, *, inputs: list[Path]) -> None:
    """Write ``text`` to ``path`` (``-`` is stdout) atomically: a temp file in the same folder, then
    rename, so a failed run never leaves half a file. Refuses to overwrite an input file."""
    if path == "-":
        click.echo(text, nl=False)
        return
    target = Path(path)
    for source in inputs:
        if source.exists() and target.exists() and target.resolve() == source.resolve():
            _fail(f"{path}: refusing to overwrite the input file {source}; choose another output path", EXIT_BAD_INPUT)
    folder = target.parent if str(target.parent) else Path(".")
    if not folder.is_dir():
        _fail(f"{path}: folder {folder} does not exist", EXIT_BAD_INPUT)
    try:
        atomic_write(target, text)
    except OSError as exc:
        _fail(f"{path}: cannot write: {exc.strerror}", EXIT_BAD_INPUT)


def _emit(document: dict[str, Any], render: Any, *, json_path: str | None, inputs: list[Path]) -> None:
    """A command's document: as JSON to ``json_path`` (``-``: stdout, and nothing else printed), and
    rendered for the terminal unless the JSON went to stdout."""
    if json_path:
        _write(json_path, to_json(document), inputs=inputs)
    if json_path != "-":
        click.echo(render(document))


def _output_path(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An output path option: an empty one is refused (it would silently write nothing)."""
    if value is not None and not value.strip():
        raise click.BadParameter("an empty path; give a file name (or - for stdout)")
    return value


def _source_of(name_or_path: str) -> str:
    """Where a scenario came from, for an error message: its file, or the command line."""
    return "<command line>" if isinstance(name_or_path, _FlagScenario) else str(_scenario_inputs(name_or_path)[0])


def _scenario_inputs(name_or_path: str, model_config: str | None = None) -> list[Path]:
    """Every file a scenario reads, which no output may overwrite: the scenario file, the config.json its
    ``model.config_json`` names and the calibration its ``engine.calibration_file`` names (relative to the
    scenario's folder) and a ``--model-config``."""
    if isinstance(name_or_path, _FlagScenario):  # no scenario file; a config.json it names is still an input
        model = name_or_path.data.get("model")
        config = [Path(model["config_json"])] if isinstance(model, dict) and "config_json" in model else []
        return [*config, *([Path(model_config)] if model_config else [])]
    shipped = shipped_scenarios()
    path = shipped.get(name_or_path, Path(name_or_path))
    inputs = [path]
    try:
        data = read_mapping(path)
    except ScenarioError:
        data = {}
    model, engine = data.get("model"), data.get("engine")
    if isinstance(model, dict) and isinstance(model.get("config_json"), str):
        config = Path(model["config_json"])
        inputs.append(config if config.is_absolute() else path.parent / config)
    if isinstance(engine, dict) and isinstance(engine.get("calibration_file"), str):  # optimize calibrate --out must not overwrite it
        cal = Path(engine["calibration_file"])
        inputs.append(cal if cal.is_absolute() else path.parent / cal)
    if model_config:
        inputs.append(Path(model_config))
    return inputs


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--scenario", "scenario_name", metavar="NAME|PATH", help="A shipped scenario name or a scenario YAML file.")
@click.option("--json", "json_path", metavar="PATH", callback=_output_path, help="Write the plan as JSON (- for stdout).")
@click.option("--markdown", "markdown_path", metavar="PATH", callback=_output_path, help="Write the plan as Markdown (- for stdout).")
@click.option("--dag", "dag_path", metavar="PATH", callback=_output_path, help="Write the deployment graph as Graphviz DOT (- for stdout).")
@click.option("--model-config", "model_config", type=click.Path(dir_okay=False), metavar="PATH",
              help="Use this Hugging Face config.json as the scenario's model.")
@click.option("--solver", type=click.Choice(["cp-sat", "exhaustive"]), default="cp-sat", show_default=True,
              help="CP-SAT with proof, or the enumeration oracle on the same rules and tables.")
@click.option("--time-limit", "time_limit_s", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_BUDGET_S,
              show_default=True, metavar="S",
              help="The command's budget (solve, conflict search, diagnosis): when it runs out, the best plan found is "
                   "printed, marked not proved, with its gap; a diagnosis says where it stopped.")
@click.option("--require-proof", is_flag=True, help="Exit 1 unless the plan is proved optimal.")
@click.option("--double-check", is_flag=True,
              help="After a proof, re-solve with objective <= best - 1 and require INFEASIBLE.")
@click.option("--explain/--no-explain", default=True, show_default=True,
              help="When no plan exists, search for the smallest changes that would give one (each confirmed by a re-solve).")
@click.option("--top", "top_k", type=click.IntRange(min=1, max=1000), default=None, metavar="K",
              help="Also list the K best plans on distinct layouts with their instances and gap to the best, in ms (or "
                   "tokens/s per GPU) and % (JSON: alternatives).")
@click.option("--workers", type=click.IntRange(min=1, max=64), default=1, show_default=True,
              help="CP-SAT worker threads; the proved plan and its JSON are the same for any count.")
@click.pass_context
@_one_line_options(print_scenario=True)
def main(ctx: click.Context, scenario_name: str | None, json_path: str | None, markdown_path: str | None,
         dag_path: str | None, model_config: str | None, solver: str, time_limit_s: float | None, require_proof: bool, double_check: bool, explain: bool,
         top_k: int | None, workers: int) -> None:
    """Plan a deployment: the best parallel layout and batch for the objective, with its proof.

    Ask in one line, or give a scenario file (or a shipped name):

    optimize --model Qwen3-30B-A3B --gpu h100 --gpus 8 --isl 2048 --osl 512 --ttft-ms 2000 --tpot-ms 50

    optimize --scenario 16gpu-30b
    """
    if ctx.invoked_subcommand is not None:
        return
    from optimizer.search.solve import Deadline, confirm_optimum, optimize
    if scenario_name is None:
        click.echo(ctx.get_help())
        _fail("give --scenario NAME|PATH (see `optimize scenarios` for the shipped names)", EXIT_BAD_INPUT)
    scenario = _load(scenario_name, model_config=model_config)
    if scenario.search.objective is Objective.FEWEST_GPUS:  # the answer is a GPU count and pools, not one plan
        if markdown_path or dag_path or top_k:
            _fail("--markdown, --dag and --top describe one plan; objective fewest_gpus answers as `optimize capacity` does "
                  "(use --json for its document)", EXIT_BAD_INPUT)
        ctx.invoke(capacity, scenario_name=scenario_name, rate=None, json_path=json_path, solver=solver)
        return
    deadline = Deadline(time_limit_s)
    try:
        if solver == "exhaustive":
            solution = optimize_exhaustive(scenario)
            if double_check:
                checked = confirm_optimum(scenario, solution.tables, solution.evidence.objective, deadline=deadline)
                solution = replace(solution, evidence=replace(solution.evidence, double_check=checked))
        else:
            solution = optimize(scenario, time_limit_s=time_limit_s, workers=workers, double_check=double_check, deadline=deadline)
    except Infeasible as exc:
        _infeasible(scenario, exc, solver=solver, explain=explain, json_path=json_path, inputs=_scenario_inputs(scenario_name, model_config),
                    deadline=deadline)
        return
    except SolveIncomplete as exc:
        _fail(f"no plan for {scenario.name}: {exc}", EXIT_INFEASIBLE)
        return
    except OptimizerError as exc:
        _fail(f"{_source_of(scenario_name)}: {exc}", EXIT_BAD_INPUT)
        return
    document = solution_document(solution)
    if top_k:
        document["alternatives"] = alternatives_section(solution, top_plans(solution, top_k))
    inputs = _scenario_inputs(scenario_name, model_config)
    if json_path:
        _write(json_path, to_json(document), inputs=inputs)
    if markdown_path:
        second = runner_up(solution)
        _write(markdown_path, render_markdown(document, solution_document(second) if second else None), inputs=inputs)
    if dag_path:
        _write(dag_path, render_dot(document), inputs=inputs)
    ev = solution.evidence
    if "-" not in (json_path, markdown_path, dag_path):
        click.echo(model_summary(scenario))
        click.echo(render_table(document, timing=f"{ev.wall_s:.3f} s, {ev.workers} worker(s)"))
        if top_k:
            click.echo(render_alternatives(document))
    if not document["certificate"]["holds"]:  # the certificate re-checks the solver; this would be a bug
        _fail("internal error: the plan's certificate does not hold", EXIT_INFEASIBLE)
    if require_proof and not ev.proved_optimal:
        _fail(f"--require-proof: the plan for {scenario.name} is not proved optimal (status {ev.status}, the optimum may be "
              f"up to {ev.gap_ns / 1e9:.6g} s lower); allow more time with --time-limit or drop it", EXIT_INFEASIBLE)
    if require_proof and double_check and ev.double_check != "INFEASIBLE":
        _fail(f"--require-proof: the double check did not confirm the optimum (status {ev.double_check})", EXIT_INFEASIBLE)


def _infeasible(scenario: Scenario, exc: Infeasible, *, solver: str, explain: bool, json_path: str | None,
                inputs: list[Path], deadline: Deadline | None = None) -> None:
    """Report a proved infeasibility: the independent conflicts, then (``explain``) the smallest changes."""
    from optimizer.search.diagnose import diagnose
    lines = [f"no feasible plan for {scenario.name}."]
    if solver == "exhaustive":
        lines += ["The exhaustive search rejected every layout:", *(f"  - {r}" for r in exc.reasons)]
    diagnosis = diagnose(scenario, exc.conflicts, deadline=deadline) if explain else None
    conflicts = diagnosis.reasons if diagnosis else tuple(exc.reasons)
    if solver != "exhaustive" or diagnosis:
        lines.append("These rules cannot all hold (each line is an independent conflict; relax a rule of every one):")
        lines += [f"  {i}. {reason}" for i, reason in enumerate(conflicts, 1)]
    if diagnosis:
        lines.append("Smallest changes that admit a plan (each confirmed by a re-solve):" if diagnosis.changes
                     else "No single change of GPU count, memory, batch, prompt length or targets admits a plan.")
        lines += [f"  - {change.text}" for change in diagnosis.changes]
        if diagnosis.notes:
            lines.append("Tried without success:")
            lines += [f"  - {note}" for note in diagnosis.notes]
    if json_path:
        _write(json_path, to_json(infeasible_document(scenario=scenario, reasons=conflicts, diagnosis=diagnosis)), inputs=inputs)
    _fail("\n".join(lines), EXIT_INFEASIBLE)


def _layers(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    if value is None:
        return None
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated layer counts such as 31,30, got {value!r}") from None


def _plan_size_options(command: Any) -> Any:
    """The sizes and engine switches of a hand-written plan as options, spelled as the engines spell them:
    vLLM ``--tensor-parallel-size``, ``--data-parallel-size``, ``--enable-expert-parallel``
    (docs.vllm.ai, engine arguments); SGLang ``--tp-size``, ``--dp-size``, ``--ep-size``,
    ``--attn-dp-size``, ``--enable-dp-attention`` (docs.sglang.io, server arguments); TensorRT-LLM
    ``enable_attention_dp`` as ``--enable-attention-dp``; Megatron-Core's ``--expert-tensor-parallel-size``."""
    options = [
        click.option("--tp", "--tensor-parallel-size", "--tp-size", "tp", type=int, help="Tensor-parallel size (SGLang: --tp-size)."),
        click.option("--pp", "--pipeline-parallel-size", "--pp-size", "pp", type=int, help="Pipeline-parallel size."),
        click.option("--dp", "--data-parallel-size", "--dp-size", "dp", type=int, help="Data-parallel size."),
        click.option("--ep", "--expert-parallel-size", "--ep-size", "ep", type=int, help="Expert-parallel size."),
        click.option("--etp", "--expert-tensor-parallel-size", "etp", type=int, help="Expert tensor-parallel size."),
        click.option("--edp", "edp", type=int, help="Expert data-parallel size."),
        click.option("--attn-dp-size", "attn_dp_size", type=int, help="SGLang: attention data-parallel size within --tp-size."),
        click.option("--enable-dp-attention", "enable_dp_attention", is_flag=True, default=None,
                     help="SGLang (<= 0.5.21): --dp-size is the attention DP within --tp-size."),
        click.option("--enable-attention-dp", "enable_attention_dp", is_flag=True, default=None,
                     help="TensorRT-LLM: attention DP over tp_size (attention TP 1)."),
        click.option("--enable-expert-parallel", "enable_expert_parallel", is_flag=True, default=None,
                     help="vLLM: experts sharded by EP = TP x DP (sets the scenario's engine.enable_expert_parallel)."),
        click.option("--nnodes", "nnodes", type=int, help="SGLang: nodes one engine instance spans (checked against the plan)."),
        click.option("--batch", "batch_per_replica", type=int, help="Sequences per replica."),
        click.option("--layers", "layers_per_stage", callback=_layers, metavar="N,N,...", help="Layers per pipeline stage."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@main.command()
@click.argument("plan_path", metavar="[PLAN]", required=False)
@click.option("--scenario", "scenario_name", metavar="NAME|PATH", help="Scenario to check against.")
@click.option("--json", "json_path", metavar="PATH", callback=_output_path, help="Write the verdict as plan JSON (- for stdout).")
@_plan_size_options
@_one_line_options()
def verify(plan_path: str | None, scenario_name: str, json_path: str | None, **sizes: object) -> None:
    """Check a hand-written plan: every rule with its integers, and the estimate.

    PLAN is a plan JSON from `optimize --json`, or a YAML/JSON mapping with the sizes under the names
    people use (tp, tensor_parallel_size, --tensor-parallel-size, tp_size, expert_model_parallel_size,
    ...). Sizes can also be given as options, e.g. `optimize verify --scenario 16gpu-30b --tp 4 --pp 4
    --dp 2 --ep 16`. Missing sizes are derived as the scenario's engine would; an SGLang plan may give
    its --tp-size with --attn-dp-size (or --dp-size with enable_dp_attention: true), a TensorRT-LLM plan
    its tp_size with enable_attention_dp: true. A plan JSON that carries an optimality certificate
    (evidence.optimality_certificate) has it re-checked against the scenario, without CP-SAT. A plan that
    breaks rules has them listed first, numbered with their integers, and one that breaks a structural
    rule is marked as a plan that cannot run (JSON: certificate.runnable, certificate.failing_rules). Exit
    0 if every rule (and the certificate) holds, 1 if any fails (one line per failing rule on stderr), 2
    for unreadable input.
    """
    scenario = _load(scenario_name)
    given = {key: value for key, value in sizes.items() if value is not None}  # an unset switch is None
    if plan_path is None and not given:
        _fail("give a PLAN file or the sizes as options (--tp, --pp, --dp, --ep, ...)", EXIT_BAD_INPUT)
    try:
        switched = scenario_for_plan(None if plan_path is None else Path(plan_path), scenario, given)
        _note_switch(scenario, switched)
        scenario = switched
        plan = read_plan(None if plan_path is None else Path(plan_path), scenario, given)
    except ScenarioError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
        return
    context = plan_context(scenario, plan)
    certificate = certify(scenario, plan)
    document = plan_document(scenario=scenario, plan=plan, certificate=certificate, table=context.table,
                             index=context.index, evidence=None)
    optimality = _optimality_claim(plan_path)
    check = None if optimality is None else check_optimality(scenario, plan, optimality)
    if json_path:
        _write(json_path, to_json(document), inputs=[*([Path(plan_path)] if plan_path else []), *_scenario_inputs(scenario_name)])
    failing = render_failing(document["certificate"]["failing_rules"], runnable=certificate.runnable)
    if json_path != "-":
        click.echo("\n".join([*failing, "", ""]) if failing else "", nl=False)  # the broken rules first
        click.echo(model_summary(scenario))
        click.echo(render_table(document, title="Verified plan"))
        if check is not None:
            click.echo(f"Optimality certificate: {check.summary()}")
    if not certificate.holds:  # the exit reason, one line per rule, also when stdout carries the JSON
        lines = "\n".join(f"  - {c.name}: {c.detail} ({c.lhs} {c.op} {c.rhs} is false)" for c in certificate.failing)
        _fail(f"the plan breaks {len(certificate.failing)} rule(s):\n{lines}", EXIT_INFEASIBLE)
    if check is not None and not check.holds:
        _fail(f"the plan's optimality certificate does not hold for this scenario: {check.summary()}", EXIT_INFEASIBLE)


def _note_switch(scenario: Scenario, switched: Scenario) -> None:
    """Say on stderr when the plan's own engine switch replaced the scenario's."""
    if switched.engine != scenario.engine:
        click.echo(f"note: checked with engine.enable_expert_parallel {str(switched.engine.enable_expert_parallel).lower()} as "
                   f"the plan states (the scenario {scenario.name} says {str(scenario.engine.enable_expert_parallel).lower()})",
                   err=True)


def _optimality_claim(plan_path: str | None) -> dict | None:
    """The optimality certificate of a plan document written by ``optimize --json``, if it has one."""
    if plan_path is None:
        return None
    try:
        data = read_mapping(Path(plan_path))
    except ScenarioError:
        return None  # read_plan has already accepted the file; a plain mapping has no claim
    evidence = data.get("evidence") if isinstance(data, dict) else None
    claim = evidence.get("optimality_certificate") if isinstance(evidence, dict) else None
    return claim if isinstance(claim, dict) else None


@main.command()
@click.argument("plan_path", metavar="[PLAN]", required=False)
@click.option("--scenario", "scenario_name", metavar="NAME|PATH", help="The scenario the plan serves.")
@click.option("--json", "json_path", metavar="PATH", callback=_output_path, help="Write the estimate as JSON (- for stdout).")
@_plan_size_options
@_one_line_options()
def estimate(plan_path: str | None, scenario_name: str, json_path: str | None, **sizes: object) -> None:
    """Estimate one plan: prefill and decode step, TTFT, TPOT, throughput, and every operator and
    collective with its speed of light (datasheet peak) beside it.

    PLAN is a plan JSON from `optimize --json` or a hand-written plan (as for `verify`); or give the sizes
    as options. With neither, the plan `optimize` picks for the scenario is estimated. A plan that breaks
    rules is still estimated: the rules come first, numbered with their integers, and a broken structural
    rule marks the estimate as for a plan that cannot run (JSON: runnable, failing_rules). Exit 0 with an
    estimate, 1 if the scenario has no feasible plan to pick, 2 for unreadable input.
    """
    scenario = _load(scenario_name)
    given = {key: value for key, value in sizes.items() if value is not None}  # an unset switch is None
    if plan_path is None and not given:
        from optimizer.search.solve import optimize

        try:
            plan = optimize(scenario).plan
        except Infeasible as exc:
            _fail(f"{exc}\ngive a PLAN or sizes (--tp, --pp, ...) to estimate a plan anyway", EXIT_INFEASIBLE)
            return
    else:
        try:
            switched = scenario_for_plan(None if plan_path is None else Path(plan_path), scenario, given)
            _note_switch(scenario, switched)
            scenario = switched
            plan = read_plan(None if plan_path is None else Path(plan_path), scenario, given)
        except ScenarioError as exc:
            _fail(str(exc), EXIT_BAD_INPUT)
            return
    context = plan_context(scenario, plan)
    document = estimate_document(scenario=scenario, plan=plan, certificate=certify(scenario, plan),
                                 table=context.table, index=context.index)
    _emit(document, render_estimate, json_path=json_path, inputs=[*([Path(plan_path)] if plan_path else []), *_scenario_inputs(scenario_name)])


@main.command()
@click.option("--scenario", "scenario_names", multiple=True, metavar="NAME|PATH",
              help="Scenario(s) to sweep (repeatable).")
@click.option("--out", "out_dir", required=True, metavar="DIR", callback=_output_path, help="Folder for <scenario>-pareto.csv and .png (created).")
@_one_line_options(name_param="scenario_names")
def pareto(scenario_names: tuple[str, ...], out_dir: str) -> None:
    """The latency/throughput trade-off: every feasible layout and batch as output tokens/s per user
    against output tokens/s per GPU, the Pareto front, and the plan `optimize` picks marked.

    Writes DIR/<scenario>-pareto.csv (every point; columns pareto, chosen, meets_targets) and
    DIR/<scenario>-pareto.png, and prints the front. Exit 0, 1 if a scenario has no feasible point at
    all, 2 for bad input.
    """
    from optimizer.search.pareto import pareto_points, plot as plot_pareto, points_csv
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _fail(f"{out}: cannot create the output folder ({exc.strerror})", EXIT_BAD_INPUT)
    empty = []
    for name in scenario_names:
        scenario = _load(name)
        try:
            points = pareto_points(scenario)
        except OptimizerError as exc:
            _fail(f"{_source_of(name)}: {exc}", EXIT_BAD_INPUT)
            return
        if not points:
            empty.append(scenario.name)
            continue
        csv_path, png_path = out / f"{scenario.name}-pareto.csv", out / f"{scenario.name}-pareto.png"
        _write(str(csv_path), points_csv(points), inputs=_scenario_inputs(name))
        plot_pareto(points, png_path, title=f"{scenario.name}: {scenario.model.name} on {scenario.cluster.num_gpus} x "
                                            f"{scenario.cluster.gpu.name}, ISL {scenario.workload.input_tokens} / OSL "
                                            f"{scenario.workload.output_tokens}")
        front = [p for p in points if p.pareto]
        click.echo(f"{scenario.name}: {len(points)} feasible points, {len(front)} on the Pareto front -> {csv_path}, {png_path}")
        for p in front:
            mark = "  <- optimize" if p.chosen else ""
            click.echo(f"  TP{p.tp} PP{p.pp} DP{p.dp} EP{p.ep} ETP{p.etp} batch {p.batch_per_replica:4d}: "
                       f"{p.tokens_per_s_per_user:8.1f} tok/s/user  {p.tokens_per_s_per_gpu:9.1f} tok/s/GPU"
                       f"{'' if p.meets_targets else '  (misses a target)'}{mark}")
        if not any(p.chosen for p in points):
            click.echo("  (no plan meets the scenario's targets: nothing marked)")
    if empty:
        _fail(f"no feasible layout at all (memory or divisibility) for: {', '.join(empty)}", EXIT_INFEASIBLE)


@main.command()
@click.option("--scenario", "scenario_name", metavar="NAME|PATH", help="The scenario (its TTFT and TPOT targets apply).")
@click.option("--json", "json_path", metavar="PATH", callback=_output_path, help="Write the comparison as JSON (- for stdout).")
@click.option("--solver", type=click.Choice(["cp-sat", "exhaustive"]), default="cp-sat", show_default=True,
              help="CP-SAT with proof, or the enumeration oracle on the same candidates.")
@_one_line_options()
def disagg(scenario_name: str, json_path: str | None, solver: str) -> None:
    """Aggregated or disaggregated? Both optima for output tokens/s per GPU within the scenario's TTFT and
    TPOT targets, each proved: the whole cluster as one pool, and the cluster split into prefill and
    decode instances with the KV cache moved between them and the pool sizes rate-matched.

    Exit 0 with a winner, 1 if neither meets the targets, 2 for bad input.
    """
    from optimizer.search.disagg import compare as compare_serving, comparison_document, render_comparison
    scenario = _load(scenario_name)
    try:
        comparison = compare_serving(scenario, solver=solver)
    except OptimizerError as exc:
        _fail(f"{_source_of(scenario_name)}: {exc}", EXIT_BAD_INPUT)
        return
    document = comparison_document(scenario, comparison)
    _emit(document, render_comparison, json_path=json_path, inputs=_scenario_inputs(scenario_name))
    if comparison.winner == "none":
        _fail(f"no aggregated plan and no disaggregated split meets the targets of {scenario.name}", EXIT_INFEASIBLE)


@main.command()
@click.argument("plan_path", metavar="[PLAN]", required=False)
@click.option("--scenario", "scenario_name", metavar="NAME|PATH", help="The scenario the plan serves (not for a fleet plan).")
@click.option("--engine", "engines", type=click.Choice([e.value for e in LaunchEngine]), multiple=True,
              help="Engine(s) to print commands for (repeatable) [default: the plan's engine; vllm and sglang for a "
                   "megatron plan or a fleet plan].")
@click.option("--node-address", "node_addresses", multiple=True, metavar="ADDR",
              help="Node IP addresses in rank order (repeat); placeholders NODE<n>_ADDR otherwise.")
def launch(plan_path: str | None, scenario_name: str | None, engines: tuple[str, ...], node_addresses: tuple[str, ...]) -> None:
    """Command lines that start the plan on vLLM, SGLang or TensorRT-LLM (trtllm-serve), one per node and
    instance, multi-node included, with every flag checked against the engines' sources
    (optimizer/outputs/launch.py lists them).

    PLAN is a plan JSON from `optimize --json`, or a fleet plan from `optimize fleet --json` (then each
    instance type's commands, no --scenario); without it, the plan `optimize` picks for the scenario.
    Exit 0, 1 if an engine cannot express the plan (it says what it could run) or no plan exists, 2 for
    bad input.
    """
    if plan_path is not None and _launch_fleet(plan_path, engines, node_addresses):
        return
    if scenario_name is None:
        _fail("--scenario is required (except for a fleet plan)", EXIT_BAD_INPUT)
        return
    document = _plan_for(plan_path, scenario_name)
    failed = []
    own = document["plan"]["engine"]
    for engine in engines or ((own,) if own in {e.value for e in LaunchEngine} else ("vllm", "sglang")):
        try:
            click.echo(launch_commands(document, engine=engine, node_addresses=list(node_addresses) or None).render())
        except NotExpressible as exc:
            failed.append(str(exc))
        except OptimizerError as exc:
            _fail(str(exc), EXIT_BAD_INPUT)
    if failed:
        _fail("\n".join(failed), EXIT_INFEASIBLE)


def _launch_fleet(plan_path: str, engines: tuple[str, ...], node_addresses: tuple[str, ...]) -> bool:
    """``launch`` on a fleet plan: each instance type's commands; False when the file is not a fleet plan."""
    from optimizer.outputs.fleet_report import fleet_launch, is_fleet_document
    try:
        document = read_mapping(Path(plan_path))
    except ScenarioError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
        return True
    if not is_fleet_document(document):
        return False
    failed = []
    for engine in engines or ("vllm", "sglang"):
        try:
            for heading, commands in fleet_launch(document, engine=engine, node_addresses=list(node_addresses) or None):
                click.echo(f"# === {heading}: run {engine} once per instance, on distinct GPUs ===")
                click.echo(commands.render())
        except NotExpressible as exc:
            failed.append(str(exc))
        except OptimizerError as exc:
            _fail(f"{plan_path}: {exc}", EXIT_BAD_INPUT)
    if failed:
        _fail("\n".join(failed), EXIT_INFEASIBLE)
    return True


@main.command()
@click.argument("plan_path", metavar="[PLAN]", required=False)
@click.option("--scenario", "scenario_name", metavar="NAME|PATH", required=True, help="The scenario the plan serves.")
@click.option("--format", "fmt", type=click.Choice(["k8s", "compose"]), default="k8s", show_default=True,
              help="k8s: Deployment or LeaderWorkerSet + Service; compose: Docker Compose, one node.")
@click.option("--out", "out_dir", metavar="DIR", required=True, help="Folder to write the files into.")
@click.option("--engine", "engine", type=click.Choice(["vllm", "sglang", "tensorrt-llm"]), default=None,
              help="Engine to run [default: the plan's; required for a megatron plan].")
@click.option("--image", default=None, metavar="IMAGE", help="Container image [default: the engine's release image].")
@click.option("--name", default=None, metavar="NAME", help="Name of the objects [default: <engine>-<scenario>].")
@click.option("--cache-pvc", default=None, metavar="CLAIM", help="k8s: a PersistentVolumeClaim for the Hugging Face cache.")
@click.option("--force", is_flag=True, help="Overwrite files that exist.")
def deploy(plan_path: str | None, scenario_name: str, fmt: str, out_dir: str, engine: str | None, image: str | None,
           name: str | None, cache_pvc: str | None, force: bool) -> None:
    """Manifests that run the plan: Kubernetes (a Deployment + Service for instances on one node, a
    LeaderWorkerSet + Service for instances over several nodes) or Docker Compose (one node), with the
    `optimize launch` command lines, GPUs, shared memory and /health probes (optimizer/outputs/deploy.py).

    PLAN is a plan JSON from `optimize --json` or a hand-written plan; without it, the plan `optimize`
    picks. A megatron plan (a training job) needs --engine to be served. Exit 0, 1 if the engine cannot
    run the plan or no plan exists, 2 for bad input (an existing file without --force included).
    """
    from optimizer.outputs.deploy import deploy_manifests

    document = _plan_for(plan_path, scenario_name)
    try:
        bundle = deploy_manifests(document, fmt=fmt, engine=engine, image=image, name=name, cache_pvc=cache_pvc)
    except NotExpressible as exc:
        _fail(str(exc), EXIT_INFEASIBLE)
        return
    except OptimizerError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
        return
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        _fail(f"--out {out_dir}: exists and is not a folder", EXIT_BAD_INPUT)
    targets = [folder / f.path for f in bundle.files]
    present = [str(t) for t in targets if t.exists()]
    if present and not force:
        _fail(f"{', '.join(present)} already exist(s); pass --force to overwrite, or another --out", EXIT_BAD_INPUT)
    inputs = [Path(p).resolve() for p in (plan_path, scenario_name) if p and Path(p).exists()]
    for target, file in zip(targets, bundle.files):
        if target.resolve() in inputs:
            _fail(f"{target} is an input file; it is never overwritten", EXIT_BAD_INPUT)
        try:
            atomic_write(target, file.text)
        except OSError as exc:  # a path under a file, a read-only or missing mount, ...
            _fail(f"--out {out_dir}: cannot write {target}: {exc.strerror or exc}", EXIT_BAD_INPUT)
        click.echo(f"wrote {target}")
    for note in bundle.notes:
        click.echo(f"note: {note}")


def _plan_for(plan_path: str | None, scenario_name: str) -> dict[str, Any]:
    """The plan document for ``plan_path`` (a plan file) or, without it, the plan ``optimize`` picks for the
    scenario; exits 2 for bad input, 1 when no plan exists (also for the plan file of such a scenario)."""
    scenario = _load(scenario_name)
    _no_plan_exit(plan_path)
    if plan_path is None:
        from optimizer.search.solve import optimize

        try:
            return solution_document(optimize(scenario))
        except (Infeasible, SolveIncomplete) as exc:
            _fail(f"{exc}", EXIT_INFEASIBLE)
            raise
    try:
        plan = read_plan(Path(plan_path), scenario, {})
    except ScenarioError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
        raise
    context = plan_context(scenario, plan)
    return plan_document(scenario=scenario, plan=plan, certificate=_runnable(scenario, plan, plan_path, scenario_name),
                         table=context.table, index=context.index, evidence=None)


def _runnable(scenario: Scenario, plan: Plan, plan_path: str, scenario_name: str) -> Certificate:
    """The plan file's certificate; exits 2 naming the failing rules when a structural one fails (GPU count,
    layer split, memory, ...: the engine cannot start it), as launch, deploy, bench-command and calibrate
    need a plan that runs. Target and balance rules may fail: the plan runs, and its output says so."""
    certificate = certify(scenario, plan)
    if not certificate.runnable:
        lines = [f"  - {c.name}{' [structural]' if c.name in certificate.structural else ''}: {c.detail} "
                 f"({c.lhs} {c.op} {c.rhs} is false)" for c in certificate.failing]
        _fail("\n".join([f"{plan_path}: not a plan for scenario {scenario.name} that its engine can start:", *lines,
                          f"(optimize verify {plan_path} --scenario {scenario_name} shows every rule)"]), EXIT_BAD_INPUT)
    return certificate


@main.command("bench-command")
@click.argument("plan_path", metavar="[PLAN]", required=False)
@click.option("--scenario", "scenario_name", metavar="NAME|PATH", required=True, help="The scenario the plan serves.")
@click.option("--tool", type=click.Choice(["vllm", "sglang", "genai-perf"]), default=None,
              help="Benchmark client [default: the plan engine's own; genai-perf for TensorRT-LLM].")
@click.option("--host", default="127.0.0.1", show_default=True, help="The server's host.")
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="The server's port [default: the engine's].")
def bench_command_cmd(plan_path: str | None, scenario_name: str, tool: str | None, host: str, port: int | None) -> None:
    """The serving benchmark that measures the plan's claim: `vllm bench serve`, `python -m
    sglang.bench_serving` or `genai-perf profile` with the scenario's ISL, OSL and concurrency (or request
    rate), the result file it writes (for `optimize calibrate --measured`) and the TTFT, TPOT and
    tokens/s the plan claims. Flags and their sources: optimizer/outputs/bench.py.

    PLAN is a plan JSON from `optimize --json` or a hand-written plan; without it, the plan `optimize`
    picks. Exit 0, 1 if there is no plan to measure, 2 for bad input.
    """
    from optimizer.outputs.bench import bench_command

    document = _plan_for(plan_path, scenario_name)
    try:
        command = bench_command(document, scenario=_load(scenario_name), tool=tool, host=host, port=port)
    except OptimizerError as exc:
        _fail(str(exc), EXIT_INFEASIBLE)
        return
    click.echo(command.render(), nl=False)


def _no_plan_exit(plan_path: str | None) -> None:
    """Exit 1 when ``plan_path`` is an ``optimize --json`` document of a scenario with no plan (``plan: null``,
    or only the ``infeasible`` section)."""
    if plan_path is None or not Path(plan_path).is_file():
        return
    try:
        data = read_mapping(Path(plan_path))
    except ScenarioError:
        return  # read_plan reports it
    if ("plan" in data and data["plan"] is None) or ("infeasible" in data and "plan" not in data):
        _fail(f"{plan_path}: the scenario has no feasible plan (plan: null); nothing to run or measure", EXIT_INFEASIBLE)


@main.command()
@click.option("--measured", "measured", multiple=True, required=True, metavar="FILE",
              help="A result file of vllm bench serve, sglang.bench_serving or genai-perf (repeatable).")
@click.option("--scenario", "scenario_name", metavar="NAME|PATH", required=True, help="The scenario the runs measured.")
@click.option("--plan", "plan_path", metavar="PLAN", default=None,
              help="The plan that was benchmarked [default: the plan optimize picks for the scenario].")
@click.option("--out", "out_path", metavar="PATH", callback=_output_path, default=None,
              help="Write the calibration file (YAML) here; a scenario names it as engine.calibration_file.")
def calibrate(measured: tuple[str, ...], scenario_name: str, plan_path: str | None, out_path: str | None) -> None:
    """Refit the GPU's step parameters for the scenario's engine to serving benchmarks of one plan
    (sustained compute and memory rates, step overhead; optimizer/model/serving_fit.py), and print the
    error of the estimate before and after, per row and as MAPE over TTFT and TPOT, with a leave-one-out
    figure. With --out, write the calibration file; plans of a scenario that names it record its id.

    Each file is one or more runs (rows) of `optimize bench-command`'s benchmark; they must measure the
    scenario's model, ISL and OSL. Exit 0, 1 if the scenario has no plan, 2 for bad input.
    """
    from optimizer.inputs.bench_results import read_results
    from optimizer.model.serving_fit import calibration_document, fit_serving, mape, percent_errors, row_problems

    scenario = _load(scenario_name)
    rows = []
    for name in measured:
        try:
            rows.extend(read_results(Path(name)))
        except ScenarioError as exc:
            _fail(str(exc), EXIT_BAD_INPUT)
    problems = row_problems(scenario, rows)
    if problems:
        _fail("the measurements do not match the scenario " + scenario.name + ":\n  " + "\n  ".join(problems), EXIT_BAD_INPUT)
    _no_plan_exit(plan_path)
    if plan_path is None:
        from optimizer.search.solve import optimize

        try:
            plan = optimize(scenario).plan
        except (Infeasible, SolveIncomplete) as exc:
            _fail(f"{exc}", EXIT_INFEASIBLE)
            return
    else:
        try:
            plan = read_plan(Path(plan_path), scenario, {})
        except ScenarioError as exc:
            _fail(str(exc), EXIT_BAD_INPUT)
            return
        _runnable(scenario, plan, plan_path, scenario_name)
    try:
        fit = fit_serving(scenario, plan, rows)
    except OptimizerError as exc:
        _fail(f"{_source_of(scenario_name)}: {exc}", EXIT_BAD_INPUT)
        return
    document = calibration_document(fit, scenario=scenario, plan=plan)
    layout = plan.layout
    click.echo(f"{scenario.name}: TP{layout.tp} PP{layout.pp} DP{layout.dp} EP{layout.ep} on {fit.gpu}, {fit.engine}; "
               f"{len(rows)} measured row(s); prior: stack {fit.base_stack} of {fit.base_calibration_id}")
    click.echo(f"{'row':44s} {'conc':>5s} {'TTFT ms':>9s} {'before':>8s} {'after':>8s} {'TPOT ms':>9s} {'before':>8s} "
               f"{'after':>8s} {'tok/s':>9s} {'before':>8s} {'after':>8s}")
    for r, b, a in zip(fit.rows, fit.before, fit.after):
        eb, ea = percent_errors(b, r), percent_errors(a, r)
        label = Path(r.file).name + (f":{r.line}" if r.line else "")
        click.echo(f"{label[-44:]:44s} {r.concurrency:5d} {r.ttft_ms:9.1f} {eb[0]:+7.1f}% {ea[0]:+7.1f}% {r.tpot_ms:9.2f} "
                   f"{eb[1]:+7.1f}% {ea[1]:+7.1f}% {r.output_tokens_per_s:9.0f} {eb[2]:+7.1f}% {ea[2]:+7.1f}%")
    loo = mape(fit.left_out, fit.rows)
    click.echo(f"MAPE (TTFT and TPOT): before {mape(fit.before, fit.rows):.1f}%, after {mape(fit.after, fit.rows):.1f}%, "
               + ("leave-one-out n/a (one row)" if loo is None else f"leave-one-out {loo:.1f}%"))
    step = document["step"]
    click.echo(f"fitted: sustained_compute {step['sustained_compute']:g} (prior {fit.prior.sustained_compute:g}), "
               f"sustained_memory {step['sustained_memory']:g} (prior {fit.prior.sustained_memory:g}), "
               f"step_overhead_us {step['step_overhead_us']:g} (prior {fit.prior.step_overhead_us:g})")
    if out_path:
        header = ("# Serving calibration written by optimize calibrate: name it in a scenario as engine.calibration_file.\n"
                  "# Format: optimizer/inputs/calibration_file.py; fit: optimizer/model/serving_fit.py.\n")
        _write(out_path, header + yaml.safe_dump(document, sort_keys=False, width=140),
               inputs=[*map(Path, measured), *_scenario_inputs(scenario_name), *([Path(plan_path)] if plan_path else [])])
        if out_path != "-":
            click.echo(f"wrote {out_path} ({document['id']})")


@main.command()
@click.argument("fleet_name", metavar="FLEET")
@click.option("--json", "json_path", metavar="PATH", callback=_output_path, help="Write the fleet plan as JSON (- for stdout).")
@click.option("--markdown", "markdown_path", metavar="PATH", callback=_output_path, help="Write the fleet plan as Markdown (- for stdout).")
@click.option("--time-limit", "time_limit_s", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_BUDGET_S,
              show_default=True, metavar="S", help="The whole command within S seconds (the plan first, then the single-pool baselines).")
@click.option("--require-proof", is_flag=True, help="Exit 1 unless the allocation is proved optimal.")
def fleet(fleet_name: str, json_path: str | None, markdown_path: str | None, time_limit_s: float, require_proof: bool) -> None:
    """Several services over mixed GPU pools: the cheapest allocation (instance types, counts, routing of
    each request-size bucket, node packing) that meets every service's TTFT and TPOT, proved by CP-SAT and
    re-checked without it, beside the best single-pool allocation. FLEET is a shipped fleet name or a file
    (`optimize schema fleet` documents it).

    Exit 0 with a plan, 1 if no allocation carries the traffic (or --require-proof and no proof), 2 for bad input.
    """
    from optimizer.outputs.fleet_report import fleet_document, render_fleet, render_fleet_markdown
    from optimizer.search.fleet import plan_fleet
    try:
        fleet_spec = load_fleet(fleet_name)
    except ScenarioError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
        return
    try:
        result = plan_fleet(fleet_spec, time_limit_s=time_limit_s)
    except Infeasible as exc:
        _fail(f"{fleet_spec.name}: {exc}", EXIT_INFEASIBLE)
        return
    except SolveIncomplete as exc:
        _fail(f"{fleet_spec.name}: {exc}", EXIT_INFEASIBLE)
        return
    except OptimizerError as exc:
        _fail(f"{fleet_name}: {exc}", EXIT_BAD_INPUT)
        return
    document = fleet_document(result)
    inputs = [shipped_fleets().get(fleet_name, Path(fleet_name))]
    if markdown_path:
        _write(markdown_path, render_fleet_markdown(document), inputs=inputs)
    if markdown_path == "-":  # Markdown on stdout: nothing else printed there
        if json_path:
            _write(json_path, to_json(document), inputs=inputs)
    else:
        _emit(document, render_fleet, json_path=json_path, inputs=inputs)
    if require_proof and not result.proved_optimal:
        _fail("the allocation is not proved optimal", EXIT_INFEASIBLE)


@main.command()
@click.option("--scenario", "scenario_name", metavar="NAME|PATH", help="The scenario (its TTFT and TPOT targets apply).")
@click.option("--rate", "rate", type=click.FloatRange(min=0, min_open=True), default=None, metavar="REQ/S",
              help="Requests per second to carry [default: the scenario's targets.request_rate_per_s].")
@click.option("--json", "json_path", metavar="PATH", callback=_output_path, help="Write the answer as JSON (- for stdout).")
@click.option("--solver", type=click.Choice(["cp-sat", "exhaustive"]), default="cp-sat", show_default=True)
@_one_line_options()
def capacity(scenario_name: str, rate: float | None, json_path: str | None, solver: str) -> None:
    """The fewest GPUs of the scenario's kind that carry a request rate within its TTFT and TPOT targets:
    replicas of one aggregated instance, or prefill and decode pools, each proved; the smaller wins.

    Exit 0 with a plan, 1 if the cluster cannot carry the rate either way, 2 for bad input.
    """
    from optimizer.search.disagg import capacity_document, fewest_gpus, render_capacity
    scenario = _load(scenario_name)
    if rate is not None:
        targets = scenario.targets.model_copy(update={"request_rate_per_s": Fraction(str(rate))})
        scenario = scenario.model_copy(update={"targets": targets})
    try:
        plans = fewest_gpus(scenario, solver=solver)
    except OptimizerError as exc:
        _fail(f"{_source_of(scenario_name)}: {exc}", EXIT_BAD_INPUT)
        return
    document = capacity_document(scenario, plans)
    _emit(document, render_capacity, json_path=json_path, inputs=_scenario_inputs(scenario_name))
    if document["winner"] == "none":
        _fail(f"{scenario.cluster.num_gpus} x {scenario.cluster.gpu.name} cannot carry "
              f"{float(scenario.targets.request_rate_per_s):g} requests/s within the targets", EXIT_INFEASIBLE)


def _csv(kind: type) -> Any:
    """A click callback for comma-separated values (``--gpus 8,16,32``), each converted with ``kind``."""

    def parse(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple:
        items = [part.strip() for text in value for part in text.split(",") if part.strip()]
        try:
            converted = tuple(kind(item) for item in items)
        except ValueError:
            raise click.BadParameter(f"expected comma-separated {kind.__name__} values, got {','.join(items)!r}") from None
        if kind is int and any(v < 1 for v in converted):
            raise click.BadParameter("every value must be >= 1")
        return converted

    return parse


@main.command()
@click.argument("inputs", nargs=-1, required=True, metavar="SCENARIO...")
@click.option("--out", "out_dir", required=True, metavar="DIR", callback=_output_path, help="Output folder (created; kept results are resumed).")
@click.option("--gpus", multiple=True, callback=_csv(int), metavar="N,N,...", help="Total GPU counts, e.g. 8,16,32,64.")
@click.option("--gpu", "gpu_names", multiple=True, callback=_csv(str), metavar="NAME,...", help="Catalog GPU kinds, e.g. h100-sxm,h200-sxm.")
@click.option("--model", "models", multiple=True, callback=_csv(str), metavar="NAME|PATH,...",
              help="Catalog model names or Hugging Face config.json paths.")
@click.option("--model-config", "model_configs", multiple=True, type=click.Path(dir_okay=False), metavar="PATH",
              help="A Hugging Face config.json (repeatable); joins the --model axis.")
@click.option("--isl", multiple=True, callback=_csv(int), metavar="N,...", help="Input tokens per request.")
@click.option("--osl", multiple=True, callback=_csv(int), metavar="N,...", help="Output tokens per request.")
@click.option("--executor", type=click.Choice(EXECUTORS), default="process", show_default=True,
              help="A local process pool, or a Ray cluster (pip install 'optimizer[ray]').")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Parallel jobs [default: all cores].")
@click.option("--ray-address", default=None, metavar="ADDR", help="Connect to this Ray cluster instead of starting a local one.")
@click.option("--resume/--fresh", default=True, show_default=True, help="Keep and skip results already in DIR.")
@click.option("--time-limit", "time_limit_s", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_BUDGET_S,
              show_default=True, metavar="S", help="Each scenario's budget (solve and diagnosis), as for optimize --time-limit.")
@click.option("--explain/--no-explain", default=False, show_default=True, help="Diagnose infeasible scenarios (slower).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Progress on stderr: a bar on a terminal, else a line per finished scenario.")
def sweep(inputs: tuple[str, ...], out_dir: str, gpus: tuple[int, ...], gpu_names: tuple[str, ...], models: tuple[str, ...],
          model_configs: tuple[str, ...], isl: tuple[int, ...], osl: tuple[int, ...], executor: str, workers: int | None,
          ray_address: str | None, resume: bool, time_limit_s: float | None, explain: bool, progress: bool) -> None:
    """Plan many scenarios: files, folders, globs or shipped names, crossed with a grid.

    Writes DIR/plans/<scenario>.json and .md (as `optimize --json/--markdown` would), DIR/errors/ for
    scenarios that fail, DIR/summary.csv, DIR/summary.md and DIR/plots/<model>.png. The summary lists
    every result in DIR: this sweep's scenarios, then those earlier sweeps into DIR left. Example:

    optimize sweep scenarios/ --out results/ --gpus 8,16,32 --gpu h100-sxm,h200-sxm

    Ctrl-C (or SIGTERM) ends the workers and keeps every finished plan; the same command resumes.
    One sweep at a time writes DIR (a second one exits 2).

    Exit 0 when every scenario was planned or proved infeasible, 1 if any failed (see DIR/errors/),
    2 on bad input or a busy DIR, 130 when interrupted (143 on SIGTERM).
    """
    import contextlib
    import signal

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        _fail(f"{out_dir}: exists and is not a folder", EXIT_BAD_INPUT)
    jobs = expand_jobs(inputs, gpus=gpus, gpu_names=gpu_names, models=(*models, *model_configs), isl=isl, osl=osl)
    start = time.perf_counter()
    finished: list[Outcome] = []
    bar = (click.progressbar(length=len(jobs), label=f"planning {len(jobs)} scenario(s)", file=sys.stderr,
                             show_pos=True) if progress and sys.stderr.isatty() else None)

    def report(outcome: Outcome) -> None:
        finished.append(outcome)
        if bar is not None:
            bar.update(1)
        elif progress:  # off a terminal (a log, CI): a line each, which a bar cannot give
            click.echo(progress_line(outcome, position=len(finished), total=len(jobs)), err=True)

    stopped_by = [signal.SIGINT]

    def on_sigterm(signum: int, frame: Any) -> None:  # the same way out as Ctrl-C: workers ended, plans kept
        stopped_by[0] = signal.Signals(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with bar if bar is not None else contextlib.nullcontext():
            result = run_sweep(jobs, out, executor=executor, workers=workers, resume=resume, time_limit_s=time_limit_s,
                               explain=explain, ray_address=ray_address, on_outcome=report)
    except KeyboardInterrupt:
        again = "the same command again" + ("" if resume else " without --fresh")
        _fail(f"interrupted ({stopped_by[0].name}) with {len(finished)} of {len(jobs)} scenario(s) done: the workers "
              f"are ended and the finished plans kept in {out / 'plans'}. To resume, run {again}; "
              f"only the rest is planned.", 128 + stopped_by[0])  # the shell's convention: 130, 143
        return
    except OptimizerError as exc:
        _fail(str(exc), EXIT_BAD_INPUT)
        return
    except OSError as exc:
        _fail(f"{out_dir}: cannot write: {exc.strerror}", EXIT_BAD_INPUT)
        return
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
    skipped = sum(o.skipped for o in result.outcomes)
    click.echo(f"{len(jobs)} scenario(s) in {time.perf_counter() - start:.1f} s ({skipped} kept from an earlier run): "
               f"{result.count('optimal')} proved optimal, {result.count('feasible')} not proved, "
               f"{result.count('infeasible')} infeasible, {result.count('error')} failed. Summary: {out / 'summary.md'}")
    failed = [o for o in result.outcomes if o.status == "error"]
    if failed:
        lines = "\n".join(f"  - {o.name}: {o.error}" for o in failed[:20])
        more = f"\n  ... and {len(failed) - 20} more (see {out / 'errors'})" if len(failed) > 20 else ""
        _fail(f"{len(failed)} scenario(s) failed:\n{lines}{more}", EXIT_INFEASIBLE)


@main.command()
@click.argument("kind", type=click.Choice(["scenario", "plan", "fleet"]))
def schema(kind: str) -> None:
    """Print the JSON Schema of a scenario file, a plan document (versioned) or a fleet file, for editors and CI.

    Example: optimize schema scenario > scenario.schema.json
    """
    schemas = {"scenario": scenario_schema, "plan": plan_schema, "fleet": fleet_schema}
    click.echo(json.dumps(schemas[kind](), indent=2, sort_keys=True))


@main.command()
def scenarios() -> None:
    """List the shipped scenarios: name, description, and for a scenario that admits no plan as shipped
    (an example of the diagnosis), which rules conflict, in one line."""
    for name in shipped_scenarios():
        try:
            scenario = load_scenario(name)
        except ScenarioError as exc:
            click.echo(f"{name}\t(does not load: {exc})")
            continue
        click.echo(f"{name}\t{scenario.description}" + _no_plan_note(scenario))


def _no_plan_note(scenario: Scenario) -> str:
    """``\tNO PLAN as shipped: ...`` naming the conflicting rules (see ``optimize --scenario NAME``), or nothing."""
    from optimizer.search.solve import disjoint_conflicts, is_feasible
    try:
        rules = build_rules(scenario)
        if is_feasible(scenario, rules=rules):
            return ""
        conflicts = disjoint_conflicts(scenario, build_tables(scenario), rules, time_limit_s=10)
    except OptimizerError as exc:
        return f"\t(cannot be planned: {exc})"
    named = "; ".join(" + ".join(c) or "the search space" for c in conflicts)
    return f"\tNO PLAN as shipped ({named}): `optimize --scenario {scenario.name}` shows the smallest changes that admit one"


if __name__ == "__main__":  # pragma: no cover
    main()
