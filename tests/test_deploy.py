"""``optimize deploy``: for every shipped scenario with a plan, the Kubernetes manifests (and the Compose
file for one node) are valid against the real schemas, offline: Deployment, Service, ConfigMap and the
LeaderWorkerSet's pod templates with ``kubernetes-validate`` for a pinned Kubernetes release, the
LeaderWorkerSet against its CRD's OpenAPI schema and the Compose file against the compose-spec schema
(tests/data/deploy, sources in SOURCES.md). They also run what ``launch`` runs: the leader's command is
``launch``'s, every worker index's command (Kubernetes' ``$(VAR)`` expansion, then the real ``/bin/sh``)
is ``launch``'s for that node, and the GPUs add up to the cluster. Plans come from tests/golden (the
frozen sizes), not from a solve."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from optimizer.cli import main
from optimizer.errors import PlanError
from optimizer.inputs.loader import load_scenario, shipped_scenarios
from optimizer.outputs.deploy import (
    DEFAULT_IMAGES,
    HEALTH_PATH,
    LEADER_ADDRESS,
    NAME_MAX,
    deploy_manifests,
    gpu_resource,
    resource_name,
    worker_template,
)
from optimizer.outputs.launch import CommandRole, LaunchEngine, NodeCommand, NotExpressible, launch_commands
from optimizer.outputs.report import plan_document
from optimizer.search.verify import certify, plan_context, read_plan

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "deploy"
K8S_VERSION = "1.34"  # a release kubernetes-validate ships; Deployment, Service, ConfigMap are stable in all
GOLDEN = {p.stem: json.loads(p.read_text()) for p in (ROOT / "tests" / "golden").glob("*.json")}
PLANNED = sorted(name for name, golden in GOLDEN.items() if "plan" in golden)
LEADER = "vllm-x-0.vllm-x.default"  # what LWS_LEADER_ADDRESS holds in a pod (a DNS name)


def _strict(schema: object) -> object:
    """The CRD schema as the API server's strict field validation reads it: an object with listed
    properties and no ``x-kubernetes-preserve-unknown-fields`` takes no other fields."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out \
                and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


LWS_SCHEMA = _strict(json.loads((DATA / "leaderworkerset-v1.openapi.json").read_text()))
COMPOSE_SCHEMA = json.loads((DATA / "compose-spec.json").read_text())


def validate_k8s(obj: dict) -> None:
    """Raise unless ``obj`` is valid: core kinds by kubernetes-validate (strict: no unknown fields), the
    LeaderWorkerSet by its CRD schema and its two pod templates as core PodTemplates."""
    if obj["kind"] == "LeaderWorkerSet":
        jsonschema.Draft7Validator(LWS_SCHEMA).validate(obj)
        lwt = obj["spec"]["leaderWorkerTemplate"]
        for key in ("leaderTemplate", "workerTemplate"):
            kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                          "template": lwt[key]}, K8S_VERSION, strict=True)
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


_DOCS: dict[str, dict] = {}


def document(name: str) -> dict:
    """The plan document ``optimize deploy`` builds from the golden plan of ``name`` (as ``launch`` does)."""
    if name not in _DOCS:
        scenario = load_scenario(name)
        path = ROOT / "tests" / "golden" / f"{name}.json"
        plan = read_plan(None, scenario, dict(GOLDEN[name]["plan"]))
        assert path.exists()
        context = plan_context(scenario, plan)
        _DOCS[name] = plan_document(scenario=scenario, plan=plan, certificate=certify(scenario, plan),
                                    table=context.table, index=context.index, evidence=None)
    return copy.deepcopy(_DOCS[name])


def plan_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}-plan.json"
    path.write_text(json.dumps(GOLDEN[name]["plan"]))
    return path


def deploy(*args: str):
    return CliRunner().invoke(main, ["deploy", *args])


def engines_for(name: str) -> list[str]:
    """The plan's engine, or for a Megatron plan the serving engines to try."""
    own = document(name)["plan"]["engine"]
    return ["vllm", "sglang", "tensorrt-llm"] if own == "megatron" else [own]


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' expansion of ``command`` (third_party/forked/golang/expansion): ``$$`` -> ``$``,
    ``$(NAME)`` -> its value when defined, anything else unchanged."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def run_argv(command: list[str], env: dict[str, str]) -> tuple[str, ...]:
    """The argv a container ``command`` starts: expanded; a ``/bin/sh -c 'exec ...'`` line is run by the
    real shell with ``exec`` replaced by a printer of its arguments."""
    words = [expand(w, env) for w in command]
    if words[:2] != ["/bin/sh", "-c"]:
        return tuple(words)
    assert words[2].startswith("exec ")
    script = "printf '%s\\0' " + words[2][len("exec "):]
    out = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, text=True, check=True).stdout
    return tuple(out.split("\0")[:-1])


