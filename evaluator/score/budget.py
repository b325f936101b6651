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
from evaluator.score.quality import Quality, Round

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
    upto = first_extent(sc)
    while True:
        for ref in refs:
            res = state[ref.id]
            if ref.id in fixed:
                continue
            if res is None or (_ok(res) and scored(res) < upto):
                state[ref.id] = session(ref, Round(upto, _previous(res, raw_of)))

        def advance(group, upto=upto):
            for c in group:
                res, ref = state[c.id], reference_of(c)
                if res is not None and (not _ok(res) or _final(res) or scored(res) >= upto):
                    continue
                ref_res = state[ref.id] if ref else None
                ref_raw = raw_of(ref_res) if _ok(ref_res) else None
                paired = same_tokens(c)
                judge = gate.judge(ref_raw, margin, design, total, paired) if ref_raw else None
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
                # One planned look further at most: a projection from few disagreements is
                # rough, and an extension is paid by the reference on every item.
                ahead = next((n for n in design["looks"] if n > upto), total)
                need = max(need, min(next((n for n in design["looks"] if n >= want), total), ahead))
                still.append(c)
        if not still or need <= upto:
            return state
        upto, pending = min(total, need), still


def _previous(result: dict | None, raw_of: Callable) -> tuple[dict, dict] | None:
    return (result["metrics"], raw_of(result)) if _ok(result) else None
