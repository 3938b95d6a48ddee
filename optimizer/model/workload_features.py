"""Workload features that change the work per token: speculative decoding / MTP and prefix caching.
Exact integers and fractions here; the cost model (``cost.integer_costs``) and the memory model
(``memory.stage_fixed_bytes``) call these, so the solver, the oracle and the certificate all see them.

Speculative decoding (``engine.speculative``), sources:
- Expected tokens per verify step with k drafts, per-token acceptance a: ``(1 - a^(k+1)) / (1 - a)``
  (Leviathan, Kalman, Matias, ICML 2023, arXiv 2211.17192, eq. 1); TPOT = step time / that.
- A step is the target's forward pass over ``1 + k`` tokens per sequence (the next token and the k drafts,
  verified together) plus k passes of the draft module: vLLM V1 ``vllm/v1/spec_decode/eagle.py``
  (EagleProposer.propose runs the draft model once per speculative token; DeepSeek MTP, EAGLE and EAGLE-3
  all go through it), SGLang ``speculative/eagle_worker.py`` (``--speculative-num-steps`` draft forwards).
- The draft module sits on the last pipeline stage (vLLM loads the MTP / EAGLE head with the target's last
  PP rank: it reads the last hidden states) and shares the target's TP. DeepSeek-V3's MTP module is one
  transformer block of the model's own kind (an MoE layer), an ``eh_proj`` of ``2h x h`` and two RMSNorms;
  it shares the embedding and the output head (DeepSeek-V3 report, arXiv 2412.19437, section 2.2). An
  EAGLE head is one decoder layer and an ``fc`` of ``2h x h`` (EAGLE, arXiv 2401.15077); EAGLE-3's ``fc``
  takes three hidden states, ``3h x h`` (arXiv 2503.01840). Here the draft layer is costed and sized as
  one layer of the target's own kind (MoE for an MoE model, else dense): a published EAGLE head with its
  own width or vocabulary differs, so its figures are an approximation. N-gram drafting (prompt lookup)
  has no network: no draft cost, no draft memory. A separate draft model (``method: draft_model``, vLLM
  ``draft_model``, SGLang STANDALONE; Leviathan et al.'s setting) runs all its layers and its own embedding
  and LM head per pass, at the target's TP (``draft_scenario``), and holds all its weights and KV cache.
- The draft layers keep their own KV cache, one layer's worth per draft layer for every token of every
  running sequence (vLLM allocates KV-cache groups for the draft layers beside the target's).

Prefix caching (``workload.prefix_cache_hit_rate`` = h): a prompt of ``L`` tokens whose first ``c = floor(h x
L)`` tokens are in the cache (vLLM automatic prefix caching, on by default in V1,
docs/design/prefix_caching.md; SGLang RadixAttention, arXiv 2312.07104) prefills only ``L - c`` tokens; those
still attend over the whole prompt, so the attention core does ``pairs(L) - pairs(c)`` of the causal
``pairs(L) = L(L+1)/2`` (query, key) pairs. The running sequences' KV cache is unchanged (a hit shares
blocks, the sequence still holds its whole context).

KV-cache offload to host memory (``engine.kv_offload_bytes``): blocks evicted from HBM are kept in host memory
and copied back on a later prefix hit (vLLM's OffloadingConnector, ``--kv-offloading-size``, vllm/config/cache.py;
SGLang HiCache, docs/advanced_features/hicache_best_practices.md; TensorRT-LLM ``kv_cache_config.host_cache_size``).
It enlarges the store prefix hits come from; it never lets running sequences hold more KV cache than HBM does.
Modelled as a capacity only (``host_kv_cache_tokens``), reported beside the HBM the running batch leaves free:
the hit rate stays an input, and the copy back over PCIe is not costed.
"""

from __future__ import annotations

from fractions import Fraction

from optimizer.inputs.scenario import Scenario, SpeculativeMethod
from optimizer.units import ceil_div


def expected_tokens_per_step(scenario: Scenario) -> Fraction:
    """Tokens a decode step emits per sequence in expectation: 1 without speculation, else
    ``(1 - a^(k+1)) / (1 - a)`` (``Speculative.expected_tokens_per_step``). Exact."""
    spec = scenario.engine.speculative
    return Fraction(1) if spec is None else spec.expected_tokens_per_step