def test_every_shipped_scenario_has_a_golden_plan_or_none():
    assert set(GOLDEN) == set(shipped_scenarios())
    for name, golden in GOLDEN.items():
        assert ("plan" in golden) != ("infeasible" in golden), name
    assert len(PLANNED) >= 10


@pytest.mark.parametrize("name", PLANNED)
def test_k8s_manifests_are_valid_and_run_the_launch_commands(name, tmp_path):
    doc = document(name)
    cluster = doc["scenario"]["cluster"]
    if doc["plan"]["engine"] == "megatron":
        refused = deploy(str(plan_file(tmp_path, name)), "--scenario", name, "--out", str(tmp_path / "m"))
        assert refused.exit_code == 2 and "megatron" in refused.output and "--engine" in refused.output
        assert not (tmp_path / "m").exists()
    written = 0
    for engine in engines_for(name):
        out = tmp_path / engine
        result = deploy(str(plan_file(tmp_path, name)), "--scenario", name, "--out", str(out), "--engine", engine)
        if result.exit_code == 1:  # the engine (or a group of pods) cannot run this Megatron layout
            with pytest.raises(NotExpressible) as refused:
                deploy_manifests(doc, fmt="k8s", engine=engine)
            assert str(refused.value) in result.output
            continue
        assert result.exit_code == 0, result.output
        written += 1
        files = sorted(out.iterdir())
        objects = [o for f in files for o in yaml.safe_load_all(f.read_text())]
        for obj in objects:
            validate_k8s(obj)
        launch = launch_commands(doc, engine=engine, node_addresses=[LEADER_ADDRESS] * cluster["num_nodes"])
        check_runs_launch(objects, launch, doc)
    assert written >= 1


def check_runs_launch(objects: list[dict], launch, doc: dict) -> None:
    """The objects run ``launch``'s commands on the plan's GPU counts, with probes, shm and a Service."""
    cluster = doc["scenario"]["cluster"]
    by_kind = {o["kind"]: o for o in objects}
    service = by_kind["Service"]
    resource = gpu_resource(cluster["gpu"]["name"])
    serve0 = next(c for c in launch.commands if c.instance == 0 and c.role.value == "serve")
    instances = len({c.instance for c in launch.commands})
    if "Deployment" in by_kind:
        spec = by_kind["Deployment"]["spec"]
        pods, size = [spec["template"]], 1
        assert spec["replicas"] == instances
        assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
        leader = spec["template"]["spec"]["containers"][0]
        assert tuple(leader["command"]) == tuple(a.replace("trtllm-extra", "/etc/optimizer/trtllm-extra")
                                                 for a in serve0.argv)
    else:
        lws = by_kind["LeaderWorkerSet"]["spec"]
        template = lws["leaderWorkerTemplate"]
        size, pods = template["size"], [template["leaderTemplate"], template["workerTemplate"]]
        assert lws["replicas"] == instances
        assert size == len({c.node for c in launch.commands if c.instance == 0})
        leader = template["leaderTemplate"]["spec"]["containers"][0]
        worker = template["workerTemplate"]["spec"]["containers"][0]
        check_workers(leader, worker, size, doc, launch)
        assert "readinessProbe" not in worker and "ports" not in worker
    gpus = [int(p["spec"]["containers"][0]["resources"]["limits"][resource]) for p in pods]
    assert len(set(gpus)) == 1 and gpus[0] * size * instances == cluster["num_nodes"] * cluster["gpus_per_node"]
    port = leader["ports"][0]["containerPort"]
    assert port == int(serve0.argv[serve0.argv.index("--port") + 1])
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert leader[probe]["httpGet"] == {"path": HEALTH_PATH, "port": port}
    assert service["spec"]["ports"][0]["port"] == port
    assert service["spec"]["selector"].items() <= pods[0]["metadata"]["labels"].items()
    for pod in pods:
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory"}
        assert all(e["name"] != "CUDA_VISIBLE_DEVICES" for e in pod["spec"]["containers"][0]["env"])
        assert pod["spec"]["containers"][0]["image"] == DEFAULT_IMAGES[launch.engine]


