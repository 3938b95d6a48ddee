"""Launch commands for a plan: ``vllm serve``, SGLang ``launch_server`` and TensorRT-LLM ``trtllm-serve``
command lines, one per node and engine instance, with the environment (and files) each needs. Pure
functions of the plan JSON document (``optimize --json``, schema 3.x); nothing is run, printed or written.

What maps to what, per engine instance (``dp_i = DP / instances``; instances: one per EDP copy for a MoE
model, one per DP replica for a dense one, as ``report.instances`` counts them for vLLM):

- TP: vLLM ``--tensor-parallel-size TP``; SGLang ``--tp-size TP x dp_i`` (its TP group spans the
  attention-DP ranks; attention runs TP-way inside each).
- PP and the layer split: ``--pipeline-parallel-size`` / ``--pp-size``, with ``VLLM_PP_LAYER_PARTITION``
  / ``SGLANG_PP_LAYER_PARTITION`` set to ``layers_per_stage`` (otherwise each engine splits
  evenly and places the remainder by its own rule).
- DP inside an instance: vLLM ``--data-parallel-size dp_i`` (multi-node: ``--data-parallel-size-local``,
  ``--data-parallel-address``, ``--data-parallel-rpc-port``, ``--data-parallel-start-rank``,
  ``--headless``); SGLang ``--attn-dp-size dp_i``.
- EP, ETP: vLLM ``--enable-expert-parallel`` gives EP = TP x dp_i, ETP = 1, and without it ETP =
  TP x dp_i, EP = 1 (nothing else); SGLang ``--ep-size EP`` leaves ETP = TP x dp_i / EP.
- batch_per_replica: vLLM ``--max-num-seqs`` (per DP rank); SGLang ``--max-running-requests`` x dp_i
  (server-wide, divided over the attention-DP ranks); TensorRT-LLM ``--max_batch_size`` (per
  attention-DP rank).
- engine.max_num_batched_tokens: vLLM ``--max-num-batched-tokens`` (per DP rank); SGLang
  ``--chunked-prefill-size`` x dp_i (divided by the attention-DP size); TensorRT-LLM ``--max_num_tokens``.
- engine.chunked_prefill, where the scenario sets it against the launched engine's default (vLLM, SGLang:
  on; TensorRT-LLM: off): vLLM ``--no-enable-chunked-prefill``; SGLang ``--chunked-prefill-size=-1``;
  TensorRT-LLM ``enable_chunked_prefill: true`` in the options file.
- The longest request, ISL + OSL (tokens; every request has these lengths in a scenario), rounded up to a
  multiple of 256 unless the plan's KV cache per replica holds less: ``--max-model-len`` /
  ``--context-length`` / ``--max_seq_len``.
- search.gpu_memory_utilization: ``--gpu-memory-utilization`` / ``--mem-fraction-static`` (which
  counts weights and KV only: see the note it adds) / ``--kv_cache_free_gpu_memory_fraction``.
- workload.kv_cache_dtype fp8: ``--kv-cache-dtype fp8`` / ``--kv-cache-dtype fp8_e4m3`` / options
  file ``kv_cache_config: {dtype: fp8}``.

TensorRT-LLM 1.2 (PyTorch backend), per instance: ``--tp_size TP x dp_i``, ``--pp_size``, ``--ep_size
EP``; an ``--extra_llm_api_options`` YAML file (``LaunchPlan.files``) with ``enable_attention_dp`` (dp_i
> 1, which needs TP = 1), ``moe_tensor_parallel_size ETP`` and ``pp_partition`` (the layer split). An
instance over several nodes runs ``mpirun -H ... trtllm-llmapi-launch trtllm-serve`` on its first node.

Placement follows the plan's ``rank_map`` (order tp-dp-pp) where the engine can run it, picking each
node's GPUs with ``CUDA_VISIBLE_DEVICES`` in the engine's rank order (vLLM: tp, then pp, then DP rank;
SGLang: tp, then attention-DP rank, then pp; ``model/placement.py``); otherwise each instance takes
consecutive GPUs and a note says which process groups then sit on other nodes than the estimate assumed.
The search keeps only layouts whose rank map the plan's engine runs (``rules.EnginePlacement``), so the
note appears only for a plan launched with another engine than it was costed for, or written by hand.

Multi-node, one instance over several nodes:
- vLLM, one DP rank per instance: ``--nnodes --node-rank --master-addr --master-port``, ``--headless``
  on the other nodes (multiprocessing backend; docs/serving/parallelism_scaling.md, "Running vLLM with
  MultiProcessing", vllm-project/vllm#30509, Dec 2025).
- vLLM, several DP ranks, each inside one node: one ``vllm serve`` per node with its local DP ranks
  (docs/serving/data_parallel_deployment.md, "Internal Load Balancing").
- vLLM, DP ranks that each span nodes: a Ray cluster per instance and ``--data-parallel-backend ray``
  with ``VLLM_RAY_DP_PACK_STRATEGY=span`` (the same page: "When a single DP group requires multiple nodes").
- SGLang: the same command on every node with ``--nnodes --node-rank --dist-init-addr``
  (docs.sglang.io references/multi_node_deployment/multi_node).

Every flag and variable emitted is in ``FLAG_SOURCES`` with the file that defines it and the version it
was checked in: vLLM 0.33.0 and SGLang 0.5.23 (the wheels on PyPI, read for this module), TensorRT-LLM's
``commands/serve.py`` and ``llmapi/llm_args.py`` (the repository, read for this module), plus the docs
pages named there. Flags not emitted because they could not be confirmed, or on purpose:
- SGLang ``--enable-ep-moe``: removed (absent from 0.5.10 and 0.5.23); ``--ep-size`` replaces it.
- vLLM has no ``--expert-parallel-size``: EP is derived (EP = TP x DP with ``--enable-expert-parallel``).
- SGLang ``--enable-dp-attention``: deprecated since 0.5.22 (``--attn-dp-size`` replaces it, removal
  planned after 2026-12-31); emitted only with ``legacy_dp_attention=True`` for SGLang <= 0.5.21.
- ``--quantization``: only ``fp8`` for per-tensor FP8 weights from a checkpoint whose name does not say
  FP8 (online quantisation at load); every other quantised format is read from the checkpoint's config.

Raises (all ``OptimizerError``): ``PlanError`` when the document cannot be read, ``NotExpressible``
when the engine cannot run the plan as planned (the message says what it could run instead).
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import Any

from pydantic import ValidationError

from optimizer.errors import OptimizerError, PlanError
from optimizer.model.parallel import Layout, process_groups, rank_info
from optimizer.model.placement import Block, engine_order, instance_blocks, plan_rank, rank_map_blocks
from optimizer.inputs.scenario import DeepepMode, Dtype, EngineName, MoeA2aBackend, Scenario, SpeculativeMethod
from optimizer.units import ceil_div, human_bytes

VLLM_VERSION = "0.33.0"
SGLANG_VERSION = "0.5.23"
TRTLLM_VERSION = "1.2"

MAX_MODEL_LEN_MULTIPLE = 256  # a whole number of KV blocks for every block size the engines use (16..256)
VLLM_PORT = 8000  # vLLM's default HTTP port (FrontendArgs.port)
SGLANG_PORT = 30000  # SGLang's default HTTP port (fields/serving.py)
VLLM_MASTER_PORT = 29501  # vLLM's default --master-port (ParallelConfig.master_port)
VLLM_DP_RPC_PORT = 13345  # the value in data_parallel_deployment.md's examples
SGLANG_DIST_INIT_PORT = 20000  # the value in SGLang's multi-node docs; it derives 6+ ports above it
SGLANG_PORT_STRIDE = 100  # between instances' HTTP and dist-init ports: SGLang derives 6+ ports above each
RAY_PORT = 6379  # Ray's default head port
TRTLLM_PORT = 8000  # trtllm-serve's default --port (commands/serve.py)
TRTLLM_OPTIONS_FILE = "trtllm-extra-llm-api-options.yaml"  # the --extra_llm_api_options file launch writes


class LaunchEngine(StrEnum):
    VLLM = "vllm"
    SGLANG = "sglang"
    TRTLLM = "tensorrt-llm"


class CommandRole(StrEnum):
    SERVE = "serve"  # API server plus the engine processes of this node
    HEADLESS = "headless"  # engine processes only; the instance's API server runs on its first node
    RAY_HEAD = "ray-head"  # starts the instance's Ray cluster
    RAY_WORKER = "ray-worker"  # joins it


@dataclass(frozen=True)
class FlagSource:
    """Where a flag or environment variable is defined. ``program``: ``vllm``, ``sglang``, ``trtllm``
    (``trtllm-serve`` and ``trtllm-llmapi-launch``), ``trtllm-options`` (keys of the
    ``--extra_llm_api_options`` YAML file), ``mpirun``, ``ray`` or ``env``; ``source``: the file in the
    package (and the docs page); ``version``: the release checked."""

    program: str
    name: str
    source: str
    version: str


_V, _S = f"vllm {VLLM_VERSION}", f"sglang {SGLANG_VERSION}"
_VARGS = "vllm/engine/arg_utils.py (EngineArgs.add_cli_args)"
_VPAR = "vllm/engine/arg_utils.py ParallelConfig group; vllm/config/parallel.py"
_VDP = _VPAR + "; docs/serving/data_parallel_deployment.md"
_SPAR = "python/sglang/srt/arg_groups/fields/parallel.py (flag = '--' + field name, arg_utils.py)"
_SSCHED = "python/sglang/srt/arg_groups/fields/schedule.py"
_SMULTI = _SPAR + "; docs.sglang.io/references/multi_node_deployment/multi_node"
_T = f"tensorrt-llm {TRTLLM_VERSION} (NVIDIA/TensorRT-LLM main, commit 00209af, read for this module)"
_TSERVE = "tensorrt_llm/commands/serve.py (click options of `serve`, the default command of trtllm-serve)"
_TARGS = "tensorrt_llm/llmapi/llm_args.py BaseLlmArgs (a key of the --extra_llm_api_options YAML)"
_TMULTI = "docs/source/commands/trtllm-serve/trtllm-serve.rst, 'Multi-node Serving with Slurm'"
_MPI = "Open MPI mpirun(1) man page"

FLAG_SOURCES: tuple[FlagSource, ...] = (
    FlagSource("vllm", "serve", "vllm/entrypoints/cli/serve.py (subcommand; model is positional)", _V),
    FlagSource("vllm", "--tensor-parallel-size", _VPAR + "; docs/serving/parallelism_scaling.md", _V),
    FlagSource("vllm", "--pipeline-parallel-size", _VPAR + "; docs/serving/parallelism_scaling.md", _V),
    FlagSource("vllm", "--data-parallel-size", _VDP, _V),
    FlagSource("vllm", "--data-parallel-size-local", _VDP, _V),
    FlagSource("vllm", "--data-parallel-address", _VDP, _V),
    FlagSource("vllm", "--data-parallel-rpc-port", _VDP, _V),
    FlagSource("vllm", "--data-parallel-start-rank", _VDP, _V),
    FlagSource("vllm", "--data-parallel-backend", _VDP + " (mp or ray)", _V),
    FlagSource("vllm", "--headless", "vllm/entrypoints/common/cli_args.py; entrypoints/cli/serve.py run_headless; "
               "docs/serving/data_parallel_deployment.md, parallelism_scaling.md", _V),
    FlagSource("vllm", "--enable-expert-parallel", _VPAR + "; docs/serving/expert_parallel_deployment.md "
               "(EP = TP x DP); model_executor/layers/fused_moe/config.py FusedMoEParallelConfig.make", _V),
    FlagSource("vllm", "--all2all-backend", _VPAR + " (all2all_backend, default allgather_reducescatter; "
               "deepep_high_throughput, deepep_low_latency)", _V),
    FlagSource("vllm", "--enable-dbo", _VPAR + " (enable_dbo: dual batch overlap, default False)", _V),
    FlagSource("vllm", "--enable-eplb", _VPAR + " (enable_eplb, default False)", _V),
    FlagSource("vllm", "--eplb-config", _VPAR + " (EPLBConfig.num_redundant_experts, default 0; JSON)", _V),
    FlagSource("vllm", "--nnodes", _VPAR + "; docs/serving/parallelism_scaling.md (vllm-project/vllm#30509)", _V),
    FlagSource("vllm", "--node-rank", _VPAR + "; docs/serving/parallelism_scaling.md", _V),
    FlagSource("vllm", "--master-addr", _VPAR + "; docs/serving/parallelism_scaling.md", _V),
    FlagSource("vllm", "--master-port", _VPAR + " (default 29501)", _V),
    FlagSource("vllm", "--distributed-executor-backend", _VPAR + "; docs/serving/parallelism_scaling.md", _V),
    FlagSource("vllm", "--gpu-memory-utilization", "vllm/engine/arg_utils.py CacheConfig group", _V),
    FlagSource("vllm", "--kv-cache-dtype", "vllm/engine/arg_utils.py CacheConfig group; vllm/config/cache.py "
               "CacheDType (auto, fp8, ...)", _V),
    FlagSource("vllm", "--max-model-len", _VARGS + " ModelConfig group", _V),
    FlagSource("vllm", "--quantization", _VARGS + " ModelConfig group", _V),
    FlagSource("vllm", "--max-num-seqs", _VARGS + " SchedulerConfig group; data_parallel_deployment.md "
               "(per DP rank)", _V),
    FlagSource("vllm", "--max-num-batched-tokens", _VARGS + " SchedulerConfig group", _V),
    FlagSource("vllm", "--no-enable-chunked-prefill", _VARGS + " SchedulerConfig group (enable_chunked_prefill, a "
               "boolean optional flag; on by default in V1)", _V),
    FlagSource("vllm", "--port", "vllm/entrypoints/common/cli_args.py FrontendArgs.port", _V),
    FlagSource("sglang", "-m", "python/sglang/launch_server.py (python3 -m sglang.launch_server)", _S),
    FlagSource("sglang", "--model-path", "python/sglang/srt/arg_groups/fields/model.py", _S),
    FlagSource("sglang", "--tp-size", _SMULTI, _S),
    FlagSource("sglang", "--pp-size", _SPAR + "; docs/advanced_features/pipeline_parallelism.md", _S),
    FlagSource("sglang", "--attn-dp-size", _SPAR + " (new in 0.5.22, sgl-project/sglang#41818); "
               "arg_groups/parallel_hook.py", _S),
    FlagSource("sglang", "--dp-size", _SPAR + " (with --enable-dp-attention: the pre-0.5.22 spelling)", _S),
    FlagSource("sglang", "--enable-dp-attention", "python/sglang/srt/server_args.py (deprecated in 0.5.22, "
               "a regular flag in 0.5.10-0.5.21)", _S),
    FlagSource("sglang", "--ep-size", _SPAR + "; runtime_context.py derive_parallel_widths "
               "(moe_tp = tp_size / ep_size)", _S),
    FlagSource("sglang", "--moe-a2a-backend", "python/sglang/srt/server_args.py (moe_a2a_backend, default none)", _S),
    FlagSource("sglang", "--deepep-mode", "python/sglang/srt/server_args.py (deepep_mode, default auto); "
               "layers/moe/utils.py DeepEPMode", _S),
    FlagSource("sglang", "--enable-two-batch-overlap", "python/sglang/srt/server_args.py (default False)", _S),
    FlagSource("sglang", "--moe-dense-tp-size", "python/sglang/srt/server_args.py (moe_dense_tp_size: None or 1, the "
               "dense MLP's TP; used by the large-scale EP recipe, lmsys.org/blog/2025-05-05-large-scale-ep)", _S),
    FlagSource("sglang", "--enable-dp-lm-head", "python/sglang/srt/server_args.py (default False); models/deepseek_v2.py "
               "(use_attn_tp_group=enable_dp_lm_head)", _S),
    FlagSource("sglang", "--ep-num-redundant-experts", "python/sglang/srt/server_args.py (default 0); "
               "eplb/expert_location.py ((E + R) % ep_size == 0)", _S),
    FlagSource("sglang", "--nnodes", _SMULTI, _S),
    FlagSource("sglang", "--node-rank", _SMULTI, _S),
    FlagSource("sglang", "--dist-init-addr", _SMULTI, _S),
    FlagSource("sglang", "--mem-fraction-static", _SSCHED, _S),
    FlagSource("sglang", "--max-running-requests", _SSCHED + "; model_executor/pool_configurator.py "
               "(divided by attn_dp_size)", _S),
    FlagSource("sglang", "--chunked-prefill-size", _SSCHED + "; arg_groups/parallel_hook.py "
               "handle_data_parallelism (divided by attn_dp_size)", _S),
    FlagSource("sglang", "--context-length", "python/sglang/srt/arg_groups/fields/model.py", _S),
    FlagSource("sglang", "--kv-cache-dtype", "python/sglang/srt/arg_groups/fields/model.py "
               "(choices auto, fp8_e5m2, fp8_e4m3, bf16, ...)", _S),
    FlagSource("sglang", "--quantization", "python/sglang/srt/arg_groups/fields/model.py; "
               "arg_groups/choices.py QUANTIZATION_CHOICES", _S),
    FlagSource("sglang", "--host", "python/sglang/srt/arg_groups/fields/serving.py (default 127.0.0.1)", _S),
    FlagSource("sglang", "--port", "python/sglang/srt/arg_groups/fields/serving.py", _S),
    FlagSource("trtllm", "trtllm-serve", _TSERVE + "; setup.py console script (model is positional; `serve` is the "
               "default subcommand, DefaultGroup)", _T),
    FlagSource("trtllm", "--backend", _TSERVE + " (pytorch, the default, is the backend the engine profile "
               "models)", _T),
    FlagSource("trtllm", "--tp_size", _TSERVE + " (alias of --tensor_parallel_size)", _T),
    FlagSource("trtllm", "--pp_size", _TSERVE + " (alias of --pipeline_parallel_size)", _T),
    FlagSource("trtllm", "--ep_size", _TSERVE + " (alias of --moe_expert_parallel_size)", _T),
    FlagSource("trtllm", "--max_batch_size", _TSERVE + " ('Maximum number of requests that the engine can schedule')",
               _T),
    FlagSource("trtllm", "--max_num_tokens", _TSERVE + " (batched input tokens per iteration)", _T),
    FlagSource("trtllm", "--max_seq_len", _TSERVE + " ('Maximum total length of one request, including prompt and "
               "outputs')", _T),
    FlagSource("trtllm", "--kv_cache_free_gpu_memory_fraction", _TSERVE + " (alias of --free_gpu_memory_fraction: "
               "KvCacheConfig.free_gpu_memory_fraction)", _T),
    FlagSource("trtllm", "--extra_llm_api_options", _TSERVE + " (alias --config: a YAML file that overrides the "
               "flags, llmapi/llm_utils.py update_llm_args_with_extra_dict)", _T),
    FlagSource("trtllm", "--host", _TSERVE + " (default localhost)", _T),
    FlagSource("trtllm", "--port", _TSERVE + " (default 8000)", _T),
    FlagSource("trtllm", "trtllm-llmapi-launch", "tensorrt_llm/llmapi/trtllm-llmapi-launch (script); " + _TMULTI, _T),
    FlagSource("trtllm-options", "enable_chunked_prefill", _TARGS + " (default False; features/long-sequence.md "
               "'Chunked Context')", _T),
    FlagSource("trtllm-options", "enable_attention_dp", _TARGS + "; _torch/modules/attention.py", _T),
    FlagSource("trtllm-options", "moe_tensor_parallel_size", _TARGS + "; mapping.py (moe_tp x moe_ep = tp_size)", _T),
    FlagSource("trtllm-options", "pp_partition", _TARGS + " ('a list of each rank's layer number', prototype)", _T),
    FlagSource("trtllm-options", "kv_cache_config", _TARGS + "; KvCacheConfig.dtype ('auto' or e.g. fp8, PyTorch "
               "backend) and .free_gpu_memory_fraction", _T),
    FlagSource("vllm", "--speculative-config", "vllm/config/speculative.py SpeculativeConfig (JSON: method in "
               "SpeculativeMethod, num_speculative_tokens, model); docs/features/speculative_decoding/", _V),
    FlagSource("sglang", "--speculative-algorithm", "python/sglang/srt/server_args.py (EAGLE, EAGLE3, NGRAM, STANDALONE; "
               "MTP models "
               "run EAGLE with their own NextN layers); docs/advanced_features/speculative_decoding.md", _S),
    FlagSource("sglang", "--speculative-num-steps", "python/sglang/srt/server_args.py (draft forward passes per step)", _S),
    FlagSource("sglang", "--speculative-eagle-topk", "python/sglang/srt/server_args.py (branching per draft step; 1: a "
               "chain)", _S),
    FlagSource("sglang", "--speculative-num-draft-tokens", "python/sglang/srt/server_args.py (tokens verified per step; "
               "num_steps + 1 for a chain)", _S),
    FlagSource("sglang", "--speculative-draft-model-path", "python/sglang/srt/server_args.py (the EAGLE head)", _S),
    FlagSource("vllm", "--kv-offloading-size", "vllm/engine/arg_utils.py CacheConfig group; vllm/config/cache.py "
               "(kv_offloading_size: GiB, summed over the TP ranks)", _V),
    FlagSource("vllm", "--kv-offloading-backend", "vllm/config/cache.py (native: OffloadingConnector to CPU; lmcache)", _V),
    FlagSource("sglang", "--enable-hierarchical-cache", "python/sglang/srt/server_args.py (HiCache: host-memory tier under "
               "RadixAttention); docs/advanced_features/hicache_best_practices.md", _S),
    FlagSource("sglang", "--hicache-size", "python/sglang/srt/server_args.py (host pool in GB, overrides --hicache-ratio); "
               "docs/advanced_features/hicache_best_practices.md", _S),
    FlagSource("trtllm-options", "speculative_config", _TARGS + " (decoding_type MTP with num_nextn_predict_layers, "
               "Eagle3, DraftTarget or NGram with max_draft_len, speculative_model; docs/source/features/speculative-decoding.md)", _T),
    FlagSource("mpirun", "-H", _MPI + " (--host host:slots,...); " + _TMULTI, "Open MPI 4.1 / 5.0"),
    FlagSource("mpirun", "-n", _MPI + " (number of processes)", "Open MPI 4.1 / 5.0"),
    FlagSource("mpirun", "-x", _MPI + " (export an environment variable to every process)", "Open MPI 4.1 / 5.0"),
    FlagSource("ray", "start", "docs.ray.io cluster/vms/user-guides/launching-clusters/on-premises",
               "ray (docs, latest)"),
    FlagSource("ray", "--head", "docs.ray.io cluster/cli (ray start)", "ray (docs, latest)"),
    FlagSource("ray", "--port", "docs.ray.io cluster/cli (ray start; default 6379)", "ray (docs, latest)"),
    FlagSource("ray", "--address", "docs.ray.io cluster/cli (ray start)", "ray (docs, latest)"),
    FlagSource("env", "CUDA_VISIBLE_DEVICES", "CUDA; used as in data_parallel_deployment.md (external LB)",
               "CUDA"),
    FlagSource("env", "VLLM_PP_LAYER_PARTITION", "vllm/envs.py; vllm/distributed/utils.py get_pp_indices "
               "(comma-separated layers per stage; must sum to num_hidden_layers)", _V),
    FlagSource("env", "VLLM_RAY_DP_PACK_STRATEGY", "vllm/envs.py (strict, fill, span); "
               "docs/serving/data_parallel_deployment.md", _V),
    FlagSource("env", "SGLANG_PP_LAYER_PARTITION", "python/sglang/srt/distributed/utils.py get_pp_indices "
               "(present in 0.5.10 and 0.5.23)", _S),
)


class NotExpressible(OptimizerError):
    """The plan is sound, but ``engine`` cannot run it as planned. The message says what it could run."""

    def __init__(self, message: str, *, engine: LaunchEngine):
        self.engine = engine
        super().__init__(f"{engine.value}: {message}")


@dataclass(frozen=True)
class NodeCommand:
    """One command on one node. ``node``: cluster node index; ``instance``: engine instance index;
    ``gpus``: the node-local GPU indices this command brings into the deployment, in the engine's rank
    order (empty for the ``vllm serve`` of a Ray cluster, whose GPUs the ``ray start`` lines bring);
    ``other_nodes``: (node, GPUs) that the same command starts ranks on elsewhere (``mpirun -H``)."""

    node: int
    instance: int
    role: CommandRole
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    gpus: tuple[int, ...] = ()
    other_nodes: tuple[tuple[int, tuple[int, ...]], ...] = ()

    @property
    def shell(self) -> str:
        """The command as one shell line: ``NAME=value ... argv``, quoted with ``shlex``."""
        prefix = [f"{name}={shlex.quote(value)}" for name, value in self.env]
        return " ".join([*prefix, shlex.join(self.argv)])


@dataclass(frozen=True)
class LaunchPlan:
    """The commands for one engine, in start order (Ray heads, then Ray workers, then the servers), the
    notes (what the user must fill in and what the engine cannot express exactly) and the files the
    commands read, as (path, text)."""

    engine: LaunchEngine
    title: str
    model: str
    commands: tuple[NodeCommand, ...]
    notes: tuple[str, ...]
    files: tuple[tuple[str, str], ...] = ()

    def render(self) -> str:
        """Shell text: the title and notes as comments, each file as a ``cat > PATH <<'EOF'`` block, then
        each command under a comment naming its node."""
        lines = [f"# {self.title}"] + [f"# note: {note}" for note in self.notes]
        for path, text in self.files:
            lines += ["", f"# file {path}, read by the commands below", f"cat > {shlex.quote(path)} <<'EOF'",
                      *text.splitlines(), "EOF"]
        for cmd in self.commands:
            gpus = f", GPUs {','.join(map(str, cmd.gpus))}" if cmd.gpus else ""
            gpus += "".join(f"; node {node}, GPUs {','.join(map(str, g))}" for node, g in cmd.other_nodes)
            lines += ["", f"# node {cmd.node}, instance {cmd.instance} ({cmd.role.value}{gpus})", cmd.shell]
        return "\n".join(lines) + "\n"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "engine": self.engine.value,
            "title": self.title,
            "model": self.model,
            "notes": list(self.notes),
            "files": {path: text for path, text in self.files},
            "commands": [{"node": c.node, "instance": c.instance, "role": c.role.value, "argv": list(c.argv),
                          "env": dict(c.env), "gpus": list(c.gpus), "shell": c.shell,
                          "other_nodes": {str(node): list(g) for node, g in c.other_nodes}} for c in self.commands],
        }


# ---------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Plan:
    scenario: Scenario
    layout: Layout
    batch_per_replica: int
    layers_per_stage: tuple[int, ...]
    costed_for: str
    instances: int | None
    model: str
    model_note: str | None
    kv_capacity_tokens: int | None = None  # the document's memory.kv_cache_capacity_tokens (per replica)


_HF_REPO = re.compile(r"huggingface\.co/([A-Za-z0-9][\w.-]*/[\w.-]+)")


def model_reference(*, name: str, source: str | None) -> tuple[str, str | None]:
    """The Hugging Face repo id from ``source`` (``huggingface.co/OWNER/NAME/config.json; ...``), or
    ``name`` and a note saying that it is not one."""
    match = _HF_REPO.search(source or "")
    if match:
        return match.group(1), None
    return name, (f"model {name!r} is the scenario's model name, not a Hugging Face repo id (model.source "
                  f"{source!r} names none): replace it with the checkpoint's repo id or local path")


def _int_field(section: Mapping[str, Any], key: str, *, minimum: int = 1) -> int:
    value = section.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PlanError(f"expected an integer >= {minimum}, got {value!r}", source="<plan document>",
                        field=f"plan.{key}")
    return value


def _one_host_per_node(p: _Plan, engine: LaunchEngine) -> None:
    """``NotExpressible`` when the scenario's node is an NVLink domain of several hosts (``cluster.gpus_per_host``
    below ``gpus_per_node``: a GB200/GB300 NVL72 rack is 18 compute trays of 4 GPUs): the command lines here
    are one per node, and a node of 72 GPUs is not one machine an engine process (or a Kubernetes pod) can own."""
    cluster = p.scenario.cluster
    host = cluster.gpus_per_host
    if host is not None and host < cluster.gpus_per_node:
        raise NotExpressible(
            f"a node of {cluster.gpu.name} here is an NVLink domain of {cluster.gpus_per_node // host} hosts x {host} GPUs "
            f"(cluster.gpus_per_host); launch and deploy write one engine process per node and cannot place ranks "
            f"per host yet: start TP {p.layout.tp} PP {p.layout.pp} DP {p.layout.dp} EP {p.layout.ep} with the engine's "
            f"multi-node launch over the hosts by hand", engine=engine)


def _read(document: Mapping[str, Any]) -> _Plan:
    """The scenario (validated) and the plan's sizes from a plan document; ``PlanError`` if unreadable."""
    if not isinstance(document, Mapping) or not isinstance(document.get("plan"), Mapping):
        raise PlanError("not a plan document: no 'plan' mapping", source="<plan document>", field="plan")
    try:
        scenario = Scenario.model_validate(document.get("scenario"))
    except ValidationError as exc:
        first = exc.errors()[0]
        raise PlanError(f"the embedded scenario is invalid: {first['msg']}", source="<plan document>",
                        field=".".join(["scenario", *map(str, first["loc"])])) from exc
    plan = document["plan"]
    layout = Layout(**{k: _int_field(plan, k) for k in ("tp", "pp", "dp", "ep", "etp", "edp")})
    layers = plan.get("layers_per_stage")
    if not isinstance(layers, list) or not all(isinstance(n, int) and n > 0 for n in layers):
        raise PlanError(f"expected a list of positive layer counts, got {layers!r}", source="<plan document>",
                        field="plan.layers_per_stage")
    cluster, model = scenario.cluster, scenario.model
    if layout.gpus != cluster.num_gpus:
        raise PlanError(f"TP x PP x DP = {layout.gpus}, the cluster has {cluster.num_gpus} GPUs",
                        source="<plan document>", field="plan")
    if model.is_moe and layout.moe_gpus != cluster.num_gpus:
        raise PlanError(f"ETP x EP x EDP x PP = {layout.moe_gpus}, the cluster has {cluster.num_gpus} GPUs",
                        source="<plan document>", field="plan")
    if len(layers) != layout.pp or sum(layers) != model.num_hidden_layers:
        raise PlanError(f"layers_per_stage {layers} must have PP = {layout.pp} entries summing to "
                        f"num_hidden_layers = {model.num_hidden_layers}", source="<plan document>",
                        field="plan.layers_per_stage")
    repo, note = model_reference(name=model.name, source=model.source)
    memory = document.get("memory")
    capacity = memory.get("kv_cache_capacity_tokens") if isinstance(memory, Mapping) else None
    return _Plan(scenario=scenario, layout=layout, batch_per_replica=_int_field(plan, "batch_per_replica"),
                 layers_per_stage=tuple(layers), costed_for=str(plan.get("engine", scenario.engine.name.value)),
                 instances=plan.get("instances") if isinstance(plan.get("instances"), int) else None,
                 model=repo, model_note=note,
                 kv_capacity_tokens=capacity if isinstance(capacity, int) and not isinstance(capacity, bool) else None)


