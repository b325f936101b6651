"""The quality budget's rounds, driven through the real quality scenario by fake engines whose
answers are known: who stops when, and how far the reference is scored."""
import math
import random
from dataclasses import dataclass

import pytest

from evaluator.score import budget, gate, hellaswag, perplexity
from evaluator.score.quality import Quality, Round, run, windows_for

ITEMS = hellaswag.load()


class FakeTok:
    """One token per text, so an item is known by its prefix; a long stream for perplexity."""
    bos, context_length = 1, 512

    def __init__(self, stream: int = 4000):
        self.ids = {}
        self.stream = stream

    def encode(self, text):
        return [self.ids.setdefault(text, len(self.ids) + 2)]

    def encode_cached(self, key, text):
        rng = random.Random(0)
        return [rng.randrange(2, 302) for _ in range(self.stream)]


@dataclass
class FakeRunner:
    """Right on an item when its seeded coin says so; a variant flips a share of the items."""
    tok: FakeTok
    flip_gain: float = 0.0   # share of items where the variant is right and the reference wrong
    flip_loss: float = 0.0   # the reverse
    ppl_shift: float = 0.0   # extra NLL per token on the WikiText-2 windows, varying by window
    windows_scored: int = 0

    def request(self, op, timeout_s, groups=None, sequences=None, start=None, top_k=0, want=None):
        if sequences is not None:  # perplexity windows: the reference's NLL is 1 nat per token
            self.windows_scored += len(sequences)
            return {"results": [self._window(s, start, top_k, want[i] if want else None) for i, s in enumerate(sequences)]}
        by_context = {self.tok.ids[item.context]: item for item in ITEMS if item.context in self.tok.ids}
        results = []
        for g in groups:
            item = by_context[g["prefix"][1]]
            coin = random.Random(item.index).random()
            right = coin < 0.5
            if right and coin < self.flip_loss:
                right = False
            elif not right and coin > 1 - self.flip_gain:
                right = True
            best = item.label if right else (item.label + 1) % 4
            results.append([{"logprobs": [0.0 if j == best else -50.0]} for j in range(4)])
        return {"results": results}

    def _window(self, s, start, top_k, want):
        """Answers as the protocol has them: top-k ids when asked, the log-probabilities of the
        reference's ids when given (one id per rank, ranked one nat apart)."""
        lp = -1.0 - self.ppl_shift * random.Random(hash(tuple(s[:8]))).uniform(0.5, 1.5)
        positions = len(s) - start
        res = {"logprobs": [lp] * positions,
               "top": [[[2 + j, lp - j] for j in range(top_k)] for _ in range(positions)] if top_k else None}
        if want:
            res["wanted"] = [[lp - j for j in range(len(ids))] for ids in want]
        return res


@dataclass(frozen=True)
class Target:
    name: str = "local"


@dataclass(frozen=True)
class Cell:
    id: str
    flips: tuple
    ppl_shift: float = 0.0
    target: Target = Target()


def recorded(sc: Quality, tok: FakeTok):
    """(the sessions run, as (cell id, upto)), and a session that runs the fake engine of a cell."""
    sessions = []

    def session(cell, rnd):
        sessions.append((cell.id, rnd.upto))
        metrics, raw = run(FakeRunner(tok, *cell.flips), tok, sc, 10.0, 4, rnd)
        return {"status": "ok", "metrics": metrics, "raw_data": raw}
    return sessions, session


