"""Print what the workload features do to a shipped scenario's plans (issue 16 item 5).

1. DeepSeek-V3 with MTP on 8 x H200 (SGLang, TP 8, batch 1 and 16): TPOT and output tokens/s with one MTP
   draft at the acceptance DeepSeek reports for the second token (85-90%, DeepSeek-V3 report arXiv
   2412.19437 section 5.4.3, which measures 1.8x the tokens per second), beside the model's ratio.
2. Llama-3.1-70B on 8 x H100 (vLLM, TP 8, batch 8): TPOT by draft length k and acceptance a (EAGLE-3).
3. The same with prefix-cache hit rates: prefill time and TTFT.

    python scripts/workload_features.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from optimizer.inputs.loader import load_scenario  # noqa: E402
from optimizer.model.cost import integer_costs  # noqa: E402
from optimizer.model.parallel import Layout, Plan  # noqa: E402
from optimizer.search.verify import certify  # noqa: E402


def with_fields(name: str, *, engine: dict | None = None, workload: dict | None = None, batch: int | None = None):
    base = load_scenario(name)
    data = base.model_dump(mode="json")  # then validated again: the fields are read as a scenario file's are
    data["engine"].update(engine or {})
    data["workload"].update({**(workload or {}), **({"concurrent_sequences": batch} if batch else {})})
    return type(base).model_validate(data)


def main() -> None:
    tp8 = Layout(tp=8, pp=1, dp=1, ep=8, etp=1, edp=1)
    print("DeepSeek-V3, 8 x H200, SGLang TP 8 / EP 8: one MTP draft (DeepSeek-V3 report: 85-90% acceptance, 1.8x TPS)")
    for batch in (1, 16):
        plan = Plan(layout=tp8, layers_per_stage=(61,), batch_per_replica=batch)
        off = certify(with_fields("deepseek-v3-8xh200-sglang", batch=batch), plan).estimate
        for a in ("0.85", "0.9"):
            spec = {"method": "mtp", "num_speculative_tokens": 1, "acceptance_rate": a}
            on = certify(with_fields("deepseek-v3-8xh200-sglang", engine={"speculative": spec}, batch=batch), plan).estimate
            print(f"  batch {batch:3d}  a {a}: TPOT {off.tpot_ns / 1e6:7.2f} -> {on.tpot_ns / 1e6:7.2f} ms, "
                  f"tokens/s x {off.tpot_ns / on.tpot_ns:.2f}")
    print()
    dense = Layout(tp=8, pp=1, dp=1, ep=1, etp=8, edp=1)
    plan = Plan(layout=dense, layers_per_stage=(80,), batch_per_replica=8)
    base = certify(with_fields("llama-3.1-70b-8xh100", batch=8), plan).estimate.tpot_ns
    print(f"Llama-3.1-70B, 8 x H100, vLLM TP 8, batch 8: TPOT ms by EAGLE-3 draft length k (rows) and acceptance a; "
          f"no speculation {base / 1e6:.2f} ms")
    rates = ("0.3", "0.5", "0.7", "0.9")
    print("   k " + "".join(f"  a={a:>4s}" for a in rates))
    for k in (1, 2, 3, 4, 6, 8):
        row = []
        for a in rates:
            spec = {"method": "eagle3", "num_speculative_tokens": k, "acceptance_rate": a}
            row.append(certify(with_fields("llama-3.1-70b-8xh100", engine={"speculative": spec}, batch=8), plan).estimate.tpot_ns)
        print(f"  {k:2d} " + "".join(f"  {t / 1e6:7.2f}" for t in row))
    print()
    print("Llama-3.1-70B, same plan: prefix-cache hit rate -> prefill of one prompt, TTFT (ms)")
    for hit in ("0", "0.25", "0.5", "0.75", "0.9"):
        sc = with_fields("llama-3.1-70b-8xh100", workload={"prefix_cache_hit_rate": hit}, batch=8)
        table = integer_costs(scenario=sc, layouts=(dense,), batches=(8,))
        print(f"  hit {hit:>4s}: prefill {table.phase_total_ns(table.prefill, 0) / 1e6:7.2f}  TTFT {table.ttft_ns(0) / 1e6:7.2f}")


if __name__ == "__main__":
    main()
