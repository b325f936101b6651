"""Fidelity to a reference: how close a variant's next-token distributions stay.

In one run, the reference variant (pytorch_eager fp32-sdpa-kv by default) and every other
variant score the same WikiText-2 windows with top-k log-probabilities. Per variant, over
every scored position:

- KL(reference || variant), mean and p99. Runners return only their top-k, so the KL is
  taken over a coarser partition of the vocabulary that both sides know exactly: each token
  in BOTH top-k lists is its own bucket, all the remaining mass is one bucket. By the
  data-processing inequality this is a lower bound of the full-vocabulary KL; it is zero
  only when the two distributions agree on every shared token.
- top-1 agreement: share of positions where both put the same token first.
- mean |Δp| of the correct token: |P_ref(token) - P_variant(token)| for the token that is
  actually there.
The mean KL and the top-1 agreement carry a 95% interval over windows (positions inside a
window are not independent; windows are the units).
"""
import math

from evaluator.stats import paired
from evaluator.stats.intervals import percentile

EPS = 1e-12  # floor for a bucket's probability: a lower bound stays finite


def _position_kl(ref_top, var_top) -> float:
    var = {t: lp for t, lp in var_top}
    shared = [(math.exp(lp), math.exp(var[t])) for t, lp in ref_top if t in var]
    p_rest = max(EPS, 1 - sum(p for p, _ in shared))
    q_rest = max(EPS, 1 - sum(q for _, q in shared))
    return sum(p * math.log(p / max(q, EPS)) for p, q in shared if p > 0) + p_rest * math.log(p_rest / q_rest)


def compare(reference: list[dict], variant: list[dict]) -> dict:
    """Both are the raw windows a quality cell stored: [{"logprobs": [...], "top": [...]}, ...]."""
    kls, agree, dp, window_kl, window_agree = [], 0, [], [], []
    for ref_w, var_w in zip(reference, variant, strict=True):
        start, agreed = len(kls), agree
        for r_lp, v_lp, r_top, v_top in zip(ref_w["logprobs"], var_w["logprobs"], ref_w["top"], var_w["top"], strict=True):
            kls.append(_position_kl(r_top, v_top))
            agree += r_top[0][0] == v_top[0][0]
            dp.append(abs(math.exp(r_lp) - math.exp(v_lp)))
        if len(kls) > start:
            window_kl.append(sum(kls[start:]) / (len(kls) - start))
            window_agree.append((agree - agreed) / (len(kls) - start))
    kls_sorted = sorted(kls)
    return {
        "positions": len(kls), "windows": len(window_kl),
        "kl_mean": sum(kls) / len(kls), "kl_mean_ci": paired.mean_interval(window_kl)["ci"],
        "kl_median": percentile(kls_sorted, 50), "kl_p99": percentile(kls_sorted, 99),
        "top1_agreement": agree / len(kls), "top1_agreement_ci": paired.mean_interval(window_agree)["ci"],
        "mean_abs_dp_correct": sum(dp) / len(dp),
        "kl_definition": "KL(reference || variant) over the tokens in both top-k lists plus one bucket for the rest: "
                         "a lower bound of the full KL; intervals over windows (Student's t)",
    }