def test_each_variant_stops_when_its_verdict_is_known_and_the_reference_only_as_far_as_needed():
    sc = Quality(items="auto", ppl_max_tokens=None)
    tok = FakeTok()
    reference = Cell("reference", (0.0, 0.0))
    cells = [reference,
             Cell("identical", (0.0, 0.0)),          # PASS once the interval is narrow enough
             Cell("broken", (0.0, 0.2)),             # loses 20% of the items: FAIL at the first look
             Cell("close", (0.003, 0.003)),          # disagrees rarely: needs a second round
             Cell("coin", (0.03, 0.03))]             # disagrees often, no net change: futile
    sessions, session = recorded(sc, tok)

    state = budget.run(cells, sc, 0.01, lambda c: reference, session, lambda r: r["raw_data"], lambda c: "here", {})
    scored = {cid: r["metrics"]["hellaswag"]["items"] for cid, r in state.items()}
    verdicts = {c.id: gate.assess(state["reference"]["raw_data"], state[c.id]["raw_data"], 0.01, sc.design(),
                                  sc.total_items)["verdict"] for c in cells[1:]}
    assert verdicts == {"identical": "PASS", "broken": "FAIL", "close": "PASS", "coin": "INCONCLUSIVE"}
    assert scored["broken"] == 500 and scored["identical"] == 500, "decided at the first look"
    assert scored["close"] > 1000 and scored["reference"] >= max(scored.values())
    assert scored["coin"] < sc.total_items, "stopped for futility, not at the end of the set"
    assert "futile" in state["coin"]["metrics"]["hellaswag"]["order"]["stopped"]
    # Each later round goes one planned look further, as far as `close` needs, and no further.
    assert [s for s in sessions if s[0] == "reference"] == [("reference", 1000), ("reference", 2000),
                                                            ("reference", 4000)] and scored["reference"] == 4000
    assert all(s[0] in ("reference", "close") for s in sessions[5:]), "only the undecided variant goes on"


def test_answers_kept_from_an_earlier_run_start_no_session_where_they_decide():
    """As score/reuse.py hands them over: the answers, with whether the verdict is known left to
    this run's gate (its allowed loss may differ)."""
    sc, tok = Quality(items="auto", ppl_max_tokens=None), FakeTok()
    reference = Cell("reference", (0.0, 0.0))
    cells = [reference, Cell("identical", (0.0, 0.0)), Cell("broken", (0.0, 0.2)), Cell("close", (0.003, 0.003))]
    sessions = []

    def session(cell, rnd):
        sessions.append((cell.id, rnd.upto, rnd.previous is not None))
        metrics, raw = run(FakeRunner(tok, *cell.flips), tok, sc, 10.0, 4, rnd)
        return {"status": "ok", "metrics": metrics, "raw_data": raw}

    def as_kept(result):
        hs = result["metrics"]["hellaswag"]
        order = dict(hs["order"], final=hs["items"] >= hs["order"]["planned"])
        return dict(result, metrics=dict(result["metrics"], hellaswag=dict(hs, order=order)))

    first = budget.run(cells, sc, 0.01, lambda c: reference, session, lambda r: r["raw_data"], lambda c: "here", {})
    assert first["identical"]["metrics"]["hellaswag"]["items"] == 500, "kept with fewer items than a first round"
    sessions.clear()
    kept = {cid: as_kept(r) for cid, r in first.items()}
    again = budget.run(cells, sc, 0.01, lambda c: reference, session, lambda r: r["raw_data"], lambda c: "here", kept)
    assert sessions == [], "every verdict is decided by the kept answers"
    assert {cid: r["metrics"]["hellaswag"]["items"] for cid, r in again.items()} == {
        cid: r["metrics"]["hellaswag"]["items"] for cid, r in first.items()}
    # A stricter allowed loss: what the kept answers no longer decide goes on from them.
    budget.run(cells, sc, 0.002, lambda c: reference, session, lambda r: r["raw_data"], lambda c: "here", kept)
    assert sessions and all(previous for _, _, previous in sessions), "scoring goes on from the kept answers"
    assert "broken" not in {cid for cid, _, _ in sessions}, "a FAIL stays decided"


def test_variants_start_where_a_perfect_copy_could_first_be_decided():
    """With 0.2% allowed of a 0.5 accuracy (0.001), a variant that agrees on every item is not
    decided before ~2,500 items: the reference goes on to the next look before any variant
    starts, and the variants' first session goes that far (still looking at 500 and 1,000)."""
    sc, tok = Quality(items="auto", ppl_max_tokens=None), FakeTok()
    reference = Cell("reference", (0.0, 0.0))
    cells = [reference, Cell("identical", (0.0, 0.0)), Cell("broken", (0.0, 0.2))]
    sessions, session = recorded(sc, tok)

    state = budget.run(cells, sc, 0.002, lambda c: reference, session, lambda r: r["raw_data"], lambda c: "here", {})
    assert sessions[:4] == [("reference", 1000), ("reference", 2000), ("identical", 2000), ("broken", 2000)]
    assert state["broken"]["metrics"]["hellaswag"]["items"] == 500, "a variant that fails early still stops early"
    sessions.clear()
    budget.run(cells, sc, 0.01, lambda c: reference, session, lambda r: r["raw_data"], lambda c: "here", {})
    assert sessions[:2] == [("reference", 1000), ("identical", 1000)], "where a perfect copy is decided by then: as before"