def check_workers(leader: dict, worker: dict, size: int, doc: dict, launch) -> None:
    """Pod k of a group, expanded as Kubernetes and the shell would, runs ``launch``'s command for the
    instance's node k (addresses: the leader's DNS name)."""
    nodes = doc["scenario"]["cluster"]["num_nodes"]
    real = launch_commands(doc, engine=launch.engine, node_addresses=[LEADER] * nodes)
    inst0 = [c for c in real.commands if c.instance == 0]
    if any(c.role.value == "ray-head" for c in inst0):
        pytest.skip("Ray groups are checked in test_ray_group")
    env = {"LWS_LEADER_ADDRESS": LEADER, "LWS_GROUP_SIZE": str(size), "LWS_WORKER_INDEX": "0"}
    assert run_argv(leader["command"], env) == inst0[0].argv
    for k in range(1, size):
        env["LWS_WORKER_INDEX"] = str(k)
        assert run_argv(worker["command"], env) == inst0[k].argv, k


@pytest.mark.parametrize("name", PLANNED)
def test_compose_is_valid_for_one_node_and_refused_for_more(name, tmp_path):
    doc = document(name)
    cluster = doc["scenario"]["cluster"]
    for engine in engines_for(name):
        out = tmp_path / engine
        result = deploy(str(plan_file(tmp_path, name)), "--scenario", name, "--out", str(out), "--engine", engine,
                        "--format", "compose")
        if cluster["num_nodes"] > 1:
            assert result.exit_code == 2 and "--format k8s" in result.output, result.output
            assert not out.exists()
            continue
        if result.exit_code == 1:
            with pytest.raises(NotExpressible) as refused:
                launch_commands(doc, engine=engine)
            assert str(refused.value) in result.output
            continue
        assert result.exit_code == 0, result.output
        compose = yaml.safe_load((out / "compose.yaml").read_text())
        jsonschema.Draft7Validator(COMPOSE_SCHEMA).validate(compose)
        launch = launch_commands(doc, engine=engine)
        assert len(compose["services"]) == len(launch.commands)
        used = []
        for command, service in zip(launch.commands, compose["services"].values()):
            device = service["deploy"]["resources"]["reservations"]["devices"][0]
            assert sorted(int(g) for g in device["device_ids"]) == sorted(command.gpus)
            used += command.gpus
            assert [a.replace("/etc/optimizer/", "") for a in service["entrypoint"]] == list(command.argv)
            assert f"{HEALTH_PATH}'" in service["healthcheck"]["test"][-1]
        assert sorted(used) == list(range(cluster["gpus_per_node"]))
        for path, text in launch.files:
            assert (out / path).read_text() == text


def test_trtllm_options_file_is_a_configmap_mounted_where_the_command_reads_it(tmp_path):
    bundle = deploy_manifests(document("deepseek-v3-8xb200-trtllm"), fmt="k8s")
    objects = {o["kind"]: o for o in bundle.files[0].documents}
    config = objects["ConfigMap"]
    assert "enable_attention_dp: true" in config["data"]["trtllm-extra-llm-api-options.yaml"]
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    assert pod["volumes"][-1]["configMap"]["name"] == config["metadata"]["name"]
    command = pod["containers"][0]["command"]
    assert command[command.index("--extra_llm_api_options") + 1] == "/etc/optimizer/trtllm-extra-llm-api-options.yaml"
    assert {"name": "engine-options", "mountPath": "/etc/optimizer", "readOnly": True} in pod["containers"][0]["volumeMounts"]


def test_independent_instances_are_replicas_behind_one_service():
    bundle = deploy_manifests(document("llama-3.1-70b-8xh100"), fmt="k8s")  # TP 4, DP 2: two servers
    deployment = next(o for o in bundle.files[0].documents if o["kind"] == "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "4"}
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    assert "pod0=node0[0,1,2,3]" in deployment["metadata"]["annotations"]["optimizer/placement"]
    assert "pod0=node0[4,5,6,7]" in deployment["metadata"]["annotations"]["optimizer/placement"]


def test_vllm_dp_workers_compute_their_first_rank_in_the_shell():
    bundle = deploy_manifests(document("deepseek-v3-32xh800"), fmt="k8s")  # DP 32 over 4 nodes of 8
    lws = next(o for o in bundle.files[0].documents if o["kind"] == "LeaderWorkerSet")
    worker = lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]["command"]
    assert worker[:2] == ["/bin/sh", "-c"] and '"$$((LWS_WORKER_INDEX * 8))"' in worker[2]
    env = {"LWS_LEADER_ADDRESS": LEADER, "LWS_WORKER_INDEX": "3"}
    argv = run_argv(worker, env)
    assert argv[argv.index("--data-parallel-start-rank") + 1] == "24"
    assert argv[argv.index("--data-parallel-address") + 1] == LEADER