# -------------------------------------------------------------------------------------- instances, GPUs


@dataclass(frozen=True)
class _Instance:
    index: int
    blocks: tuple[Block, ...]  # one per node, in node-rank order (the first is the head)
    ray: bool = False  # placement left to Ray (vLLM, DP ranks that span nodes)

    @property
    def head(self) -> int:
        return self.blocks[0].node


def instance_count(plan_layout: Layout, *, is_moe: bool) -> int:
    """Engine instances: one per EDP copy for a MoE model (its experts live inside one instance's
    TP x DP GPUs), one per DP replica for a dense model. Same for vLLM, SGLang and TensorRT-LLM."""
    return plan_layout.edp if is_moe else plan_layout.dp


def _place(engine: LaunchEngine, p: _Plan, *, n_inst: int, dp_i: int) -> tuple[tuple[_Instance, ...], str | None]:
    """Each instance's nodes and GPUs, and None if they follow the plan's rank map, else why not. Tries
    the rank map (``placement.rank_map_blocks``), then consecutive GPUs per instance, then (vLLM) a Ray
    cluster per instance. The search keeps only layouts whose rank map the engine runs (rules.py
    ``EnginePlacement``), so a plan costed for this engine takes the first."""
    layout, gpn, kind = p.layout, p.scenario.cluster.gpus_per_node, EngineName(engine.value)
    mapped, why_not = rank_map_blocks(kind, layout, gpus_per_node=gpn, n_inst=n_inst, dp_i=dp_i)
    if mapped is not None:
        return tuple(_Instance(index=i, blocks=blocks) for i, blocks in enumerate(mapped)), None
    replica, size = layout.tp * layout.pp, layout.tp * layout.pp * dp_i
    placed = []
    for i in range(n_inst):
        blocks, _ = instance_blocks(kind, [divmod(r, gpn) for r in range(i * size, (i + 1) * size)],
                                    layout=layout, dp_i=dp_i)
        if blocks is None:
            break
        placed.append(_Instance(index=i, blocks=blocks))
    else:
        return tuple(placed), why_not
    if engine is LaunchEngine.VLLM and replica % gpn == 0 and dp_i > 1:
        nodes_per = size // gpn
        return tuple(_Instance(index=i, ray=True, blocks=tuple(
            Block(node=n, gpus=tuple(range(gpn))) for n in range(i * nodes_per, (i + 1) * nodes_per)))
            for i in range(n_inst)), why_not
    raise NotExpressible(
        f"an instance of TP x PP x DP/instances = {layout.tp} x {layout.pp} x {dp_i} = {size} GPUs cannot be laid "
        f"out on nodes of {gpn} GPUs: {why_not}. Expressible: instances of a size that divides {gpn}, or a "
        f"multiple of {gpn} made of whole TP x PP = {replica} replicas per node", engine=engine)


