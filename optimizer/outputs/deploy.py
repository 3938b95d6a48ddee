"""Deployment manifests for a plan: Kubernetes objects (``--format k8s``) or a Docker Compose file
(``--format compose``) that run the command lines of ``outputs/launch.py`` (``optimize launch``). Pure
functions of the plan JSON document; nothing is run or written here (the CLI writes the files).

What is written, per plan (engine instances as ``launch`` counts them; all instances alike):

- Every instance on one node: one ``apps/v1`` Deployment with ``replicas`` = instances (each replica is
  one independent engine server, as ``launch`` starts them) and a ``v1`` Service on the engine's HTTP
  port, which load-balances over the replicas. The update strategy replaces one pod at a time without a
  surge pod (``maxSurge: 0``): the plan uses every GPU, so a surge pod would never be scheduled.
- Instances over several nodes: one LeaderWorkerSet (``leaderworkerset.x-k8s.io/v1``, the Kubernetes API
  for multi-host inference, github.com/kubernetes-sigs/lws; the API vLLM's docs/deployment/frameworks/lws.md
  and LWS's docs/examples/{vllm,sglang} use) with ``replicas`` = instances and ``size`` = nodes per
  instance; pod index k of a group runs ``launch``'s command for the instance's node k (the leader, k = 0,
  runs the HTTP server), and a Service selects the leaders (label ``role: leader``, as in LWS's examples).
  Addresses and node ranks come from the variables LWS sets in every container
  (api/leaderworkerset/v1/leaderworkerset_types.go: ``LWS_LEADER_ADDRESS``, ``LWS_WORKER_INDEX``,
  ``LWS_GROUP_SIZE``), referenced as ``$(NAME)``, which Kubernetes expands in ``command``
  (kubernetes.io/docs/tasks/inject-data-application/define-interdependent-environment-variables; an
  unresolved ``$(...)`` is left as is, ``$$`` is a literal ``$``). A worker's value that is a multiple of
  its index (vLLM ``--data-parallel-start-rank`` = index x DP ranks per node) is computed by ``/bin/sh``
  arithmetic. Each worker command is checked, for every index, against the command ``launch`` gives
  that node (``_Template.evaluate``).
  - vLLM, one DP rank over several nodes: ``--nnodes --node-rank --master-addr``, ``--headless`` on the
    workers; several DP ranks, whole ranks per node: ``--data-parallel-address $(LWS_LEADER_ADDRESS)``
    and ``--data-parallel-start-rank`` = index x local DP ranks (the recipe of llm-d's
    guides/wide-ep-lws/manifests/modelserver/base/decode.yaml, which also probes ``/health``); DP ranks
    that span nodes: a Ray cluster per group (the leader runs
    ``ray start --head``, waits for ``LWS_GROUP_SIZE`` nodes, then ``vllm serve``; the workers run
    ``ray start --address=$(LWS_LEADER_ADDRESS):6379 --block``, as vLLM's LWS page does through its
    examples/online_serving/multi-node-serving.sh).
  - SGLang: ``--nnodes --node-rank $(LWS_WORKER_INDEX) --dist-init-addr $(LWS_LEADER_ADDRESS):20000``,
    as LWS's docs/examples/sglang/lws.yaml and SGLang's multi-node docs
    (docs.sglang.io references/multi_node_deployment) do.
  - TensorRT-LLM over several nodes (``mpirun -H ...`` over SSH from the first node) is not written:
    ``NotExpressible``.
- Every pod: the GPUs of its node's share (``nvidia.com/gpu``; ``amd.com/gpu`` for AMD Instinct MI
  GPUs, the resource names of NVIDIA's k8s-device-plugin and ROCm's k8s-device-plugin), ``/dev/shm`` as
  an ``emptyDir`` with ``medium: Memory`` (the engines' NCCL and multiprocessing need more than the
  64 MiB container default; vLLM's LWS and Kubernetes pages mount it so), the Hugging Face cache at
  ``/root/.cache/huggingface`` (``HF_HOME``; an ``emptyDir`` or an existing PersistentVolumeClaim),
  ``HF_TOKEN`` from the Secret ``hf-token`` (key ``token``, optional), and on the serving pod readiness,
  liveness and startup probes on ``GET /health`` at the engine's port: vLLM
  (vllm/entrypoints/openai/api_server.py, route ``/health``; docs/deployment/k8s.md probes it),
  SGLang (python/sglang/srt/entrypoints/http_server.py; docs basic_usage/native_api.md lists ``/health``),
  trtllm-serve (docs/source/commands/trtllm-serve.rst lists ``/health``). The startup probe allows an
  hour (360 x 10 s) for download and load; liveness then fails after 3 x 30 s without an answer.
- ``CUDA_VISIBLE_DEVICES`` from ``launch`` is dropped: the device plugin gives each pod its GPUs,
  numbered from 0. Which physical GPUs and nodes a pod gets is the scheduler's choice; the rank map
  maps onto pods as the ``optimizer/placement`` annotation says (pod k of a group = the instance's
  node k, with that node's GPUs in the engine's rank order), which is what the engines' rank order
  needs: a pod holds whole nodes' shares, and a group's pods are its nodes in node-rank order.
- TensorRT-LLM's ``--extra_llm_api_options`` file goes into a ConfigMap mounted at ``/etc/optimizer``.

Compose (one node only; compose-spec.io, schema/compose-spec.json): one service per instance, with the
exact GPUs of the plan's rank map reserved (``deploy.resources.reservations.devices``, driver
``nvidia``, ``device_ids``; docs.docker.com/compose/how-tos/gpu-support). Inside the container the
reserved GPUs are numbered 0.. in PCI bus order, so where the engine's rank order is not ascending
``CUDA_VISIBLE_DEVICES`` restates it in those numbers with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``. ``ipc: host``
(vLLM docs/deployment/docker.md: ``--ipc=host`` or ``--shm-size``), the HTTP port published, the HF cache
from ``~/.cache/huggingface``, and a healthcheck on ``/health`` with Python's ``urllib`` (every engine
image has Python; not every one has curl).

Images (overridable): ``vllm/vllm-openai:v0.33.0``, ``lmsysorg/sglang:v0.5.23``,
``nvcr.io/nvidia/tensorrt-llm/release:1.2.0``, the versions ``launch`` checked its flags against; the
tags follow each project's naming and were not pulled here. AMD GPUs need a ROCm image: ``image`` is
then required.

Raises: ``PlanError`` (bad input: a Megatron plan without a serving engine, compose for more than one
node, AMD GPUs without an image, a bad name), ``NotExpressible`` (the engine, or this writer, cannot run
the plan as planned), and whatever ``launch`` raises.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import yaml

from optimizer.errors import PlanError
from optimizer.inputs.catalog import is_amd_instinct
from optimizer.outputs.launch import (
    SGLANG_VERSION,
    TRTLLM_OPTIONS_FILE,
    TRTLLM_VERSION,
    VLLM_VERSION,
    CommandRole,
    LaunchEngine,
    LaunchPlan,
    NodeCommand,
    NotExpressible,
    launch_commands,
)

DEFAULT_IMAGES = {
    LaunchEngine.VLLM: f"vllm/vllm-openai:v{VLLM_VERSION}",
    LaunchEngine.SGLANG: f"lmsysorg/sglang:v{SGLANG_VERSION}",
    LaunchEngine.TRTLLM: f"nvcr.io/nvidia/tensorrt-llm/release:{TRTLLM_VERSION}.0",
}
HEALTH_PATH = "/health"  # every engine's liveness route (module docstring)
HF_CACHE_PATH = "/root/.cache/huggingface"  # huggingface_hub's default HF_HOME for root, as the engines' images run
CONFIG_PATH = "/etc/optimizer"  # where the engine's option files are mounted
HF_TOKEN_SECRET = "hf-token"  # Secret name, key "token" (optional: public models need none)
LEADER_ADDRESS = "$(LWS_LEADER_ADDRESS)"
WORKER_INDEX = "LWS_WORKER_INDEX"
# Flags whose value in a worker's command is a multiple of the worker's index (launch.py: the node rank
# of an instance's node, and vLLM's first DP rank on it). Each is checked against launch's commands.
INDEX_FLAGS = ("--node-rank", "--data-parallel-start-rank")
STARTUP_PERIOD_S, STARTUP_FAILURES = 10, 360  # an hour to download and load a checkpoint
LIVENESS_PERIOD_S, LIVENESS_FAILURES = 30, 3
READINESS_PERIOD_S = 10
NAME_MAX = 40  # LWS names its pods NAME-GROUP-INDEX and its headless Service NAME; pod names end up <= 63
_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


class _Dumper(yaml.SafeDumper):
    """YAML without anchors and aliases: a shared mapping is written out at each place (readers and
    ``kubectl`` accept aliases, but people edit these files)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def to_yaml(*documents: Mapping[str, Any]) -> str:
    """``documents`` as YAML, keys in the order built, no aliases; several are each opened by ``---``."""
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, explicit_start=len(documents) > 1, width=120)