def test_ray_group_starts_ray_then_serves(tmp_path):
    """A Megatron layout vLLM runs only through Ray (DP ranks of TP x PP = 16 GPUs over nodes of 8)."""
    doc = document("128gpu-64e")
    doc["plan"].update(tp=8, pp=2, dp=8, ep=64, etp=1, edp=1, layers_per_stage=_halves(doc))
    doc["plan"].pop("instances", None)
    doc["plan"].pop("dp_per_instance", None)
    launch = launch_commands(doc, engine="vllm", node_addresses=[LEADER_ADDRESS] * 16)
    if not any(c.role.value == "ray-head" for c in launch.commands):
        pytest.skip("launch places this layout without Ray")
    bundle = deploy_manifests(doc, fmt="k8s", engine="vllm")
    lws = next(o for o in bundle.files[0].documents if o["kind"] == "LeaderWorkerSet")
    validate_k8s(lws)
    template = lws["spec"]["leaderWorkerTemplate"]
    leader = template["leaderTemplate"]["spec"]["containers"][0]["command"]
    worker = template["workerTemplate"]["spec"]["containers"][0]["command"]
    assert leader[2].startswith("ray start --head --port=6379 && until python3 -c")
    assert "exec vllm serve" in leader[2] and "--data-parallel-backend ray" in leader[2]
    assert worker == ["ray", "start", "--address=$(LWS_LEADER_ADDRESS):6379", "--block"]
    script = expand(leader[2], {"LWS_GROUP_SIZE": "16"})
    assert '"$LWS_GROUP_SIZE"' in script  # $$ is Kubernetes' escape: the shell reads the variable
    subprocess.run(["/bin/sh", "-n", "-c", script], check=True)  # the line parses as shell
    assert template["size"] == 16


