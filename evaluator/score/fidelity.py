"""Fidelity to a reference: how close a variant's next-token distributions stay.

In one run, the reference variant (pytorch_eager fp32-sdpa-kv by default) and every other
variant score the same WikiText-2 windows with top-k log-probabilities. Per variant, over
every scored position:

- KL(reference || variant), mean, median and p99, over a partition of the vocabulary that
  both sides know exactly: each of the reference's top-k tokens is its own bucket and all the
  remaining mass is one bucket, k the whole vocabulary where it is small (quality.FULL_VOCAB:
  then the KL is exact). The variant is scored after the reference and is sent the reference's
  top ids (the protocol's `want`), so it returns its own log-probabilities for exactly those
  tokens: one shared partition. Each position's KL is computed then, while the reference's
  distributions are at hand (`with_kl`), and stored instead of those log-probabilities (for a
  512-token vocabulary they would be 512 numbers a position, per variant). Below the whole
  vocabulary it is a lower bound of the full KL (the data-processing inequality), tight where
  the reference's top-k holds most of its mass (the share it holds is reported; on stories260K
  bf16 the top-10 bound read 80% of the exact KL, top-64 98%, top-128 99.9%). An engine that
  cannot return chosen ids gets the looser partition of the tokens in BOTH top-k lists plus
  the rest, and the result says so.
- top-1 agreement: share of positions where both put the same token first.
- mean |Δp| of the correct token: |P_ref(token) - P_variant(token)| for the token that is
  actually there.
The mean KL and the top-1 agreement carry a 95% interval over windows (positions inside a
window are not independent; windows are the units); the median and p99 a percentile bootstrap
that resamples whole windows (a cluster bootstrap, seeded).
"""
import math

import numpy as np

from evaluator.stats import paired
from evaluator.stats.intervals import BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, CONFIDENCE, percentile

EPS = 1e-12  # floor for a bucket's probability: a lower bound stays finite


def _position_kl(ref_top, var_top) -> float:
    var = {t: lp for t, lp in var_top}
    shared = [(math.exp(lp), math.exp(var[t])) for t, lp in ref_top if t in var]
    p_rest = max(EPS, 1 - sum(p for p, _ in shared))
    q_rest = max(EPS, 1 - sum(q for _, q in shared))
    return sum(p * math.log(p / max(q, EPS)) for p, q in shared if p > 0) + p_rest * math.log(p_rest / q_rest)


def _shared_kl(ref_top, wanted) -> float:
    """KL over {each of the reference's top ids} + {the rest}, the variant's probabilities of
    those very ids given (`wanted`, in the same order)."""
    p = [math.exp(lp) for _, lp in ref_top]
    q = [math.exp(lp) for lp in wanted]
    p_rest, q_rest = max(EPS, 1 - sum(p)), max(EPS, 1 - sum(q))
    return sum(pi * math.log(pi / max(qi, EPS)) for pi, qi in zip(p, q) if pi > 0) + p_rest * math.log(p_rest / q_rest)


def with_kl(window: dict, reference_window: dict) -> dict:
    """A variant's fidelity window as it is stored: its KL against the reference at each position
    (from its `wanted` log-probabilities of the reference's top ids, which are then dropped)."""
    kl = [_shared_kl(r, w) for r, w in zip(reference_window["top"], window["wanted"], strict=True)]
    return {k: v for k, v in window.items() if k != "wanted"} | {"kl": kl}


def _window_bootstrap(per_window: list[list[float]], qs: tuple) -> list:
    """95% intervals of the pooled percentiles `qs`, resampling whole windows."""
    arrays = [np.asarray(w) for w in per_window if w]
    if len(arrays) < 2:
        return [None] * len(qs)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    stats = np.array([np.percentile(np.concatenate([arrays[i] for i in rng.integers(0, len(arrays), len(arrays))]), qs)
                      for _ in range(BOOTSTRAP_RESAMPLES)])
    lo, hi = np.quantile(stats, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2], axis=0)
    return [[float(a), float(b)] for a, b in zip(lo, hi)]