class DeployFormat(StrEnum):
    K8S = "k8s"
    COMPOSE = "compose"


@dataclass(frozen=True)
class DeployFile:
    """One file to write: ``path`` relative to the output folder, its ``text``, and the objects in it
    (``documents``: the Kubernetes objects or the Compose mapping; empty for a plain file)."""

    path: str
    text: str
    documents: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class DeployBundle:
    """The files for one plan and format, and the notes (``launch``'s and this module's)."""

    format: DeployFormat
    engine: LaunchEngine
    name: str
    files: tuple[DeployFile, ...]
    notes: tuple[str, ...]


# ------------------------------------------------------------------------------------------- checks


def deploy_engine(plan_engine: str, requested: str | None) -> LaunchEngine:
    """The serving engine to deploy: ``requested``, else the plan's. ``PlanError`` for a Megatron plan
    without one (Megatron-Core trains; its plan has no server, but its layout can be served)."""
    choice = requested or plan_engine
    try:
        return LaunchEngine(choice)
    except ValueError:
        if choice == "megatron":
            raise PlanError("the plan's engine is megatron (Megatron-Core, a training framework): it has no server to "
                            "deploy; pass --engine vllm, sglang or tensorrt-llm to serve its layout on that engine (the "
                            "estimate stays Megatron's)", field="plan.engine") from None
        raise PlanError(f"unknown engine {choice!r}; expected one of {[e.value for e in LaunchEngine]}",
                        field="plan.engine") from None


