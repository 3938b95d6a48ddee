"""Extract the calibration subsets this project uses from NVIDIA aiconfigurator-core's measured tables.

aiconfigurator-core (Apache-2.0, PyPI) ships latencies measured on real GPUs as parquet files under
``aiconfigurator_core/systems/data/<gpu>/<op>/<framework>/<version>/``. This script reads them (it needs
pandas + pyarrow, which the optimizer itself does not depend on) and writes small CSV subsets to
``calibration/data/``. It is run once, by hand, in a separate virtual environment::

    python -m venv /tmp/aicvenv && /tmp/aicvenv/bin/pip install pandas pyarrow
    pip download aiconfigurator-core==0.12.0 --no-deps -d /tmp/aic && unzip -q /tmp/aic/*.whl -d /tmp/aic/x
    /tmp/aicvenv/bin/python scripts/extract_aiconfigurator.py /tmp/aic/x/aiconfigurator_core/systems/data

Only measured numbers are taken (no aiconfigurator code). Subsets, per GPU (the newest collected version):
- GEMM (``gemm/vllm/<v>/gemm_perf.parquet``): bf16 (torch linear) and per-tensor FP8 (CUTLASS scaled-mm),
  m in powers of two 1..32768 and n, k in {512, 1024, 2048, 4096, 8192, 16384}.
- NCCL (``comm/nccl/<v>/nccl_perf.parquet``): every half-precision row (all_reduce, all_gather,
  reduce_scatter, alltoall on 2/4/8 GPUs). ``message_size`` there counts elements; we write bytes (x2).
- Attention (``attention/vllm/<v>/{context,generation}_attention_perf.parquet``): bf16 KV cache, no window
  and the 1024-token window, head_dim 128, 8/32/64 query heads over 1 or 8 KV heads, batch 1..256, length 16..32768.

Per-engine subsets (issue 13 item 6; ``framework`` vllm / sglang / trtllm, the newest version each GPU has
(MoE: the version with the most rows in the subset),
``version`` and ``file`` on every row), for the per-engine kernel fits of ``scripts/calibrate.py``:
- ``aiconfigurator_engine_gemm.csv`` (``gemm/<fw>/<v>/gemm_perf.parquet``): bf16 (torch linear) and per-tensor
  FP8 (vLLM's CUTLASS scaled-mm, SGLang's sgl-kernel scaled-mm, TensorRT-LLM's torch flow), m in
  1, 4, 16, ..., 16384 and n, k in {1024, 2048, 4096, 8192, 16384}.
- ``aiconfigurator_engine_attention.csv`` (``attention/<fw>/<v>/{context,generation}_attention_perf.parquet``):
  bf16 KV cache, no window, head_dim 128, 8/32/64 query heads over 1 or 8 KV heads, batch 1..512, length
  16..32768 (generation: ``step + 1``, the KV length the new token attends to).
- ``aiconfigurator_moe.csv`` (``moe/<fw>/<v>/moe_perf.parquet``): the fused MoE op (routing, two grouped
  GEMMs, activation, combine) under balanced routing, bf16 and FP8 (block-scaled where the engine has it, else
  per-tensor), every (hidden, inter, top-k, experts) the table has on one GPU, EP 8 and moe TP 4,
  tokens 1, 4, 16, ..., 16384.
- ``aiconfigurator_custom_allreduce.csv`` (``comm/<fw>/<v>/custom_allreduce_perf.parquet``): each engine's own
  all-reduce (vLLM's and SGLang's custom all-reduce under CUDA graphs, TensorRT-LLM's AUTO strategy) on 2/4/8
  GPUs, bf16, every message size; ``message_size`` counts elements (aiconfigurator ``collector/
  collect_all_reduce.py`` builds a tensor of that many elements), written as bytes (x2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

GPUS = {"h100_sxm": "h100-sxm", "h200_sxm": "h200-sxm", "a100_sxm": "a100-sxm-80gb", "b200_sxm": "b200", "l40s": "l40s"}
OUT = Path(__file__).resolve().parent.parent / "calibration" / "data"
POW2 = [1 << i for i in range(16)]
NK = [512, 1024, 2048, 4096, 8192, 16384]


def _newest(root: Path, pattern: str) -> Path:
    """The file for the highest version directory (versions compared numerically where they can be)."""

    def key(p: Path):
        version = p.parent.name
        return tuple(int(x) if x.isdigit() else -1 for x in version.replace("rc", ".").replace("post", ".").split("."))

    files = sorted(root.glob(pattern), key=key)
    if not files:
        raise SystemExit(f"no {pattern} under {root}")
    return files[-1]


def gemm(root: Path) -> pd.DataFrame:
    rows = []
    for folder, name in GPUS.items():
        path = _newest(root / folder, "gemm/vllm/*/gemm_perf.parquet")
        d = pd.read_parquet(path)
        bf16 = d[(d.gemm_dtype == "bfloat16")]
        fp8 = d[(d.gemm_dtype == "fp8") & d.kernel_source.str.contains("Cutlass")]
        for dtype, part in (("bf16", bf16), ("fp8", fp8)):
            part = part[part.m.isin(POW2) & part.n.isin(NK) & part.k.isin(NK)]
            part = part.groupby(["m", "n", "k"], as_index=False).latency.median()
            rows.append(part.assign(gpu=name, dtype=dtype, source=f"aiconfigurator-core 0.12.0 {path.relative_to(root)}"))
    out = pd.concat(rows)
    return out[["gpu", "dtype", "m", "n", "k", "latency", "source"]].rename(columns={"latency": "latency_ms"})


def nccl(root: Path) -> pd.DataFrame:
    rows = []
    for folder, name in GPUS.items():
        path = _newest(root / folder, "comm/nccl/*/nccl_perf.parquet")
        d = pd.read_parquet(path)
        if "nccl_dtype" in d:
            d = d[d.nccl_dtype == "half"]
        d = d.groupby(["op_name", "num_gpus", "message_size"], as_index=False).latency.median()
        rows.append(d.assign(gpu=name, message_bytes=d.message_size * 2, source=f"aiconfigurator-core 0.12.0 {path.relative_to(root)}"))
    out = pd.concat(rows)
    return out[["gpu", "op_name", "num_gpus", "message_bytes", "latency", "source"]].rename(
        columns={"op_name": "op", "latency": "latency_ms"})


def attention(root: Path) -> pd.DataFrame:
    rows = []
    for folder, name in GPUS.items():
        for phase in ("context", "generation"):
            path = _newest(root / folder, f"attention/vllm/*/{phase}_attention_perf.parquet")
            d = pd.read_parquet(path)
            if "window_size" not in d:  # older collections (A100) predate sliding-window rows
                d = d.assign(window_size=0)
            d = d[(d.kv_cache_dtype == "bfloat16") & (d.head_dim == 128) & d.window_size.isin([0, 1024])
                  & d.batch_size.isin([1, 4, 16, 64, 256]) & d.num_heads.isin([8, 32, 64])
                  & d.num_key_value_heads.isin([1, 8])]
            if phase == "context":
                d = d[d.isl.isin(POW2[4:])].assign(kv_len=d.isl)
            else:
                d = d[(d.step + 1).isin(POW2[4:])].assign(kv_len=d.step + 1)
            d = d.groupby(["batch_size", "kv_len", "num_heads", "num_key_value_heads", "window_size"], as_index=False).latency.median()
            rows.append(d.assign(gpu=name, phase=phase, source=f"aiconfigurator-core 0.12.0 {path.relative_to(root)}"))
    out = pd.concat(rows)
    return out[["gpu", "phase", "batch_size", "kv_len", "num_heads", "num_key_value_heads", "window_size", "latency", "source"]].rename(
        columns={"batch_size": "batch", "num_key_value_heads": "num_kv_heads", "latency": "latency_ms"})


FRAMEWORKS = ("vllm", "sglang", "trtllm")
POW4 = [1 << i for i in range(0, 16, 2)]  # 1, 4, 16, ..., 16384
NK5 = [1024, 2048, 4096, 8192, 16384]
ATTN_BATCH = [1, 4, 16, 64, 256, 512]
ATTN_LEN = [16, 128, 1024, 4096, 16384, 32768]
FP8_GEMM = {"vllm": "Cutlass", "sglang": "sgl_kernel_fp8_scaled_mm", "trtllm": ""}


def _newest_or_none(root: Path, pattern: str) -> Path | None:
    try:
        return _newest(root, pattern)
    except SystemExit:
        return None


def _per_engine(root: Path, pattern: str):
    """(gpu, framework, path) for every fitted GPU and framework that has a file matching ``pattern``
    (``{fw}`` in it stands for the framework)."""
    for folder, name in GPUS.items():
        for fw in FRAMEWORKS:
            path = _newest_or_none(root / folder, pattern.format(fw=fw))
            if path is not None:
                yield name, fw, path


def _tag(frame: pd.DataFrame, *, gpu: str, fw: str, path: Path, root: Path) -> pd.DataFrame:
    return frame.assign(gpu=gpu, framework=fw, version=path.parent.name, file=str(path.relative_to(root)))


def engine_gemm(root: Path) -> pd.DataFrame:
    rows = []
    for gpu, fw, path in _per_engine(root, "gemm/{fw}/*/gemm_perf.parquet"):
        d = pd.read_parquet(path)
        d = d[d.m.isin(POW4) & d.n.isin(NK5) & d.k.isin(NK5)]
        bf16 = d[d.gemm_dtype == "bfloat16"]
        fp8 = d[(d.gemm_dtype == "fp8") & d.kernel_source.str.contains(FP8_GEMM[fw])]
        for dtype, part in (("bf16", bf16), ("fp8", fp8)):
            part = part.groupby(["m", "n", "k"], as_index=False).latency.median()
            if len(part):
                rows.append(_tag(part.assign(dtype=dtype), gpu=gpu, fw=fw, path=path, root=root))
    out = pd.concat(rows)
    return out[["gpu", "framework", "version", "dtype", "m", "n", "k", "latency", "file"]].rename(columns={"latency": "latency_ms"})


def engine_attention(root: Path) -> pd.DataFrame:
    rows = []
    for phase in ("context", "generation"):
        for gpu, fw, path in _per_engine(root, "attention/{fw}/*/" + phase + "_attention_perf.parquet"):
            d = pd.read_parquet(path)
            if "window_size" not in d:
                d = d.assign(window_size=0)
            d = d[(d.kv_cache_dtype == "bfloat16") & (d.head_dim == 128) & (d.window_size == 0)
                  & d.batch_size.isin(ATTN_BATCH) & d.num_heads.isin([8, 32, 64]) & d.num_key_value_heads.isin([1, 8])]
            if "attn_dtype" in d:
                d = d[d.attn_dtype == "bfloat16"]
            d = d.assign(kv_len=d.isl if phase == "context" else d.step + 1)
            d = d[d.kv_len.isin(ATTN_LEN)]
            d = d.groupby(["batch_size", "kv_len", "num_heads", "num_key_value_heads"], as_index=False).latency.median()
            rows.append(_tag(d.assign(phase=phase), gpu=gpu, fw=fw, path=path, root=root))
    out = pd.concat(rows)
    return out[["gpu", "framework", "version", "phase", "batch_size", "kv_len", "num_heads", "num_key_value_heads", "latency",
                "file"]].rename(columns={"batch_size": "batch", "num_key_value_heads": "num_kv_heads", "latency": "latency_ms"})


def moe(root: Path) -> pd.DataFrame:
    rows = []
    keys = ["num_tokens", "hidden_size", "inter_size", "topk", "num_experts", "moe_tp_size", "moe_ep_size"]
    for folder, gpu in GPUS.items():
        for fw in FRAMEWORKS:
            best = None
            # the version with the most balanced-routing rows in the subset (the newest collections are at
            # times a single new dtype: TensorRT-LLM 1.3.0rc23's H100 table is FP4-on-FP8 only)
            for path in sorted((root / folder).glob(f"moe/{fw}/*/moe_perf.parquet")):
                d = pd.read_parquet(path)
                if "distribution" not in d:
                    continue
                d = d[(d.distribution == "balanced") & d.num_tokens.isin(POW4)
                      & (((d.moe_tp_size == 1) & d.moe_ep_size.isin([1, 8])) | ((d.moe_tp_size == 4) & (d.moe_ep_size == 1)))]
                if best is None or len(d) > len(best[1]):
                    best = (path, d)
            if best is None or not len(best[1]):
                continue
            path, d = best
            # block-scaled FP8 first: the released FP8 MoE checkpoints (DeepSeek-V3, Qwen3 FP8) use 128 x 128 blocks,
            # and vLLM's per-tensor path (FlashInfer CUTLASS) is 2-4x slower on the same shapes in these tables
            fp8 = "fp8_block" if (d.moe_dtype == "fp8_block").any() else "fp8"
            for dtype, source in (("bf16", "bfloat16"), ("fp8", fp8)):
                part = d[d.moe_dtype == source]
                # one kernel per dtype: the fastest median over the table's kernels (an engine's autotuning
                # or default picks the best it has), per shape
                part = part.groupby(keys + ["kernel_source"], as_index=False).latency.median()
                part = part.groupby(keys, as_index=False).latency.min()
                if len(part):
                    rows.append(_tag(part.assign(dtype=dtype, source_dtype=source), gpu=gpu, fw=fw, path=path, root=root))
    out = pd.concat(rows)
    return out[["gpu", "framework", "version", "dtype", "source_dtype", *keys, "latency", "file"]].rename(
        columns={"num_tokens": "tokens", "topk": "top_k", "moe_tp_size": "moe_tp", "moe_ep_size": "moe_ep", "latency": "latency_ms"})


def custom_allreduce(root: Path) -> pd.DataFrame:
    rows = []
    for gpu, fw, path in _per_engine(root, "comm/{fw}/*/custom_allreduce_perf.parquet"):
        d = pd.read_parquet(path)
        if "backend" in d:
            d = d[d.backend.str.endswith("graph")]
        d = d[d.allreduce_dtype == "bfloat16"].groupby(["num_gpus", "message_size"], as_index=False).latency.median()
        rows.append(_tag(d.assign(message_bytes=d.message_size * 2), gpu=gpu, fw=fw, path=path, root=root))
    out = pd.concat(rows)
    return out[["gpu", "framework", "version", "num_gpus", "message_bytes", "latency", "file"]].rename(columns={"latency": "latency_ms"})


def main() -> None:
    root = Path(sys.argv[1])
    OUT.mkdir(parents=True, exist_ok=True)
    for name, frame in (("aiconfigurator_gemm.csv", gemm(root)), ("aiconfigurator_nccl.csv", nccl(root)),
                        ("aiconfigurator_attention.csv", attention(root)),
                        ("aiconfigurator_engine_gemm.csv", engine_gemm(root)),
                        ("aiconfigurator_engine_attention.csv", engine_attention(root)),
                        ("aiconfigurator_moe.csv", moe(root)),
                        ("aiconfigurator_custom_allreduce.csv", custom_allreduce(root))):
        frame.to_csv(OUT / name, index=False, float_format="%.6g")
        print(f"{name}: {len(frame)} rows")


if __name__ == "__main__":
    main()
