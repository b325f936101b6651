"""The quality gate: a variant against the reference on the same items and windows.

Every comparison is paired (stats/paired.py) and every verdict three-way
(stats/sequential.py). The quality loss, in one unit everywhere (a share of the reference):
  HellaSwag   (reference acc_norm - variant acc_norm) / reference acc_norm
  perplexity  variant / reference rolling perplexity - 1
The gate decides on acc_norm and perplexity; acc is reported beside them. The allowed loss is
`--max-quality-loss` (one number, used by the gate and by the decision guide). The two
verdicts are not corrected for being two: the gate FAILs on either.
"""
import json
import math

from evaluator.score import hellaswag, quality
from evaluator.stats import paired, sequential
from evaluator.stats.intervals import Z95


def _items(raw: dict, n: int) -> tuple[list, list]:
    indices = raw["hellaswag"]["items"][:n]
    by_index = hellaswag.load()
    return [by_index[i] for i in indices], raw["hellaswag"]["ending_logprob_sums"][:n]


def hellaswag_pairs(ref_raw: dict, var_raw: dict, n: int, z: float, total: int, margin: float | None = None) -> dict:
    """Δacc and Δacc_norm over the first n items both scored, with the loss interval and, for
    acc_norm, the verdict and the items that would likely decide it."""
    ref_items, ref_sums = _items(ref_raw, n)
    var_items, var_sums = _items(var_raw, n)
    if [i.index for i in ref_items] != [i.index for i in var_items]:
        raise ValueError("the variant and the reference scored different HellaSwag items")
    n = len(ref_items)
    out = {"items": n}
    for name, ref_ok, var_ok in zip(("acc", "acc_norm"), hellaswag.correct(ref_items, ref_sums),
                                    hellaswag.correct(var_items, var_sums)):
        b, c = paired.discordance(ref_ok, var_ok)
        diff = paired.matched_difference(b, c, n, z)
        ref_acc = sum(ref_ok) / n
        scale = ref_acc or 1.0
        diff.update(reference=ref_acc, variant=sum(var_ok) / n,
                    loss=-diff["delta"] / scale, loss_ci=[-diff["ci"][1] / scale, -diff["ci"][0] / scale])
        out[name] = diff
    if margin is not None:
        _judge_acc(out["acc_norm"], margin, z, total)
    return out


def _judge_acc(acc: dict, margin: float, z: float, total: int) -> None:
    acc["verdict"] = sequential.verdict(acc["loss_ci"], margin)
    acc.pop("items_to_decide", None)
    acc.pop("futile", None)
    if acc["verdict"] == "INCONCLUSIVE":
        distance = abs(acc["delta"] + margin * (acc["reference"] or 1.0))
        need = sequential.items_to_decide(distance, acc["se"], z, acc["items"])
        acc["items_to_decide"] = need
        acc["futile"] = sequential.futile(need, total, acc["gained"] + acc["lost"])


def perplexity_pair(ref_raw: dict, var_raw: dict, margin: float | None = None, z: float = Z95,
                    total: int | None = None) -> dict | None:
    """The perplexity ratio over the windows both scored (the same seeded order on both sides),
    with the verdict and, when INCONCLUSIVE, the HellaSwag items (of `total`) whose share of the
    windows would likely decide it."""
    r, v = (_windows(raw) for raw in (ref_raw, var_raw))
    n = min(len(r["window_tokens"]), len(v["window_tokens"]))
    if n < 2 or r["windows"][:n] != v["windows"][:n] or r["window_tokens"][:n] != v["window_tokens"][:n]:
        return None
    out = paired.perplexity_ratio(r["window_nll"][:n], v["window_nll"][:n], r["window_tokens"][:n], z)
    out.update(loss=out["ratio"] - 1, loss_ci=[out["ci"][0] - 1, out["ci"][1] - 1])
    if margin is not None:
        _judge_ppl(out, margin, z, total, r.get("windows_total", n))
    return out


def _windows(raw: dict) -> dict:
    rolling = dict(raw["perplexity"]["rolling"])
    rolling.setdefault("windows", list(range(len(rolling["window_tokens"]))))  # before the seeded order
    return rolling


def _judge_ppl(ppl: dict, margin: float, z: float, total: int | None, windows_total: int) -> None:
    ppl["verdict"] = sequential.verdict(ppl["loss_ci"], margin)
    ppl.pop("items_to_decide", None)
    ppl.pop("futile", None)
    if ppl["verdict"] == "INCONCLUSIVE" and total:
        need = sequential.items_to_decide(abs(ppl["loss"] - margin), ppl["ratio"] * ppl["log_se"], z, ppl["windows"])
        ppl["futile"] = need is None or need > windows_total
        ppl["items_to_decide"] = None if ppl["futile"] else math.ceil(need / windows_total * total)
        ppl["windows_total"] = windows_total