def gpu_resource(gpu_name: str) -> str:
    """The device plugin's resource name: ``amd.com/gpu`` for AMD Instinct MI parts (``mi300x``, ``AMD
    Instinct MI325X``), else ``nvidia.com/gpu``."""
    return "amd.com/gpu" if is_amd_instinct(gpu_name) else "nvidia.com/gpu"


def resource_name(*, engine: LaunchEngine, scenario_name: str, name: str | None = None) -> str:
    """The objects' name: ``name`` checked, or ``<engine>-<scenario>`` made a DNS-1035 label (lower case,
    letters, digits and ``-``, starting with a letter) of at most ``NAME_MAX`` characters."""
    if name is not None:
        if len(name) > NAME_MAX or not _NAME.fullmatch(name):
            raise PlanError(f"{name!r} is not a valid name: lower-case letters, digits and '-', starting with a letter "
                            f"and ending with a letter or digit, at most {NAME_MAX} characters", field="--name")
        return name
    short = "trtllm" if engine is LaunchEngine.TRTLLM else engine.value
    made = re.sub(r"[^a-z0-9]+", "-", f"{short}-{scenario_name}".lower())[:NAME_MAX]
    return made.strip("-")


# ------------------------------------------------------------------------------------ command templates


@dataclass(frozen=True)
class _Index:
    """A token worth ``factor`` x the pod's index in its group."""

    factor: int