def _placement_note(engine: LaunchEngine, p: _Plan, instances: tuple[_Instance, ...], dp_i: int, why_not: str) -> str:
    """What differs from the plan's rank map: the process groups that change between inside one node
    and across nodes (the estimate assumed the rank map)."""
    layout, gpn = p.layout, p.scenario.cluster.gpus_per_node
    if any(inst.ray for inst in instances):
        return (f"{engine.value} cannot follow the plan's rank_map ({why_not}) and each DP rank of TP x PP = "
                f"{layout.tp * layout.pp} GPUs spans nodes: Ray places the DP ranks "
                f"(VLLM_RAY_DP_PACK_STRATEGY=span), so which groups cross nodes is Ray's choice; the estimate "
                f"assumed the rank map")
    node_of = {}
    order = engine_order(EngineName(engine.value), layout, dp_i)
    for inst in instances:
        slots = [block.node for block in inst.blocks for _ in block.gpus]
        for coord, node in zip(order, slots):
            node_of[plan_rank(layout, instance=inst.index, dp_i=dp_i, coord=coord)] = node
    changes = []
    for kind, groups in process_groups(layout=layout).items():
        if kind in ("ep", "etp") and not p.scenario.model.is_moe:
            continue
        planned = [len({rank_info(rank=r, layout=layout, gpus_per_node=gpn).node for r in g}) > 1 for g in groups]
        here = [len({node_of[r] for r in g}) > 1 for g in groups]
        out = sum(1 for a, b in zip(planned, here) if b and not a)
        back = sum(1 for a, b in zip(planned, here) if a and not b)
        if out:
            changes.append(f"{out} of {len(groups)} {kind.upper()} groups cross nodes here but not in the plan")
        if back:
            changes.append(f"{back} of {len(groups)} {kind.upper()} groups stay inside a node here but cross nodes "
                           f"in the plan")
    moved = sum(1 for r, node in node_of.items() if rank_info(rank=r, layout=layout, gpus_per_node=gpn).node != node)
    detail = "; ".join(changes) if changes else "no process group changes between inside a node and across nodes"
    return (f"{engine.value} cannot follow the plan's rank_map ({why_not}), so each instance takes consecutive "
            f"GPUs in {engine.value}'s rank order: {moved} of {layout.gpus} ranks sit on another node than in the "
            f"rank map ({detail}); the estimate assumed the rank map")