def _whole(windows: list[dict], vocab_size: int | None) -> bool:
    """Every position's top list is the whole vocabulary."""
    return bool(vocab_size) and all(len(top) == vocab_size for w in windows for top in w["top"])


def compare(reference: list[dict], variant: list[dict], vocab_size: int | None = None) -> dict:
    """Both are the raw windows a quality cell stored: [{"logprobs": [...], "top": [...]}, ...];
    a variant's windows may hold "kl" (each position's KL over the shared partition, `with_kl`)
    or, as earlier versions stored, "wanted". The KL is exact where the reference's top lists are
    its whole vocabulary and the variant shared them (or sent its whole vocabulary too)."""
    kls, agree, dp, window_kl, window_agree, covered, starts = [], 0, [], [], [], [], []
    shared = all("kl" in w or "wanted" in w for w in variant)
    for ref_w, var_w in zip(reference, variant, strict=True):
        if ref_w.get("window", var_w.get("window")) != var_w.get("window", ref_w.get("window")):
            raise ValueError(f"the reference's fidelity window {ref_w['window']} is paired with the variant's {var_w['window']}")
        start, agreed = len(kls), agree
        starts.append(start)
        if shared:
            kls += var_w["kl"] if "kl" in var_w else [_shared_kl(r, w) for r, w in zip(ref_w["top"], var_w["wanted"], strict=True)]
        else:
            kls += [_position_kl(r, v) for r, v in zip(ref_w["top"], var_w["top"], strict=True)]
        for r_lp, v_lp, r_top, v_top in zip(ref_w["logprobs"], var_w["logprobs"], ref_w["top"], var_w["top"], strict=True):
            covered.append(sum(math.exp(lp) for _, lp in r_top))
            agree += r_top[0][0] == v_top[0][0]
            dp.append(abs(math.exp(r_lp) - math.exp(v_lp)))
        if len(kls) != len(dp):
            raise ValueError(f"window {len(starts)}: {len(kls) - start} KL values for {len(dp) - start} positions")
        if len(kls) > start:
            window_kl.append(sum(kls[start:]) / (len(kls) - start))
            window_agree.append((agree - agreed) / (len(kls) - start))
    kls_sorted = sorted(kls)
    median_ci, p99_ci = _window_bootstrap([kls[a:b] for a, b in zip(starts, starts[1:] + [len(kls)])], (50, 99))
    exact = _whole(reference, vocab_size) and (shared or _whole(variant, vocab_size))
    return {
        "positions": len(kls), "windows": len(window_kl),
        "kl_mean": sum(kls) / len(kls), "kl_mean_ci": paired.mean_interval(window_kl)["ci"],
        "kl_median": percentile(kls_sorted, 50), "kl_median_ci": median_ci,
        "kl_p99": percentile(kls_sorted, 99), "kl_p99_ci": p99_ci,
        "top1_agreement": agree / len(kls), "top1_agreement_ci": paired.mean_interval(window_agree)["ci"],
        "mean_abs_dp_correct": sum(dp) / len(dp),
        "kl_partition": "shared" if shared else "each side's top-k",
        "reference_mass_covered": sum(covered) / len(covered),
        "kl_definition": f"KL(reference || variant) {_partition(reference, shared, exact)}; intervals over windows (Student's t)",
        "kl_exact": exact,
    }


def _partition(reference: list[dict], shared: bool, exact: bool) -> str:
    if exact:
        return "over the full vocabulary (exact)"
    if shared:
        return (f"over the reference's top-{len(reference[0]['top'][0])} tokens (the variant's probabilities of those "
                "very tokens) plus one bucket for the rest: a lower bound of the full KL")
    return "over the tokens in both top-k lists plus one bucket for the rest: a lower bound of the full KL"