@dataclass(frozen=True)
class _Template:
    """A worker pod's command, the same for every index: fixed tokens and ``_Index`` tokens."""

    tokens: tuple[str | _Index, ...]

    def evaluate(self, index: int) -> tuple[str, ...]:
        """The command pod ``index`` runs (``$(LWS_LEADER_ADDRESS)`` left as is)."""
        return tuple(str(t.factor * index) if isinstance(t, _Index) else t for t in self.tokens)

    def container_command(self) -> list[str]:
        """As ``command`` of a container: the tokens, with ``$(LWS_WORKER_INDEX)`` for a factor of 1; a
        ``/bin/sh -c`` line with ``$$((LWS_WORKER_INDEX * f))`` (``$$``: a literal ``$`` for Kubernetes) for
        other factors."""
        if all(not isinstance(t, _Index) or t.factor == 1 for t in self.tokens):
            return [f"$({WORKER_INDEX})" if isinstance(t, _Index) else t for t in self.tokens]
        words = [f'"$$(({WORKER_INDEX} * {t.factor}))"' if isinstance(t, _Index) else shlex.quote(t) for t in self.tokens]
        return ["/bin/sh", "-c", "exec " + " ".join(words)]


def worker_template(commands: Sequence[NodeCommand], *, engine: LaunchEngine) -> _Template:
    """One template for the workers (pod indices 1..n-1) of a group: the command of pod 1 with the value of
    each ``INDEX_FLAGS`` flag replaced by index x (value at pod 1), then checked against every worker's
    command from ``launch``. ``NotExpressible`` if the workers differ otherwise."""
    first = list(commands[0].argv)
    tokens: list[str | _Index] = list(first)
    for pos, token in enumerate(first[:-1]):
        if token in INDEX_FLAGS and first[pos + 1].isdigit():
            tokens[pos + 1] = _Index(int(first[pos + 1]))
    template = _Template(tuple(tokens))
    for index, command in enumerate(commands, start=1):
        if template.evaluate(index) != command.argv or _env_list(command.env) != _env_list(commands[0].env):
            raise NotExpressible(f"the command of node {index} of an instance is not node 1's with its index: "
                                 f"{shlex.join(command.argv)}", engine=engine)
    return template


# --------------------------------------------------------------------------------------- the instances


@dataclass(frozen=True)
class _Group:
    """One instance's pods, from ``launch``: the leader's command (its env; with Ray, the ``ray start``
    line that precedes it), the worker template, GPUs per pod, and the placement text."""

    leader: NodeCommand
    ray_head: NodeCommand | None
    workers: tuple[NodeCommand, ...]
    gpus_per_pod: int
    pods: int


def _groups(launch: LaunchPlan) -> list[_Group]:
    """The instances of ``launch``, each as a leader and workers in node-rank order; ``NotExpressible``
    for commands that start ranks on other nodes (``mpirun -H``) or pods of unequal GPU counts."""
    by_instance: dict[int, list[NodeCommand]] = {}
    for command in launch.commands:
        if command.other_nodes:
            raise NotExpressible("an instance over several nodes starts through mpirun over SSH from its first node "
                                 "(trtllm-llmapi-launch); this writer makes no Kubernetes objects for that: run the "
                                 "`optimize launch` lines, or an MPI operator", engine=launch.engine)
        by_instance.setdefault(command.instance, []).append(command)
    groups = []
    for commands in by_instance.values():
        serve = [c for c in commands if c.role is CommandRole.SERVE]
        ray_head = next((c for c in commands if c.role is CommandRole.RAY_HEAD), None)
        workers = tuple(c for c in commands if c.role in (CommandRole.HEADLESS, CommandRole.RAY_WORKER))
        if len(serve) != 1:
            raise NotExpressible(f"expected one serving command per instance, got {len(serve)}", engine=launch.engine)
        leader_gpus = (ray_head or serve[0]).gpus
        sizes = {len(leader_gpus)} | {len(w.gpus) for w in workers}
        if len(sizes) != 1:
            raise NotExpressible(f"the nodes of an instance use different GPU counts {sorted(sizes)}; a group's pods "
                                 f"are alike", engine=launch.engine)
        groups.append(_Group(leader=serve[0], ray_head=ray_head, workers=workers, gpus_per_pod=len(leader_gpus),
                             pods=1 + len(workers)))
    shapes = {(g.pods, g.gpus_per_pod, len(g.leader.argv)) for g in groups}
    if len(shapes) != 1:
        raise NotExpressible("the instances differ in shape; one Deployment or LeaderWorkerSet runs alike replicas",
                             engine=launch.engine)
    return groups