# ----------------------------------------------------------------------------------------- shared flags


def decimal_text(value: Fraction, *, places: int = 4) -> str:
    """``Fraction(9, 10)`` -> ``'0.9'``; a value with more decimals is rounded down (less memory asked)."""
    scaled = value.numerator * 10**places // value.denominator
    whole, frac = divmod(scaled, 10**places)
    return f"{whole}.{frac:0{places}d}".rstrip("0").rstrip(".") if frac else str(whole)


def max_model_len(scenario: Scenario, *, kv_capacity_tokens: int | None = None) -> int:
    """The longest request the scenario allows, in tokens: ISL + OSL (``workload.input_tokens`` and
    ``output_tokens`` are every request's lengths, not averages; the scenario states no longer request),
    rounded up to a multiple of ``MAX_MODEL_LEN_MULTIPLE`` unless that would exceed ``kv_capacity_tokens``
    (one replica's KV cache, ``memory.kv_cache_capacity_tokens`` of the plan): vLLM refuses to start when
    one request of the maximum length does not fit its KV cache (v1/core/kv_cache_utils.py
    ``check_enough_kv_cache_memory``), so then ISL + OSL exactly."""
    tokens = scenario.workload.max_sequence_tokens
    rounded = ceil_div(tokens, MAX_MODEL_LEN_MULTIPLE) * MAX_MODEL_LEN_MULTIPLE
    return tokens if kv_capacity_tokens is not None and kv_capacity_tokens < rounded else rounded