def verify_tokens_per_sequence(scenario: Scenario) -> int:
    """Tokens per sequence the target's decode forward pass processes: ``1 + k`` (1 without speculation)."""
    spec = scenario.engine.speculative
    return 1 if spec is None else 1 + spec.num_speculative_tokens


def draft_passes(scenario: Scenario) -> int:
    """Forward passes of the draft module per decode step: ``k`` (0 without speculation or for ngram)."""
    spec = scenario.engine.speculative
    if spec is None or spec.method is SpeculativeMethod.NGRAM:
        return 0
    return spec.num_speculative_tokens


def draft_layers(scenario: Scenario) -> int:
    """Decoder layers the draft module holds (weights and KV cache); 0 without one (none, ngram); the draft
    model's own count for ``draft_model``."""
    spec = scenario.engine.speculative
    if spec is None or spec.method is SpeculativeMethod.NGRAM:
        return 0
    if spec.draft_config is not None:
        return spec.draft_config.num_hidden_layers
    if spec.draft_layers is not None:
        return spec.draft_layers
    return scenario.model.num_nextn_predict_layers or 1 if spec.method is SpeculativeMethod.MTP else 1


def draft_scenario(scenario: Scenario) -> Scenario | None:
    """For ``method: draft_model``, the scenario with the draft model in the target's place and no speculation,
    so the cost and memory models size and cost it with the target's layout (vLLM runs the draft at the target's
    TP, ``draft_tensor_parallel_size`` defaulting to it: vllm/config/speculative.py); None otherwise."""
    spec = scenario.engine.speculative
    if spec is None or spec.draft_config is None:
        return None
    return scenario.model_copy(update={"model": spec.draft_config,
                                       "engine": scenario.engine.model_copy(update={"speculative": None})})


def draft_projection_params(scenario: Scenario) -> int:
    """Parameters of the draft's input projection besides its layers: MTP ``eh_proj`` ``2h x h`` plus two
    RMSNorms per draft layer, EAGLE ``fc`` ``2h x h``, EAGLE-3 ``fc`` ``3h x h`` (0 for ngram / none)."""
    spec = scenario.engine.speculative
    h = scenario.model.hidden_size
    if spec is None or spec.method in (SpeculativeMethod.NGRAM, SpeculativeMethod.DRAFT_MODEL):
        return 0
    if spec.method is SpeculativeMethod.MTP:
        return draft_layers(scenario) * (2 * h * h + 2 * h)
    return (3 if spec.method is SpeculativeMethod.EAGLE3 else 2) * h * h


def per_token_ns(step_ns: int, expected: Fraction) -> int:
    """``ceil(step_ns / expected)``: a step's time charged per emitted token, rounded up (exact)."""
    return ceil_div(step_ns * expected.denominator, expected.numerator)


def cached_prompt_tokens(scenario: Scenario) -> int:
    """Prompt tokens served from the prefix cache: ``floor(h x ISL)`` (the hit fraction rounded down, so
    the prefill is never under-counted)."""
    h, isl = scenario.workload.prefix_cache_hit_rate, scenario.workload.input_tokens
    return isl * h.numerator // h.denominator


def uncached_prompt_tokens(scenario: Scenario) -> int:
    """Prompt tokens the prefill computes: ``ISL - cached`` (>= 1, as the hit rate is below 1)."""
    return scenario.workload.input_tokens - cached_prompt_tokens(scenario)


def uncached_pair_share(scenario: Scenario) -> Fraction:
    """Share of the whole prompt's causal attention pairs the uncached tokens score:
    ``(pairs(L) - pairs(c)) / pairs(L)`` with ``pairs(n) = n(n+1)/2``; 1 with no hits. Exact."""
    isl, cached = scenario.workload.input_tokens, cached_prompt_tokens(scenario)
    return Fraction(isl * (isl + 1) - cached * (cached + 1), isl * (isl + 1))


def host_kv_cache_tokens(*, kv_offload_bytes: int, kv_bytes_per_token: tuple[int, ...]) -> int:
    """Tokens of prefix cache the host tier holds per replica: every GPU of a stage keeps the KV of its own
    layers for a token, so the smallest over stages of ``floor(kv_offload_bytes / KV bytes per token on that
    stage's GPU)``; 0 when offload is off or no stage holds KV cache. Exact."""
    per_token = [b for b in kv_bytes_per_token if b > 0]
    if not kv_offload_bytes or not per_token:
        return 0
    return min(kv_offload_bytes // b for b in per_token)