def _placement(launch: LaunchPlan) -> str:
    """Pod -> the plan's node and GPUs (engine rank order), per instance: ``i0: pod0=n0[0,1] pod1=n1[0,1]``."""
    parts: dict[int, list[str]] = {}
    for command in launch.commands:
        if command.role in (CommandRole.SERVE, CommandRole.HEADLESS, CommandRole.RAY_WORKER) and command.gpus \
                or command.role is CommandRole.RAY_HEAD:
            pods = parts.setdefault(command.instance, [])
            pods.append(f"pod{len(pods)}=node{command.node}[{','.join(map(str, command.gpus))}]")
    return "; ".join(f"instance{i}: {' '.join(pods)}" for i, pods in sorted(parts.items()))


def _env_list(env: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """Container env: ``launch``'s variables without ``CUDA_VISIBLE_DEVICES`` (the device plugin picks the
    pod's GPUs), then the HF cache and token."""
    items: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in env if k != "CUDA_VISIBLE_DEVICES"]
    return items + [{"name": "HF_HOME", "value": HF_CACHE_PATH},
                    {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": HF_TOKEN_SECRET, "key": "token",
                                                                        "optional": True}}}]


def _options_path(argv: Sequence[str]) -> list[str]:
    """``argv`` with TensorRT-LLM's options file read from the ConfigMap's mount."""
    return [f"{CONFIG_PATH}/{TRTLLM_OPTIONS_FILE}" if a == TRTLLM_OPTIONS_FILE else a for a in argv]


def _port_of(argv: Sequence[str], engine: LaunchEngine) -> int:
    """The HTTP port of a serving command (launch always gives ``--port``)."""
    for flag, value in zip(argv, argv[1:]):
        if flag == "--port":
            return int(value)
    raise NotExpressible(f"no --port in {shlex.join(argv)}", engine=engine)


def _probes(port: int) -> dict[str, Any]:
    get = {"httpGet": {"path": HEALTH_PATH, "port": port}}
    return {
        "startupProbe": {**get, "periodSeconds": STARTUP_PERIOD_S, "failureThreshold": STARTUP_FAILURES},
        "readinessProbe": {**get, "periodSeconds": READINESS_PERIOD_S},
        "livenessProbe": {**get, "periodSeconds": LIVENESS_PERIOD_S, "failureThreshold": LIVENESS_FAILURES},
    }


@dataclass(frozen=True)
class _PodSettings:
    engine: LaunchEngine
    image: str
    gpu_resource: str
    gpus: int
    cache_pvc: str | None
    options_configmap: str | None  # the ConfigMap holding the engine's options file, if it reads one


def _pod_spec(s: _PodSettings, *, command: list[str], env: Sequence[tuple[str, str]], port: int | None) -> dict[str, Any]:
    """A pod spec with one container running ``command``; ``port``: the HTTP port to open and probe."""
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "hf-cache", "mountPath": HF_CACHE_PATH}]
    cache = ({"persistentVolumeClaim": {"claimName": s.cache_pvc}} if s.cache_pvc else {"emptyDir": {}})
    volumes = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}, {"name": "hf-cache", **cache}]
    if s.options_configmap:
        mounts.append({"name": "engine-options", "mountPath": CONFIG_PATH, "readOnly": True})
        volumes.append({"name": "engine-options", "configMap": {"name": s.options_configmap}})
    container: dict[str, Any] = {"name": "trtllm" if s.engine is LaunchEngine.TRTLLM else s.engine.value,
                                 "image": s.image, "command": command, "env": _env_list(env)}
    if port is not None:
        container["ports"] = [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        container.update(_probes(port))
    container["resources"] = {"limits": {s.gpu_resource: str(s.gpus)}}
    container["volumeMounts"] = mounts
    return {"containers": [container], "volumes": volumes}


def _ray_leader(ray_head: NodeCommand, serve: NodeCommand) -> list[str]:
    """``ray start --head``, a wait until every pod of the group has joined (``ray.nodes()``), then the
    ``vllm serve`` line (exec'd so it gets the container's signals)."""
    wait = ('import ray, sys; ray.init(address="auto"); '
            'sys.exit(sum(1 for n in ray.nodes() if n["Alive"]) < int(sys.argv[1]))')
    script = (f"{shlex.join(ray_head.argv)} && until python3 -c {shlex.quote(wait)} \"$$LWS_GROUP_SIZE\"; "
              f"do sleep 5; done && exec {shlex.join(serve.argv)}")
    return ["/bin/sh", "-c", script]


def _ray_worker(command: NodeCommand) -> list[str]:
    """A Ray worker that stays in the foreground (``--block``), as a container's main process must."""
    return [*command.argv, "--block"]


# ------------------------------------------------------------------------------------------ Kubernetes


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "inference-server",
            "app.kubernetes.io/managed-by": "optimizer"}