def _length_note(engine: LaunchEngine, p: _Plan) -> str:
    flag = {LaunchEngine.VLLM: "--max-model-len", LaunchEngine.SGLANG: "--context-length",
            LaunchEngine.TRTLLM: "--max_seq_len"}[engine]
    work, length = p.scenario.workload, max_model_len(p.scenario, kv_capacity_tokens=p.kv_capacity_tokens)
    note = (f"{flag} {length} covers the longest request the scenario allows: ISL {work.input_tokens} + OSL "
            f"{work.output_tokens} = {work.max_sequence_tokens} tokens (workload.input_tokens and output_tokens are "
            f"every request's lengths, not averages)")
    if length != work.max_sequence_tokens:
        note += f", rounded up to a multiple of {MAX_MODEL_LEN_MULTIPLE}"
    return note + "; the engine rejects longer requests, so raise both and re-plan if requests can be longer"


_KV_DTYPE = {LaunchEngine.VLLM: "fp8", LaunchEngine.SGLANG: "fp8_e4m3", LaunchEngine.TRTLLM: "fp8"}
_CHECKPOINT_QUANTISED = (Dtype.FP8_BLOCK, Dtype.INT8, Dtype.INT4, Dtype.MXFP4, Dtype.NVFP4)


def _dtype_flags(engine: LaunchEngine, p: _Plan) -> tuple[list[str], list[str]]:
    """(flags, notes) for the KV cache and weight formats. TensorRT-LLM takes an FP8 KV cache in its
    options file (``kv_cache_config.dtype``, see ``_trtllm_options``) and has no online quantisation flag."""
    work = p.scenario.workload
    flags, notes = [], []
    if work.kv_cache_dtype is Dtype.FP8 and engine is not LaunchEngine.TRTLLM:
        flags += ["--kv-cache-dtype", _KV_DTYPE[engine]]
    elif work.kv_cache_dtype not in (Dtype.BF16, Dtype.FP16, Dtype.FP8):
        raise NotExpressible(f"workload.kv_cache_dtype={work.kv_cache_dtype.value} has no --kv-cache-dtype "
                             f"equivalent here; expressible: bf16/fp16 (the model's dtype) or fp8", engine=engine)
    weights = {work.weight_dtype} | ({work.expert_weight_dtype} if work.expert_weight_dtype else set())
    online = engine is not LaunchEngine.TRTLLM  # TensorRT-LLM reads quantised (ModelOpt) checkpoints only
    if online and weights == {Dtype.FP8} and "fp8" not in p.model.lower():  # online FP8 quantises every linear layer
        flags += ["--quantization", "fp8"]
        notes.append(f"weights fp8: --quantization fp8 quantises a BF16 checkpoint to FP8 at load; drop it if "
                     f"{p.model} is already an FP8 checkpoint (the engine reads its quantization_config)")
    quantised = any(d in _CHECKPOINT_QUANTISED or d is Dtype.FP8 for d in weights)
    if quantised and "--quantization" not in flags:
        formats = f"weights {work.weight_dtype.value}" + (
            f", expert weights {work.expert_weight_dtype.value}" if work.expert_weight_dtype else "")
        notes.append(f"{formats}: no --quantization flag; the engine reads the format from the checkpoint's "
                     f"config.json quantization_config, so {p.model} must be a checkpoint stored in that format "
                     f"(DeepSeek-V3 ships FP8 block weights, gpt-oss MXFP4 experts)")
    return flags, notes