def assess(ref_raw: dict, var_raw: dict, margin: float, design: dict, total: int, n: int | None = None,
           same_tokens: bool = True) -> dict:
    """The gate for one variant on the first n items both scored (default: all of them); the
    perplexity ratio only where both tokenized the text alike (`same_tokens`)."""
    n = min(len(ref_raw["hellaswag"]["items"]), len(var_raw["hellaswag"]["items"]), n or total)
    out = {"margin": margin, "design": design}
    verdicts = []
    if n:
        out["hellaswag"] = hellaswag_pairs(ref_raw, var_raw, n, design["z"], total, margin)
        verdicts.append(out["hellaswag"]["acc_norm"]["verdict"])
    ppl = perplexity_pair(ref_raw, var_raw, margin, design["z"], total) if same_tokens else None
    if ppl:
        out["perplexity"] = ppl
        verdicts.append(ppl["verdict"])
    out["verdict"] = sequential.combine(verdicts)
    out["reasons"] = reasons(out)
    out["total"] = total
    return out


def rejudge(stored: dict, margin: float) -> dict:
    """A stored gate under another allowed loss: the intervals stay, the verdicts follow."""
    g = json.loads(json.dumps(stored))
    g["margin"], verdicts = margin, []
    acc = (g.get("hellaswag") or {}).get("acc_norm")
    if acc:
        _judge_acc(acc, margin, g["design"]["z"], g.get("total", acc["items"]))
        verdicts.append(acc["verdict"])
    if g.get("perplexity"):
        ppl = g["perplexity"]
        _judge_ppl(ppl, margin, g["design"]["z"], g.get("total"), ppl.get("windows_total", ppl["windows"]))
        verdicts.append(g["perplexity"]["verdict"])
    g["verdict"] = sequential.combine(verdicts)
    g["reasons"] = reasons(g)
    return g


def reasons(gate: dict) -> list[str]:
    """One sentence per metric that is not a PASS, with its interval."""
    out, m = [], 100 * gate["margin"]
    acc = (gate.get("hellaswag") or {}).get("acc_norm")
    if acc and acc["verdict"] != "PASS":
        lo, hi = (100 * x for x in acc["loss_ci"])
        line = (f"acc_norm loss {100 * acc['loss']:+.2f}% [{lo:+.2f}, {hi:+.2f}] of the reference's "
                f"({acc['gained']} items gained, {acc['lost']} lost of {acc['items']}, McNemar p = {acc['mcnemar_p']:.3g}) "
                f"against the {m:g}% allowed: {acc['verdict']}")
        if acc["verdict"] == "INCONCLUSIVE":
            need = acc.get("items_to_decide")
            line += ("; even the whole set would likely not decide it" if acc.get("futile")
                     else f"; about {need:,} items would likely decide it" if need
                     else "; its estimate sits on the margin: more items would likely not decide it")
        out.append(line)
    ppl = gate.get("perplexity")
    if ppl and ppl["verdict"] != "PASS":
        lo, hi = (100 * x for x in ppl["loss_ci"])
        line = f"perplexity {100 * ppl['loss']:+.2f}% [{lo:+.2f}, {hi:+.2f}] against the {m:g}% allowed: {ppl['verdict']}"
        if ppl["verdict"] == "INCONCLUSIVE":
            need = ppl.get("items_to_decide")
            line += ("; even every window would likely not decide it" if ppl.get("futile")
                     else f"; the windows beside about {need:,} items would likely decide it" if need else "")
        out.append(line)
    return out


def _part(g: dict, name: str) -> dict:
    return g["hellaswag"]["acc_norm"] if name == "acc_norm" else g["perplexity"]


def judge(ref_raw: dict, margin: float, design: dict, total: int, same_tokens: bool = True):
    """The stopping rule a variant's quality cell asks at each look: a reason to stop, or None."""
    def at_look(var_raw: dict, n: int) -> str | None:
        if n > len(ref_raw["hellaswag"]["items"]):
            return quality.REFERENCE_EXHAUSTED
        g = assess(ref_raw, var_raw, margin, design, total, n, same_tokens)
        if g["verdict"] != "INCONCLUSIVE":
            return f"gate verdict {g['verdict']} at {n} items"
        open_parts = [name for name, part in (("acc_norm", g["hellaswag"]["acc_norm"]), ("perplexity", g.get("perplexity")))
                      if part and part["verdict"] == "INCONCLUSIVE"]
        if all(_part(g, name).get("futile") for name in open_parts):
            return f"futile at {n} items: the whole set would likely not decide {' or '.join(open_parts)}"
        return None
    return at_look