def kubernetes_manifests(document: Mapping[str, Any], *, engine: LaunchEngine, image: str | None = None,
                         name: str | None = None, cache_pvc: str | None = None) -> DeployBundle:
    """Kubernetes objects that run the plan in ``document`` (``optimize --json``) on ``engine``: a
    Deployment (instances on one node each) or a LeaderWorkerSet (instances over several nodes), a
    Service, and a ConfigMap for an options file; one YAML file ``<name>.yaml``.

    Args:
        document: the plan JSON document, parsed.
        engine: the engine to run (``deploy_engine``).
        image: container image; default ``DEFAULT_IMAGES[engine]`` (required for AMD GPUs).
        name: the objects' name (``resource_name``).
        cache_pvc: an existing PersistentVolumeClaim for the Hugging Face cache (ReadWriteMany if
            several pods share it); default an ``emptyDir`` per pod.

    Raises: see the module docstring.
    """
    nodes, gpu_name, scenario_name = _cluster(document)
    launch = launch_commands(document, engine=engine, node_addresses=[LEADER_ADDRESS] * nodes)
    name = resource_name(engine=engine, scenario_name=scenario_name, name=name)
    settings_image = _image(engine, image, gpu_name)
    groups = _groups(launch)
    group = groups[0]
    options = dict(launch.files)
    settings = _PodSettings(engine=engine, image=settings_image, gpu_resource=gpu_resource(gpu_name),
                            gpus=group.gpus_per_pod, cache_pvc=cache_pvc,
                            options_configmap=f"{name}-options" if options else None)
    port = _port_of(group.leader.argv, engine)
    labels = _labels(name)
    annotations = {"optimizer/plan": launch.title, "optimizer/placement": _placement(launch)}
    objects: list[dict[str, Any]] = []
    if options:
        objects.append({"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": f"{name}-options", "labels": labels}, "data": options})
    leader_argv = _options_path(group.leader.argv)
    if group.pods == 1:
        pod = _pod_spec(settings, command=leader_argv, env=group.leader.env, port=port)
        objects.append({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {"replicas": len(groups), "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
                     "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
                     "template": {"metadata": {"labels": labels}, "spec": pod}},
        })
        selector = {"app.kubernetes.io/name": name}
    else:
        if group.ray_head is not None:
            leader_cmd, worker_cmd = _ray_leader(group.ray_head, group.leader), _ray_worker(group.workers[0])
            for w in group.workers:
                if w.argv != group.workers[0].argv:
                    raise NotExpressible("Ray workers of one group differ", engine=engine)
        else:
            leader_cmd = leader_argv
            worker_cmd = worker_template(group.workers, engine=engine).container_command()
            worker_cmd = _options_path(worker_cmd)
        leader_pod = _pod_spec(settings, command=leader_cmd, env=group.leader.env, port=port)
        worker_pod = _pod_spec(settings, command=worker_cmd, env=group.workers[0].env, port=None)
        objects.append({
            "apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet",
            "metadata": {"name": name, "labels": labels, "annotations": annotations},
            "spec": {"replicas": len(groups),
                     "leaderWorkerTemplate": {
                         "size": group.pods, "restartPolicy": "RecreateGroupOnPodRestart",
                         "leaderTemplate": {"metadata": {"labels": {**labels, "role": "leader"}}, "spec": leader_pod},
                         "workerTemplate": {"metadata": {"labels": {**labels, "role": "worker"}}, "spec": worker_pod}}},
        })
        selector = {"app.kubernetes.io/name": name, "role": "leader"}
    objects.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
                    "spec": {"type": "ClusterIP", "selector": selector,
                             "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]}})
    notes = list(launch.notes) + _k8s_notes(name=name, groups=groups, port=port, lws=group.pods > 1,
                                            image_given=image is not None, cache_pvc=cache_pvc)
    header = [f"# {launch.title}", "# written by `optimize deploy --format k8s` (optimizer/outputs/deploy.py)",
              *[f"# note: {n}" for n in notes]]
    text = "\n".join(header) + "\n" + to_yaml(*objects)
    return DeployBundle(format=DeployFormat.K8S, engine=engine, name=name,
                        files=(DeployFile(path=f"{name}.yaml", text=text, documents=tuple(objects)),),
                        notes=tuple(notes))


def _cluster(document: Mapping[str, Any]) -> tuple[int, str, str]:
    """(nodes, GPU name, scenario name) of the document's scenario; ``PlanError`` if it has none."""
    try:
        scenario = document["scenario"]
        nodes, gpu = scenario["cluster"]["num_nodes"], scenario["cluster"]["gpu"]["name"]
        scenario_name = scenario["name"]
    except (KeyError, TypeError):
        raise PlanError("not a plan document: no scenario.cluster (num_nodes, gpu.name) and scenario.name",
                        source="<plan document>", field="scenario") from None
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise PlanError(f"expected an integer >= 1, got {nodes!r}", source="<plan document>",
                        field="scenario.cluster.num_nodes")
    return nodes, str(gpu), str(scenario_name)


def _image(engine: LaunchEngine, image: str | None, gpu_name: str) -> str:
    if image is not None:
        if not image.strip() or any(c.isspace() for c in image):
            raise PlanError(f"{image!r} is not an image reference (e.g. {DEFAULT_IMAGES[engine]})", field="--image")
        return image
    if gpu_resource(gpu_name) == "amd.com/gpu":
        raise PlanError(f"the cluster's GPU {gpu_name!r} is an AMD Instinct part and the default image "
                        f"{DEFAULT_IMAGES[engine]} is a CUDA build: pass --image with a ROCm build of {engine.value}",
                        field="--image")
    return DEFAULT_IMAGES[engine]


def _k8s_notes(*, name: str, groups: list[_Group], port: int, lws: bool, image_given: bool,
               cache_pvc: str | None) -> list[str]:
    kind = "LeaderWorkerSet" if lws else "Deployment"
    notes = [f"{kind} {name}: {len(groups)} replica(s) of {groups[0].pods} pod(s) x {groups[0].gpus_per_pod} GPU(s); "
             f"Service {name} port {port} balances over the replicas' servers"]
    if lws:
        notes.append("needs the LeaderWorkerSet controller (lws.sigs.k8s.io/docs/installation) and a pod network "
                     "that carries NCCL between nodes (RDMA/InfiniBand device plugins are cluster-specific)")
    if not image_given:
        notes.append("default image tag follows the engine's naming for the version launch checked; pin a digest "
                     "for production (--image)")
    if cache_pvc is None:
        notes.append("the Hugging Face cache is an emptyDir per pod: each pod downloads the weights; pass "
                     "--cache-pvc NAME to mount an existing PersistentVolumeClaim")
    notes.append(f"gated models: kubectl create secret generic {HF_TOKEN_SECRET} --from-literal=token=...")
    return notes


# ---------------------------------------------------------------------------------------------- Compose


def compose_manifest(document: Mapping[str, Any], *, engine: LaunchEngine, image: str | None = None,
                     name: str | None = None) -> DeployBundle:
    """A Docker Compose file (``compose.yaml``) running the plan in ``document`` on one host: one service
    per engine instance with the plan's GPUs reserved by id, and the options file beside it if the engine
    reads one.

    Raises:
        PlanError: the cluster has more than one node, or its GPUs are AMD's (NVIDIA device reservations).
        NotExpressible: as ``launch``.
    """
    nodes, gpu_name, scenario_name = _cluster(document)
    if nodes != 1:
        raise PlanError(f"a Compose file runs on one host and the plan's cluster has {nodes} nodes: use --format k8s",
                        field="--format")
    if gpu_resource(gpu_name) != "nvidia.com/gpu":
        raise PlanError(f"the Compose file reserves NVIDIA GPUs by id; {gpu_name!r} is an AMD part: use --format k8s",
                        field="--format")
    launch = launch_commands(document, engine=engine)
    name = resource_name(engine=engine, scenario_name=scenario_name, name=name)
    image = _image(engine, image, gpu_name)
    options = dict(launch.files)
    services: dict[str, Any] = {}
    for command in launch.commands:
        port = _port_of(command.argv, engine)
        env = {k: v for k, v in command.env if k != "CUDA_VISIBLE_DEVICES"}
        ordered = sorted(command.gpus)
        local = [ordered.index(g) for g in command.gpus]
        if local != list(range(len(local))):
            env |= {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(map(str, local))}
        env |= {"HF_HOME": HF_CACHE_PATH, "HF_TOKEN": "${HF_TOKEN:-}"}
        service: dict[str, Any] = {
            "image": image, "entrypoint": _options_path(command.argv), "environment": env, "ipc": "host",
            "ports": [f"{port}:{port}"], "volumes": [f"~/.cache/huggingface:{HF_CACHE_PATH}"],
            "deploy": {"resources": {"reservations": {"devices": [
                {"driver": "nvidia", "device_ids": [str(g) for g in ordered], "capabilities": ["gpu"]}]}}},
            "healthcheck": {"test": ["CMD", "python3", "-c", "import urllib.request; urllib.request.urlopen("
                                     f"'http://localhost:{port}{HEALTH_PATH}')"],
                            "interval": f"{LIVENESS_PERIOD_S}s", "timeout": "10s", "retries": LIVENESS_FAILURES,
                            "start_period": f"{STARTUP_PERIOD_S * STARTUP_FAILURES}s"},
            "restart": "unless-stopped",
        }
        if options:
            service["volumes"].append(f"./{TRTLLM_OPTIONS_FILE}:{CONFIG_PATH}/{TRTLLM_OPTIONS_FILE}:ro")
        services[f"{name}-{command.instance}"] = service
    compose = {"name": name, "services": services}
    notes = list(launch.notes) + [
        f"{len(services)} service(s) on this host's GPUs as the plan's rank map places them; `docker compose up -d` "
        f"in this folder (needs the NVIDIA Container Toolkit)",
        "HF_TOKEN is read from the environment (or an .env file) for gated models"]
    header = [f"# {launch.title}", "# written by `optimize deploy --format compose` (optimizer/outputs/deploy.py)",
              *[f"# note: {n}" for n in notes]]
    text = "\n".join(header) + "\n" + to_yaml(compose)
    files = [DeployFile(path="compose.yaml", text=text, documents=(compose,))]
    files += [DeployFile(path=path, text=body) for path, body in launch.files]
    return DeployBundle(format=DeployFormat.COMPOSE, engine=engine, name=name, files=tuple(files), notes=tuple(notes))


def deploy_manifests(document: Mapping[str, Any], *, fmt: DeployFormat | str, engine: str | None = None,
                     image: str | None = None, name: str | None = None, cache_pvc: str | None = None) -> DeployBundle:
    """``kubernetes_manifests`` or ``compose_manifest`` by ``fmt``, for ``engine`` (default: the plan's,
    ``deploy_engine``). ``cache_pvc`` is for Kubernetes only."""
    try:
        chosen_format = DeployFormat(fmt)
    except ValueError:
        raise PlanError(f"unknown format {fmt!r}; expected one of {[f.value for f in DeployFormat]}",
                        field="--format") from None
    plan = document.get("plan") if isinstance(document, Mapping) else None
    if not isinstance(plan, Mapping):
        raise PlanError("not a plan document: no 'plan' mapping", source="<plan document>", field="plan")
    chosen = deploy_engine(str(plan.get("engine", "")), engine)
    if chosen_format is DeployFormat.K8S:
        return kubernetes_manifests(document, engine=chosen, image=image, name=name, cache_pvc=cache_pvc)
    if cache_pvc is not None:
        raise PlanError("--cache-pvc is a Kubernetes volume; the Compose file mounts ~/.cache/huggingface",
                        field="--cache-pvc")
    return compose_manifest(document, engine=chosen, image=image, name=name)
