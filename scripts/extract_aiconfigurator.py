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


def main() -> None:
    root = Path(sys.argv[1])
    OUT.mkdir(parents=True, exist_ok=True)
    for name, frame in (("aiconfigurator_gemm.csv", gemm(root)), ("aiconfigurator_nccl.csv", nccl(root)),
                        ("aiconfigurator_attention.csv", attention(root))):
        frame.to_csv(OUT / name, index=False, float_format="%.6g")
        print(f"{name}: {len(frame)} rows")


if __name__ == "__main__":
    main()