def test_a_fixed_number_of_items_is_one_round_and_one_look():
    sc = Quality(items="600")
    tok = FakeTok()
    cells = [Cell("reference", (0.0, 0.0)), Cell("close", (0.003, 0.003))]
    sessions, session = recorded(sc, tok)

    state = budget.run(cells, sc, 0.01, lambda c: cells[0], session, lambda r: r["raw_data"], lambda c: "here", {})
    assert sessions == [("reference", 600), ("close", 600)]
    assert sc.design()["looks"] == [600] and sc.design()["z"] == pytest.approx(1.96, abs=1e-3)
    assert state["close"]["metrics"]["hellaswag"]["order"]["stopped"] == "every planned item"


def test_perplexity_is_scored_on_the_items_share_of_the_windows_and_decides_with_them():
    sc = Quality(items="auto")
    tok = FakeTok(stream=200_000)
    cells = [Cell("reference", (0.0, 0.0)), Cell("same", (0.0, 0.0)), Cell("worse", (0.0, 0.0), ppl_shift=0.05)]

    def session(cell, rnd):
        metrics, raw = run(FakeRunner(tok, *cell.flips, cell.ppl_shift), tok, sc, 10.0, 4, rnd)
        return {"status": "ok", "metrics": metrics, "raw_data": raw}

    state = budget.run(cells, sc, 0.01, lambda c: cells[0], session, lambda r: r["raw_data"], lambda c: "here", {})
    ref = state["reference"]["raw_data"]["perplexity"]["rolling"]
    total = ref["windows_total"]
    assert len(ref["windows"]) == windows_for(sc, 1000, total) < total / 5
    assert ref["windows"] == perplexity.window_order(total, sc.seed)[: len(ref["windows"])]
    worse = gate.assess(state["reference"]["raw_data"], state["worse"]["raw_data"], 0.01, sc.design(), sc.total_items)
    assert worse["perplexity"]["verdict"] == "FAIL" and worse["hellaswag"]["acc_norm"]["verdict"] == "PASS"
    assert state["worse"]["metrics"]["hellaswag"]["order"]["stopped"] == "gate verdict FAIL at 500 items"
    stopped_early = state["worse"]["raw_data"]["perplexity"]["rolling"]["windows"]
    assert len(stopped_early) == windows_for(sc, 500, total), "windows go with the items, look by look"
    sample = state["worse"]["metrics"]["perplexity"]["rolling"]
    lo, hi = sample["token_perplexity_ci"]
    assert lo < sample["token_perplexity"] < hi, "a sample of windows: the whole file's perplexity lies within"
    # Per word and per byte: the sample's rate times the whole file's tokens, over its words or
    # bytes, with the rate's interval scaled the same way (comparable across tokenizers).
    for name in ("word_perplexity", "bits_per_byte"):
        lo, hi = sample[f"{name}_ci"]
        assert lo < sample[name] < hi, name
    rate = sample["nll"] / sample["tokens"]
    whole = sum(len(w.tokens) - w.start for w in perplexity.rolling_windows(tok.encode_cached("", ""), tok.bos, 512, 256))
    assert sample["bits_per_byte"] == pytest.approx(rate * whole / (math.log(2) * sample["bytes"]))


def test_a_later_round_scores_only_the_windows_it_adds():
    sc = Quality(items="auto")
    tok = FakeTok(stream=200_000)
    first = FakeRunner(tok)
    m1, raw1 = run(first, tok, sc, 10.0, 4, Round(1000))
    second = FakeRunner(tok)
    m2, raw2 = run(second, tok, sc, 10.0, 4, Round(2000, (m1, raw1)))
    before, after = raw1["perplexity"]["rolling"], raw2["perplexity"]["rolling"]
    assert after["windows"][: len(before["windows"])] == before["windows"]
    assert len(after["windows"]) == windows_for(sc, 2000, after["windows_total"])
    assert second.windows_scored == len(after["windows"]) - len(before["windows"]) > 0
    assert m2["hellaswag"]["items"] == 2000
