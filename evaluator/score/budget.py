"""The quality budget across a run's quality cells: rounds, until every verdict is known.

Round 1: each reference cell scores perplexity, the fidelity windows and the first
FIRST_ROUND (1,000) HellaSwag items (seeded order); then each variant scores the same, asking the
gate at every planned look whether to go on (gate.judge): it stops once its verdict is
decided, or once even the whole set would likely not decide it (futility). A variant still
undecided when it reaches the reference's items says how many items would likely decide it;
the next round extends the reference to the largest such need (rounded up to a planned look,
and at most one look further than this round: a projection from a few disagreements is
rough), then scores those variants further. So the reference is scored on every item some variant
needed, and no more. Each round of a cell is one runner session (a model is never held by
two runners at once); a cell's answers accumulate in its raw file.

With a fixed `--quality-items N` (or `all`) there is one round of N items and one look.
"""
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from evaluator.score import gate
from evaluator.score.quality import REFERENCE_EXHAUSTED, Quality, Round

FIRST_ROUND = 1000


def first_extent(sc: Quality) -> int:
    looks = sc.design()["looks"]
    return next((n for n in looks if n >= FIRST_ROUND), looks[-1]) if sc.sequential else sc.total_items


def scored(result: dict | None) -> int:
    return ((result or {}).get("metrics") or {}).get("hellaswag", {}).get("items", 0) if _ok(result) else 0


def _ok(result: dict | None) -> bool:
    return bool(result) and result.get("status") == "ok"


def _final(result: dict) -> bool:
    return result["metrics"]["hellaswag"]["order"].get("final", False)


def run(cells: list, sc: Quality, margin: float, reference_of: Callable, session: Callable, raw_of: Callable,
        machine_of: Callable, stored: dict, same_tokens: Callable = lambda cell: True) -> dict:
    """Score every quality cell in rounds. `session(cell, Round) -> result` runs one round and
    stores it; `raw_of(result)` reads a result's raw answers; `stored` holds results kept from
    before a resume, and the references of an earlier run (which are never scored further);
    `same_tokens(cell)` is False for a model that tokenizes unlike the reference's (only its
    HellaSwag items pair). Returns the latest result per cell id."""
    design, total = sc.design(), sc.total_items
    refs = list({r.id: r for r in (reference_of(c) for c in cells) if r is not None}.values())
    ref_ids = {r.id for r in refs}
    fixed = {r.id for r in refs if r.id not in {c.id for c in cells}}  # an earlier run's: as it is
    state = {c.id: stored.get(c.id) for c in [*cells, *refs]}
    pending = [c for c in cells if c.id not in ref_ids]
    upto, first = first_extent(sc), sc.sequential
    while True:
        for ref in refs:
            res = state[ref.id]
            if ref.id in fixed:
                continue
            if res is None or (_ok(res) and scored(res) < upto):
                state[ref.id] = session(ref, Round(upto, _previous(res, raw_of)))
        if first:
            first = False
            floor = _agreement_floor([raw_of(state[r.id]) for r in refs if r.id not in fixed and _ok(state[r.id])],
                                     margin, design, total, upto)
            if floor > upto:
                upto = floor  # the references go on first: no variant could be decided sooner
                continue

        def advance(group, upto=upto):
            for c in group:
                res, ref = state[c.id], reference_of(c)
                if res is not None and (not _ok(res) or _final(res) or scored(res) >= upto):
                    continue
                ref_res = state[ref.id] if ref else None
                ref_raw = raw_of(ref_res) if _ok(ref_res) else None
                paired = same_tokens(c)
                judge = gate.judge(ref_raw, margin, design, total, paired) if ref_raw else None
                if _ok(res) and judge and judge(raw_of(res), scored(res)) not in (None, REFERENCE_EXHAUSTED):
                    continue  # answers kept from an earlier run already decide it (score/reuse.py)
                state[c.id] = session(c, Round(upto, _previous(res, raw_of), judge,
                                               ref_raw.get("fidelity_windows") if ref_raw and paired else None))

        by_machine = {}
        for c in pending:
            by_machine.setdefault(machine_of(c), []).append(c)
        with ThreadPoolExecutor(max_workers=len(by_machine) or 1) as pool:
            for done in [pool.submit(advance, group) for group in by_machine.values()]:
                done.result()
        need, still = upto, []
        for c in pending:
            res, ref = state[c.id], reference_of(c)
            if not _ok(res) or _final(res) or not _ok(state[ref.id] if ref else None):
                continue
            if ref.id in fixed and scored(state[ref.id]) <= scored(res):
                continue  # an earlier run's reference has no more items to pair with
            g = gate.assess(raw_of(state[ref.id]), raw_of(res), margin, design, total, same_tokens=same_tokens(c))
            want = max((part.get("items_to_decide") or 0 for part in (g["hellaswag"]["acc_norm"], g.get("perplexity") or {})
                        if part.get("verdict") == "INCONCLUSIVE" and not part.get("futile")), default=0)
            if want:
                need = max(need, _look_for(want, upto, design, total))
                still.append(c)
        if not still or need <= upto:
            return state
        upto, pending = min(total, need), still


def _agreement_floor(ref_raws: list[dict], margin: float, design: dict, total: int, upto: int) -> int:
    """The planned look at which a variant agreeing with its reference on every item could first
    be decided (at most one look beyond `upto`). Near chance, the allowed loss is a small share of
    a small accuracy (1% of 0.24), and even a perfect copy needs ~2,000 items: starting the
    variants there saves each a runner session for a look that cannot decide it. They still
    look at every planned point on the way, so one that fails early stops early."""
    want = 0
    for raw in ref_raws:
        acc = gate.assess(raw, raw, margin, design, total, upto)["hellaswag"]["acc_norm"]
        if acc["verdict"] == "INCONCLUSIVE":
            want = max(want, acc.get("items_to_decide") or total)
    return _look_for(want, upto, design, total) if want > upto else upto


def _look_for(want: int, upto: int, design: dict, total: int) -> int:
    """The planned look that covers `want` items, but at most one look beyond `upto`: a
    projection from few disagreements is rough, and every extension is paid by the reference."""
    ahead = next((n for n in design["looks"] if n > upto), total)
    return min(next((n for n in design["looks"] if n >= want), total), ahead)


def _previous(result: dict | None, raw_of: Callable) -> tuple[dict, dict] | None:
    return (result["metrics"], raw_of(result)) if _ok(result) else None