def _env(block: Block, gpn: int, extra: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """``CUDA_VISIBLE_DEVICES`` unless the block is the whole node in order, then ``extra``."""
    visible = [] if block.gpus == tuple(range(gpn)) else [("CUDA_VISIBLE_DEVICES", ",".join(map(str, block.gpus)))]
    return tuple(visible + extra)


def _addresses(num_nodes: int, node_addresses: Sequence[str] | None) -> list[str]:
    if node_addresses is None:
        return [f"NODE{n}_ADDR" for n in range(num_nodes)]
    if len(node_addresses) != num_nodes or not all(isinstance(a, str) and a for a in node_addresses):
        raise PlanError(f"expected {num_nodes} addresses, one per node, got {list(node_addresses)!r}",
                        field="node_addresses")
    return list(node_addresses)


def _title(engine: LaunchEngine, p: _Plan, n_inst: int) -> str:
    lay, cluster = p.layout, p.scenario.cluster
    version = {LaunchEngine.VLLM: VLLM_VERSION, LaunchEngine.SGLANG: SGLANG_VERSION,
               LaunchEngine.TRTLLM: TRTLLM_VERSION}[engine]
    return (f"{engine.value} {version} launch for {p.scenario.name}: TP={lay.tp} PP={lay.pp} DP={lay.dp} EP={lay.ep} "
            f"ETP={lay.etp} EDP={lay.edp} on {cluster.num_nodes} node(s) x {cluster.gpus_per_node} "
            f"{cluster.gpu.name}, {n_inst} instance(s); model {p.model}")


def _common_notes(engine: LaunchEngine, p: _Plan, instances: tuple[_Instance, ...], why_not: str | None,
                  dp_i: int, placeholders: bool, ports: list[int]) -> list[str]:
    notes = [p.model_note] if p.model_note else []
    if p.costed_for != engine.value:
        notes.append(f"the plan was costed for engine {p.costed_for}; its estimate is not {engine.value}'s")
    if any(len(inst.blocks) > 1 for inst in instances) and placeholders:
        notes.append("replace NODE<n>_ADDR with node n's IP address, reachable from the other nodes of its "
                     "instance (or pass node_addresses=[...])")
    if len(instances) > 1:
        where = ", ".join(f"{port} on node {inst.head}" for inst, port in zip(instances, ports))
        notes.append(f"{len(instances)} independent instances, HTTP ports {where}: put a load balancer in front "
                     f"of them")
    if why_not:
        notes.append(_placement_note(engine, p, instances, dp_i, why_not))
    return notes + [_length_note(engine, p)]


def _dp_per_instance(engine: LaunchEngine, p: _Plan, n_inst: int) -> int:
    """DP ranks per instance; ``NotExpressible`` when the instances would hold parts of a DP rank, and
    ``PlanError`` when a plan costed for this engine counts its instances differently."""
    if p.costed_for == engine.value and p.instances is not None and p.instances != n_inst:
        raise PlanError(f"plan.instances = {p.instances}, but {engine.value} runs this layout as {n_inst}",
                        source="<plan document>", field="plan.instances")
    if p.layout.dp % n_inst:
        raise NotExpressible(f"EDP = {n_inst} expert copies (one engine instance each) do not split DP = "
                             f"{p.layout.dp} into whole DP ranks; expressible: EDP dividing DP", engine=engine)
    return p.layout.dp // n_inst


# --------------------------------------------------------------------------------------------- vLLM


def _vllm_experts(p: _Plan, dp_i: int) -> bool:
    """Whether ``--enable-expert-parallel`` is needed; ``NotExpressible`` for an ETP/EP split vLLM lacks."""
    lay = p.layout
    if not p.scenario.model.is_moe:
        return False
    group = lay.tp * dp_i
    if lay.ep == group and lay.etp == 1 and group > 1:
        return True
    if lay.ep == 1 and lay.etp == group:
        return False
    raise NotExpressible(
        f"vLLM shards an instance's experts over its TP x DP = {lay.tp} x {dp_i} = {group} GPUs, either by expert "
        f"(--enable-expert-parallel: EP = {group}, ETP = 1) or by tensor (EP = 1, ETP = {group}); the plan has "
        f"EP = {lay.ep}, ETP = {lay.etp}, EDP = {lay.edp}. Expressible with TP = {lay.tp}, DP = {lay.dp}, EDP = "
        f"{lay.edp}: EP = {group}, ETP = 1 or EP = 1, ETP = {group} (re-solve with engine.name: vllm)",
        engine=LaunchEngine.VLLM)


def _vllm_ep_flags(p: _Plan, expert_parallel: bool) -> list[str]:
    """vLLM's switches for the scenario's EP exchange (``engine.moe_a2a_backend``, ``deepep_mode``,
    ``enable_two_batch_overlap``, ``num_redundant_experts``); ``NotExpressible`` where vLLM has no equivalent."""
    engine = p.scenario.engine
    flags: list[str] = []
    if engine.moe_a2a_backend is MoeA2aBackend.DEEPEP and expert_parallel:
        if engine.deepep_mode is DeepepMode.AUTO:
            raise NotExpressible("vLLM has no auto DeepEP mode (SGLang's normal prefill, low-latency decode in one "
                                 "server): set engine.deepep_mode to normal (deepep_high_throughput) or low_latency "
                                 "(deepep_low_latency), or serve prefill and decode in separate pools (optimize disagg)",
                                 engine=LaunchEngine.VLLM)
        backend = "deepep_high_throughput" if engine.deepep_mode is DeepepMode.NORMAL else "deepep_low_latency"
        flags += ["--all2all-backend", backend]
    flags += ["--enable-dbo"] if engine.enable_two_batch_overlap else []
    if engine.num_redundant_experts and expert_parallel:
        flags += ["--enable-eplb", "--eplb-config", json.dumps({"num_redundant_experts": engine.num_redundant_experts})]
    return flags


def vllm_commands(document: Mapping[str, Any], *, node_addresses: Sequence[str] | None = None,
                  port: int = VLLM_PORT) -> LaunchPlan:
    """``vllm serve`` commands (vLLM 0.33.0) for the plan in ``document`` (``optimize --json``).

    Args:
        document: the plan JSON document, parsed.
        node_addresses: one IP address or host name per cluster node; default placeholders ``NODE<n>_ADDR``.
        port: HTTP port of instance 0; instance i listens on ``port + i``.

    Raises:
        PlanError: the document cannot be read.
        NotExpressible: vLLM cannot run the plan (an ETP/EP split other than vLLM's, EDP not dividing DP,
            instances that do not tile the nodes, a KV cache format vLLM lacks).
    """
    engine = LaunchEngine.VLLM
    p = _read(document)
    _one_host_per_node(p, engine)
    n_inst = instance_count(p.layout, is_moe=p.scenario.model.is_moe)
    layout, dp_i = p.layout, _dp_per_instance(engine, p, n_inst)
    expert_parallel = _vllm_experts(p, dp_i)
    instances, why_not = _place(engine, p, n_inst=n_inst, dp_i=dp_i)
    addr = _addresses(p.scenario.cluster.num_nodes, node_addresses)
    dtype_flags, dtype_notes = _dtype_flags(engine, p)
    common = ["vllm", "serve", p.model, "--tensor-parallel-size", str(layout.tp),
              "--pipeline-parallel-size", str(layout.pp)]
    common += ["--data-parallel-size", str(dp_i)] if dp_i > 1 else []
    common += ["--enable-expert-parallel"] if expert_parallel else []
    common += _vllm_ep_flags(p, expert_parallel) if p.scenario.model.is_moe else []
    common += ["--gpu-memory-utilization", decimal_text(p.scenario.search.gpu_memory_utilization),
               "--max-model-len", str(max_model_len(p.scenario, kv_capacity_tokens=p.kv_capacity_tokens)),
               "--max-num-seqs", str(p.batch_per_replica),
               "--max-num-batched-tokens", str(p.scenario.engine.max_num_batched_tokens), *dtype_flags]
    common += ["--no-enable-chunked-prefill"] if p.scenario.engine.chunked_prefill is False else []
    spec_flags, spec_notes = _speculative(engine, p)
    offload_flags, offload_notes = _kv_offload(engine, p)
    common += spec_flags + offload_flags
    spec_notes += offload_notes
    extra_env = [("VLLM_PP_LAYER_PARTITION", ",".join(map(str, p.layers_per_stage)))] if layout.pp > 1 else []
    gpn = p.scenario.cluster.gpus_per_node
    commands: list[NodeCommand] = []
    for inst in instances:
        head, http = addr[inst.head], str(port + inst.index)
        if inst.ray:
            commands.append(NodeCommand(node=inst.head, instance=inst.index, role=CommandRole.RAY_HEAD,
                                        argv=("ray", "start", "--head", f"--port={RAY_PORT}"),
                                        gpus=inst.blocks[0].gpus))
            commands += [NodeCommand(node=b.node, instance=inst.index, role=CommandRole.RAY_WORKER,
                                     argv=("ray", "start", f"--address={head}:{RAY_PORT}"), gpus=b.gpus)
                         for b in inst.blocks[1:]]
            argv = common + ["--data-parallel-backend", "ray", "--distributed-executor-backend", "ray", "--port", http]
            commands.append(NodeCommand(node=inst.head, instance=inst.index, role=CommandRole.SERVE, argv=tuple(argv),
                                        env=(("VLLM_RAY_DP_PACK_STRATEGY", "span"), *extra_env)))
            continue
        nnodes = len(inst.blocks)
        for rank, block in enumerate(inst.blocks):
            argv = list(common)
            if nnodes > 1 and dp_i == 1:  # one DP rank over several nodes: multiprocessing multi-node
                argv += ["--nnodes", str(nnodes), "--node-rank", str(rank), "--master-addr", head,
                         "--master-port", str(VLLM_MASTER_PORT + inst.index)]
            elif nnodes > 1:  # whole DP ranks per node
                local = len(block.gpus) // (layout.tp * layout.pp)
                argv += ["--data-parallel-size-local", str(local), "--data-parallel-address", head,
                         "--data-parallel-rpc-port", str(VLLM_DP_RPC_PORT + inst.index)]
                argv += ["--data-parallel-start-rank", str(rank * local)] if rank else []
            argv += ["--headless"] if rank else ["--port", http]
            commands.append(NodeCommand(node=block.node, instance=inst.index,
                                        role=CommandRole.HEADLESS if rank else CommandRole.SERVE,
                                        argv=tuple(argv), env=_env(block, gpn, extra_env), gpus=block.gpus))
    ports = [port + inst.index for inst in instances]
    notes = _common_notes(engine, p, instances, why_not, dp_i, node_addresses is None, ports) + dtype_notes + spec_notes
    if any(inst.ray for inst in instances):
        notes.append("Ray: run the ray start lines first (ray must be installed on every node); the vllm serve "
                     "line on the head then starts every DP rank through Ray")
    return LaunchPlan(engine=engine, title=_title(engine, p, n_inst), model=p.model, commands=tuple(commands),
                      notes=tuple(notes))


# -------------------------------------------------------------------------------------------- SGLang


def sglang_commands(document: Mapping[str, Any], *, node_addresses: Sequence[str] | None = None,
                    port: int = SGLANG_PORT, legacy_dp_attention: bool = False) -> LaunchPlan:
    """``python3 -m sglang.launch_server`` commands (SGLang 0.5.23) for the plan in ``document``.

    SGLang's ``--tp-size`` is the instance's GPUs per pipeline stage (TP x dp_i); attention runs
    TP-way inside each of the ``dp_i`` attention-DP groups, the experts ETP-way inside ``--ep-size`` EP.

    Args:
        document: the plan JSON document, parsed.
        node_addresses: one IP address or host name per cluster node; default placeholders ``NODE<n>_ADDR``.
        port: HTTP port of instance 0; instance i listens on ``port + 100 i`` (SGLang derives ports above
            each: ``port + 233`` onwards for single-node attention DP, server_args.py ``PortArgs``).
        legacy_dp_attention: spell attention DP ``--dp-size N --enable-dp-attention`` (SGLang <= 0.5.21)
            instead of ``--attn-dp-size N`` (0.5.22 and later).

    Raises:
        PlanError: the document cannot be read.
        NotExpressible: SGLang cannot run the plan (EDP not dividing DP, instances that do not tile the
            nodes, a KV cache format SGLang lacks).
    """
    engine = LaunchEngine.SGLANG
    p = _read(document)
    _one_host_per_node(p, engine)
    n_inst = instance_count(p.layout, is_moe=p.scenario.model.is_moe)
    layout, dp_i = p.layout, _dp_per_instance(engine, p, n_inst)
    tp_size = layout.tp * dp_i
    if p.scenario.model.is_moe and layout.etp * layout.ep != tp_size:
        raise NotExpressible(f"SGLang shards an instance's experts over its --tp-size = TP x DP/instances = {tp_size} "
                             f"GPUs (ETP x EP = {tp_size}); the plan has ETP x EP = {layout.etp * layout.ep}",
                             engine=engine)
    instances, why_not = _place(engine, p, n_inst=n_inst, dp_i=dp_i)
    addr = _addresses(p.scenario.cluster.num_nodes, node_addresses)
    dtype_flags, dtype_notes = _dtype_flags(engine, p)
    common = ["python3", "-m", "sglang.launch_server", "--model-path", p.model, "--tp-size", str(tp_size),
              "--pp-size", str(layout.pp)]
    if dp_i > 1:
        common += (["--dp-size", str(dp_i), "--enable-dp-attention"] if legacy_dp_attention
                   else ["--attn-dp-size", str(dp_i)])
    common += ["--ep-size", str(layout.ep)] if p.scenario.model.is_moe and layout.ep > 1 else []
    if p.scenario.model.is_moe:
        ep_engine = p.scenario.engine
        if ep_engine.moe_a2a_backend is MoeA2aBackend.DEEPEP:
            common += ["--moe-a2a-backend", "deepep", "--deepep-mode", ep_engine.deepep_mode.value]
        common += ["--enable-two-batch-overlap"] if ep_engine.enable_two_batch_overlap else []
        common += (["--ep-num-redundant-experts", str(ep_engine.num_redundant_experts)]
                   if ep_engine.num_redundant_experts else [])
        common += ["--moe-dense-tp-size", "1"] if ep_engine.moe_dense_tp_size == 1 else []
    common += ["--enable-dp-lm-head"] if p.scenario.engine.enable_dp_lm_head else []
    common += ["--mem-fraction-static", decimal_text(p.scenario.search.gpu_memory_utilization),
               "--max-running-requests", str(p.batch_per_replica * dp_i),
               "--context-length", str(max_model_len(p.scenario, kv_capacity_tokens=p.kv_capacity_tokens)),
               *(["--chunked-prefill-size=-1"] if p.scenario.engine.chunked_prefill is False
                 else ["--chunked-prefill-size", str(p.scenario.engine.max_num_batched_tokens * dp_i)]), *dtype_flags]
    spec_flags, spec_notes = _speculative(engine, p)
    offload_flags, offload_notes = _kv_offload(engine, p)
    common += spec_flags + offload_flags
    spec_notes += offload_notes
    extra_env = [("SGLANG_PP_LAYER_PARTITION", ",".join(map(str, p.layers_per_stage)))] if layout.pp > 1 else []
    gpn = p.scenario.cluster.gpus_per_node
    commands: list[NodeCommand] = []
    for inst in instances:
        nnodes = len(inst.blocks)
        for rank, block in enumerate(inst.blocks):
            argv = common + ["--host", "0.0.0.0", "--port", str(port + SGLANG_PORT_STRIDE * inst.index)]
            if nnodes > 1:
                dist = f"{addr[inst.head]}:{SGLANG_DIST_INIT_PORT + SGLANG_PORT_STRIDE * inst.index}"
                argv += ["--nnodes", str(nnodes), "--node-rank", str(rank), "--dist-init-addr", dist]
            commands.append(NodeCommand(node=block.node, instance=inst.index,
                                        role=CommandRole.HEADLESS if rank else CommandRole.SERVE,
                                        argv=tuple(argv), env=_env(block, gpn, extra_env), gpus=block.gpus))
    ports = [port + SGLANG_PORT_STRIDE * inst.index for inst in instances]
    notes = _common_notes(engine, p, instances, why_not, dp_i, node_addresses is None, ports) + dtype_notes + spec_notes
    if p.costed_for != engine.value:
        notes.append("--mem-fraction-static counts weights and the KV pool only; SGLang keeps activations and CUDA "
                     "graphs outside it, where the plan's cap (costed for another engine) holds them inside: "
                     "lower it if start-up runs out of memory")
    if dp_i > 1:
        notes.append(f"attention DP over {dp_i} groups: spelled --attn-dp-size from SGLang 0.5.22 on; for 0.5.21 "
                     f"and earlier use --dp-size {dp_i} --enable-dp-attention (legacy_dp_attention=True); SGLang "
                     f"implements attention DP per model architecture")
    return LaunchPlan(engine=engine, title=_title(engine, p, n_inst), model=p.model, commands=tuple(commands),
                      notes=tuple(notes))


# ------------------------------------------------------------------------------------- TensorRT-LLM


def _kv_offload(engine: LaunchEngine, p: _Plan) -> tuple[list[str], list[str]]:
    """Host-memory KV offload flags for ``engine.kv_offload_bytes`` (per GPU) and notes; TensorRT-LLM's is a key
    of the options file (``_trtllm_options``).

    vLLM ``--kv-offloading-size`` is GiB summed over an engine's TP ranks (vllm/config/cache.py CacheConfig), so
    TP x the per-GPU bytes; SGLang ``--hicache-size`` whole GB per rank (overrides ``--hicache-ratio``).

    Raises:
        NotExpressible: SGLang, where the per-GPU figure is under 1 GB (its flag takes whole GB).
    """
    offload = p.scenario.engine.kv_offload_bytes
    if not offload:
        return [], []
    notes = [f"KV offload: {human_bytes(offload)} of host memory per GPU for evicted KV blocks; check the nodes have it "
             "beside the weights' page cache and the processes' own memory"]
    if engine is LaunchEngine.VLLM:
        total = Fraction(offload * p.layout.tp, 1 << 30)
        return ["--kv-offloading-backend", "native", "--kv-offloading-size", decimal_text(total)], notes
    if engine is LaunchEngine.SGLANG:
        gb = offload // 10 ** 9
        if gb == 0:
            raise NotExpressible(f"--hicache-size takes whole GB per rank; engine.kv_offload_bytes = {offload} is under "
                                 "1 GB", engine=engine)
        return ["--enable-hierarchical-cache", "--hicache-size", str(gb)], notes
    return [], notes


DRAFT_MODEL_PLACEHOLDER = "DRAFT_MODEL"  # where the scenario names no EAGLE head (engine.speculative.draft_model)


def _speculative(engine: LaunchEngine, p: _Plan) -> tuple[list[str], list[str]]:
    """Speculative-decoding flags (vLLM, SGLang) or ``speculative_config`` YAML lines (TensorRT-LLM) for
    ``engine.speculative``, as a chain of ``k`` drafts (top-k 1: what the cost model prices), and notes.

    Raises:
        NotExpressible: EAGLE (v1/v2) heads on TensorRT-LLM, whose PyTorch backend runs EAGLE-3 only
            (docs/source/features/speculative-decoding.md: ``decoding_type: Eagle`` is an alias of Eagle3).
    """
    spec = p.scenario.engine.speculative
    if spec is None:
        return [], []
    k, method = spec.num_speculative_tokens, spec.method
    head = spec.draft_model or DRAFT_MODEL_PLACEHOLDER
    notes = [f"speculative decoding: {method.value}, {k} draft tokens per step, costed at acceptance rate "
             f"{decimal_text(spec.acceptance_rate)} per token; measure it on your traffic and re-plan if it differs"]
    drafted = method in (SpeculativeMethod.EAGLE, SpeculativeMethod.EAGLE3, SpeculativeMethod.DRAFT_MODEL)
    if drafted and spec.draft_model is None:
        notes.append(f"replace {DRAFT_MODEL_PLACEHOLDER} with the draft's checkpoint (engine.speculative.draft_model)")
    if engine is LaunchEngine.VLLM:
        config: dict[str, Any] = {"method": method.value, "num_speculative_tokens": k}
        if drafted:
            config["model"] = head
        return ["--speculative-config", json.dumps(config, sort_keys=True)], notes
    if engine is LaunchEngine.SGLANG:
        algorithm = {SpeculativeMethod.MTP: "EAGLE", SpeculativeMethod.EAGLE: "EAGLE", SpeculativeMethod.EAGLE3: "EAGLE3",
                     SpeculativeMethod.NGRAM: "NGRAM", SpeculativeMethod.DRAFT_MODEL: "STANDALONE"}[method]
        flags = ["--speculative-algorithm", algorithm, "--speculative-num-steps", str(k), "--speculative-eagle-topk", "1",
                 "--speculative-num-draft-tokens", str(k + 1)]
        if drafted:
            flags += ["--speculative-draft-model-path", head]
        return flags, notes
    if method is SpeculativeMethod.EAGLE:
        raise NotExpressible("the PyTorch backend runs EAGLE-3 heads only (decoding_type Eagle is an alias of Eagle3; "
                             "EAGLE v1/v2 checkpoints do not load); use engine.speculative.method: eagle3", engine=engine)
    lines = ["speculative_config:"]
    if method is SpeculativeMethod.MTP:
        lines += ["  decoding_type: MTP", f"  num_nextn_predict_layers: {k}"]
    elif method is SpeculativeMethod.EAGLE3:
        lines += ["  decoding_type: Eagle3", f"  max_draft_len: {k}", f"  speculative_model: {head}"]
    elif method is SpeculativeMethod.DRAFT_MODEL:
        lines += ["  decoding_type: DraftTarget", f"  max_draft_len: {k}", f"  speculative_model: {head}"]
    else:
        lines += ["  decoding_type: NGram", f"  max_draft_len: {k}"]
    return lines, notes


def _trtllm_options(p: _Plan, dp_i: int) -> str:
    """The ``--extra_llm_api_options`` YAML (keys of ``llm_args.py`` BaseLlmArgs), or "" when the flags
    say everything. The file's ``kv_cache_config`` replaces the one the flags build
    (``update_llm_args_with_extra_dict``), so it repeats the memory fraction."""
    lines = ["enable_attention_dp: true"] if dp_i > 1 else []
    if p.scenario.engine.chunked_prefill:
        lines.append("enable_chunked_prefill: true")
    if p.scenario.model.is_moe:
        lines.append(f"moe_tensor_parallel_size: {p.layout.etp}")
    if p.layout.pp > 1:
        lines.append(f"pp_partition: [{', '.join(map(str, p.layers_per_stage))}]")
    offload = p.scenario.engine.kv_offload_bytes
    if p.scenario.workload.kv_cache_dtype is Dtype.FP8 or offload:
        lines += ["kv_cache_config:"]
        lines += [f"  dtype: {_KV_DTYPE[LaunchEngine.TRTLLM]}"] if p.scenario.workload.kv_cache_dtype is Dtype.FP8 else []
        lines += [f"  free_gpu_memory_fraction: {decimal_text(p.scenario.search.gpu_memory_utilization)}"]
        # host_cache_size: bytes of host memory per rank for evicted blocks (KvCacheConfig; block reuse is on by default)
        lines += [f"  host_cache_size: {offload}"] if offload else []
    lines += _speculative(LaunchEngine.TRTLLM, p)[0]
    return "".join(line + "\n" for line in lines)


def trtllm_commands(document: Mapping[str, Any], *, node_addresses: Sequence[str] | None = None,
                    port: int = TRTLLM_PORT) -> LaunchPlan:
    """``trtllm-serve`` commands (TensorRT-LLM 1.2, PyTorch backend) for the plan in ``document``.

    Per instance: ``--tp_size`` = TP x dp_i (the GPUs of one pipeline stage); attention runs TP-way, or
    data parallel with ``enable_attention_dp`` when TP = 1 and dp_i > 1 (TensorRT-LLM has nothing in
    between); the experts ``--ep_size EP`` x ``moe_tensor_parallel_size ETP`` = tp_size; ``pp_partition``
    carries an uneven layer split. ``--max_batch_size`` is the plan's batch per replica: each
    attention-DP rank schedules its own batch. An instance on one node is one ``trtllm-serve`` (it starts
    its own MPI workers); over several nodes, ``mpirun -H ... trtllm-llmapi-launch trtllm-serve`` on its
    first node (the docs' multi-node recipe; ``srun`` works the same under Slurm).

    Args:
        document: the plan JSON document, parsed.
        node_addresses: one IP address or host name per cluster node; default placeholders ``NODE<n>_ADDR``.
        port: HTTP port of instance 0; instance i listens on ``port + i``.

    Raises:
        PlanError: the document cannot be read.
        NotExpressible: TensorRT-LLM cannot run the plan (attention TP > 1 together with attention DP,
            ETP x EP other than tp_size, EDP not dividing DP, instances that do not tile the nodes, a KV
            cache format it lacks).
    """
    engine = LaunchEngine.TRTLLM
    p = _read(document)
    _one_host_per_node(p, engine)
    n_inst = instance_count(p.layout, is_moe=p.scenario.model.is_moe)
    layout, dp_i = p.layout, _dp_per_instance(engine, p, n_inst)
    tp_size = layout.tp * dp_i
    if layout.tp > 1 and dp_i > 1:
        raise NotExpressible(
            f"TensorRT-LLM runs an instance's attention over its tp_size = {tp_size} GPUs either tensor parallel "
            f"(TP = {tp_size}) or with enable_attention_dp (TP = 1, DP = {tp_size}); the plan has TP = {layout.tp} "
            f"with {dp_i} DP ranks per instance. Expressible: TP = 1 or DP = instances (re-solve with engine.name: "
            f"tensorrt-llm)",
            engine=engine)
    if p.scenario.model.is_moe and layout.etp * layout.ep != tp_size:
        raise NotExpressible(
            f"TensorRT-LLM shards an instance's experts over its tp_size = {tp_size} GPUs (moe_tensor_parallel_size x "
            f"moe_expert_parallel_size = tp_size); the plan has ETP x EP = {layout.etp} x {layout.ep} = "
            f"{layout.etp * layout.ep}", engine=engine)
    _, dtype_notes = _dtype_flags(engine, p)
    instances, why_not = _place(engine, p, n_inst=n_inst, dp_i=dp_i)
    addr = _addresses(p.scenario.cluster.num_nodes, node_addresses)
    options = _trtllm_options(p, dp_i)
    serve = ["trtllm-serve", p.model, "--backend", "pytorch", "--tp_size", str(tp_size), "--pp_size", str(layout.pp)]
    serve += ["--ep_size", str(layout.ep)] if p.scenario.model.is_moe else []
    serve += ["--max_batch_size", str(p.batch_per_replica),
              "--max_num_tokens", str(p.scenario.engine.max_num_batched_tokens),
              "--max_seq_len", str(max_model_len(p.scenario, kv_capacity_tokens=p.kv_capacity_tokens)),
              "--kv_cache_free_gpu_memory_fraction", decimal_text(p.scenario.search.gpu_memory_utilization)]
    serve += ["--extra_llm_api_options", TRTLLM_OPTIONS_FILE] if options else []
    gpn = p.scenario.cluster.gpus_per_node
    commands: list[NodeCommand] = []
    for inst in instances:
        argv = serve + ["--host", "0.0.0.0", "--port", str(port + inst.index)]
        head = inst.blocks[0]
        if len(inst.blocks) == 1:
            commands.append(NodeCommand(node=head.node, instance=inst.index, role=CommandRole.SERVE, argv=tuple(argv),
                                        env=_env(head, gpn, []), gpus=head.gpus))
            continue
        hosts = ",".join(f"{addr[b.node]}:{len(b.gpus)}" for b in inst.blocks)
        mpi = ["mpirun", "-H", hosts, "-n", str(sum(len(b.gpus) for b in inst.blocks))]
        if head.gpus != tuple(range(gpn)):  # every node of the instance uses the same GPUs (placement.instance_blocks)
            mpi += ["-x", "CUDA_VISIBLE_DEVICES=" + ",".join(map(str, head.gpus))]
        commands.append(NodeCommand(node=head.node, instance=inst.index, role=CommandRole.SERVE,
                                    argv=tuple(mpi + ["trtllm-llmapi-launch"] + argv), gpus=head.gpus,
                                    other_nodes=tuple((b.node, b.gpus) for b in inst.blocks[1:])))
    ports = [port + inst.index for inst in instances]
    notes = _common_notes(engine, p, instances, why_not, dp_i, node_addresses is None, ports) + dtype_notes + _speculative(engine, p)[1]
    notes += _kv_offload(engine, p)[1]
    if options:
        notes.append(f"write {TRTLLM_OPTIONS_FILE} (below) in the working directory of each trtllm-serve line; it "
                     f"overrides the flags (llm_args.py keys)")
    if dp_i > 1:
        notes.append(f"attention DP over {dp_i} ranks (enable_attention_dp): --max_batch_size "
                     f"{p.batch_per_replica} and --max_num_tokens apply to each attention-DP rank's scheduler, "
                     f"{p.batch_per_replica * dp_i} sequences per instance")
    if any(len(inst.blocks) > 1 for inst in instances):
        notes.append("multi-node: mpirun needs the same TensorRT-LLM install (or container) and passwordless SSH on "
                     "every node of an instance; under Slurm run `srun -N <nodes> --ntasks-per-node=<GPUs> --mpi=pmix "
                     "trtllm-llmapi-launch trtllm-serve ...` instead")
    if p.costed_for != engine.value:
        notes.append("--kv_cache_free_gpu_memory_fraction is the share of the memory still free after weights and "
                     "activations that goes to the KV cache, where the plan's cap (costed for another engine) is a "
                     "share of the whole memory")
    return LaunchPlan(engine=engine, title=_title(engine, p, n_inst), model=p.model, commands=tuple(commands),
                      notes=tuple(notes), files=((TRTLLM_OPTIONS_FILE, options),) if options else ())


_BUILDERS = {LaunchEngine.VLLM: vllm_commands, LaunchEngine.SGLANG: sglang_commands,
             LaunchEngine.TRTLLM: trtllm_commands}


def launch_commands(document: Mapping[str, Any], *, engine: LaunchEngine | str, **options: Any) -> LaunchPlan:
    """``vllm_commands``, ``sglang_commands`` or ``trtllm_commands`` by ``engine`` name (``vllm``,
    ``sglang``, ``tensorrt-llm``); ``options`` go to it unchanged."""
    try:
        chosen = LaunchEngine(engine)
    except ValueError:
        raise PlanError(f"unknown engine {engine!r}; expected one of {[e.value for e in LaunchEngine]}") from None
    return _BUILDERS[chosen](document, **options)