def _halves(doc: dict) -> list[int]:
    layers = doc["scenario"]["model"]["num_hidden_layers"]
    return [layers - layers // 2, layers // 2]


def test_existing_file_is_refused_unless_force(tmp_path):
    name, out = "qwen3-30b-a3b-8xh100", tmp_path / "out"
    plan = str(plan_file(tmp_path, name))
    first = deploy(plan, "--scenario", name, "--out", str(out))
    assert first.exit_code == 0, first.output
    target = next(out.iterdir())
    target.write_text("mine\n")
    again = deploy(plan, "--scenario", name, "--out", str(out))
    assert again.exit_code == 2 and "already exist" in again.output and "--force" in again.output
    assert "Traceback" not in again.output
    assert target.read_text() == "mine\n"
    forced = deploy(plan, "--scenario", name, "--out", str(out), "--force")
    assert forced.exit_code == 0 and target.read_text() != "mine\n"


def test_out_that_is_a_file_is_refused(tmp_path):
    name = "qwen3-30b-a3b-8xh100"
    (tmp_path / "f").write_text("x")
    result = deploy(str(plan_file(tmp_path, name)), "--scenario", name, "--out", str(tmp_path / "f"))
    assert result.exit_code == 2 and "not a folder" in result.output


def test_trtllm_over_several_nodes_is_not_written():
    doc = document("deepseek-v3-8xb200-trtllm")
    doc["scenario"]["cluster"].update(num_nodes=2, gpus_per_node=4)
    with pytest.raises(NotExpressible, match="mpirun"):
        deploy_manifests(doc, fmt="k8s")


def test_amd_gpus_use_amd_resource_and_need_an_image():
    assert gpu_resource("mi300x") == "amd.com/gpu" and gpu_resource("AMD Instinct MI325X") == "amd.com/gpu"
    assert gpu_resource("h100-sxm") == "nvidia.com/gpu" and gpu_resource("b200") == "nvidia.com/gpu"
    doc = document("qwen3-30b-a3b-8xh100")
    doc["scenario"]["cluster"]["gpu"]["name"] = "mi300x"
    with pytest.raises(PlanError, match="ROCm"):
        deploy_manifests(doc, fmt="k8s")
    with pytest.raises(PlanError, match="AMD"):
        deploy_manifests(doc, fmt="compose", image="rocm/vllm:latest")
    bundle = deploy_manifests(doc, fmt="k8s", image="rocm/vllm:latest")
    deployment = next(o for o in bundle.files[0].documents if o["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"] == {"amd.com/gpu": "8"} and container["image"] == "rocm/vllm:latest"
    validate_k8s(deployment)


def test_names_are_dns_labels():
    made = resource_name(engine=LaunchEngine.SGLANG, scenario_name="Qwen3_235B.A22B-16xH100-sglang-deepep-extra")
    assert len(made) <= NAME_MAX and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", made)
    assert resource_name(engine=LaunchEngine.TRTLLM, scenario_name="3gpu") == "trtllm-3gpu"
    for bad in ("3gpu", "Big", "a_b", "x" * (NAME_MAX + 1), "end-"):
        with pytest.raises(PlanError, match="--name"):
            resource_name(engine=LaunchEngine.VLLM, scenario_name="s", name=bad)


@pytest.mark.parametrize("args, message", [
    (["--name", "Bad_Name"], "--name"),
    (["--image", "two words"], "--image"),
    (["--format", "compose", "--cache-pvc", "models"], "--cache-pvc"),
])
def test_bad_options_exit_2(tmp_path, args, message):
    name = "qwen3-30b-a3b-8xh100"
    result = deploy(str(plan_file(tmp_path, name)), "--scenario", name, "--out", str(tmp_path / "o"), *args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_cache_pvc_is_mounted(tmp_path):
    bundle = deploy_manifests(document("qwen3-30b-a3b-8xh100"), fmt="k8s", cache_pvc="models")
    deployment = next(o for o in bundle.files[0].documents if o["kind"] == "Deployment")
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["hf-cache"] == {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "models"}}
    validate_k8s(deployment)


def test_validation_catches_a_broken_manifest():
    """The validators are not vacuous: a wrong field type, an unknown field and a bad enum each fail."""
    bundle = deploy_manifests(document("deepseek-v3-32xh800"), fmt="k8s")
    lws = next(o for o in bundle.files[0].documents if o["kind"] == "LeaderWorkerSet")
    service = next(o for o in bundle.files[0].documents if o["kind"] == "Service")
    broken = copy.deepcopy(lws)
    broken["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "Sometimes"
    with pytest.raises(jsonschema.ValidationError):
        validate_k8s(broken)
    broken = copy.deepcopy(lws)
    broken["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0]["gpus"] = 8
    with pytest.raises(Exception, match="gpus"):
        validate_k8s(broken)
    broken = copy.deepcopy(service)
    broken["spec"]["ports"][0]["port"] = "eighty"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s(broken)
    compose = deploy_manifests(document("qwen3-30b-a3b-8xh100"), fmt="compose").files[0].documents[0]
    compose = copy.deepcopy(compose)
    next(iter(compose["services"].values()))["ipc"] = ["host"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(COMPOSE_SCHEMA).validate(compose)


@pytest.mark.parametrize("name", sorted(set(GOLDEN) - set(PLANNED)))
def test_a_scenario_without_a_plan_deploys_nothing(name, tmp_path):
    result = deploy("--scenario", name, "--out", str(tmp_path / "o"))
    assert result.exit_code == 1 and "no feasible plan" in result.output, result.output
    assert not (tmp_path / "o").exists()


def test_no_plan_path_solves_the_scenario(tmp_path):
    result = deploy("--scenario", "qwen3-30b-a3b-8xh100", "--out", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "vllm-qwen3-30b-a3b-8xh100.yaml").exists()


def test_worker_template_takes_only_index_valued_flags():
    def node(k: int, extra: str = "x") -> NodeCommand:
        return NodeCommand(node=k, instance=0, role=CommandRole.HEADLESS, gpus=(0, 1),
                           argv=("vllm", "serve", extra, "--node-rank", str(k), "--data-parallel-start-rank", str(4 * k)))
    template = worker_template([node(1), node(2), node(3)], engine=LaunchEngine.VLLM)
    assert [template.evaluate(k) for k in (1, 2, 3)] == [node(k).argv for k in (1, 2, 3)]
    with pytest.raises(NotExpressible, match="node 2"):
        worker_template([node(1), node(2, extra="y")], engine=LaunchEngine.VLLM)
    with pytest.raises(NotExpressible):  # a node rank that is not the pod's index
        worker_template([node(1), node(3)], engine=LaunchEngine.VLLM)
