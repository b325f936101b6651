"""The quality budget's rounds, driven through the real quality scenario by fake engines whose
answers are known: who stops when, and how far the reference is scored."""
import random
from dataclasses import dataclass

import pytest

from evaluator.score import budget, gate, hellaswag
from evaluator.score.quality import Quality, run

ITEMS = hellaswag.load()


class FakeTok:
    """One token per text, so an item is known by its prefix; a long stream for perplexity."""
    bos, context_length = 1, 512

    def __init__(self):
        self.ids = {}

    def encode(self, text):
        return [self.ids.setdefault(text, len(self.ids) + 2)]

    def encode_cached(self, key, text):
        return [t % 300 + 2 for t in range(4000)]


@dataclass
class FakeRunner:
    """Right on an item when its seeded coin says so; a variant flips a share of the items."""
    tok: FakeTok
    flip_gain: float = 0.0   # share of items where the variant is right and the reference wrong
    flip_loss: float = 0.0   # the reverse

    def request(self, op, timeout_s, groups=None, sequences=None, start=None, top_k=0):
        if sequences is not None:  # perplexity windows: the same everywhere
            return {"results": [{"logprobs": [-1.0] * (len(s) - start), "top": None} for s in sequences]}
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


@dataclass(frozen=True)
class Target:
    name: str = "local"


@dataclass(frozen=True)
class Cell:
    id: str
    flips: tuple
    target: Target = Target()


def test_each_variant_stops_when_its_verdict_is_known_and_the_reference_only_as_far_as_needed():
    sc = Quality(items="auto", ppl_max_tokens=None)
    tok = FakeTok()
    reference = Cell("reference", (0.0, 0.0))
    cells = [reference,
             Cell("identical", (0.0, 0.0)),          # PASS once the interval is narrow enough
             Cell("broken", (0.0, 0.2)),             # loses 20% of the items: FAIL at the first look
             Cell("close", (0.003, 0.003)),          # disagrees rarely: needs a second round
             Cell("coin", (0.03, 0.03))]             # disagrees often, no net change: futile
    sessions = []

    def session(cell, rnd):
        sessions.append((cell.id, rnd.upto))
        metrics, raw = run(FakeRunner(tok, *cell.flips), tok, sc, 10.0, 4, rnd)
        return {"status": "ok", "metrics": metrics, "raw_data": raw}

    state = budget.run(cells, sc, 0.01, lambda c: reference, session, lambda r: r["raw_data"], lambda c: "here", {})
    scored = {cid: r["metrics"]["hellaswag"]["items"] for cid, r in state.items()}
    verdicts = {c.id: gate.assess(state["reference"]["raw_data"], state[c.id]["raw_data"], 0.01, sc.design(),
                                  sc.total_items)["verdict"] for c in cells[1:]}
    assert verdicts == {"identical": "PASS", "broken": "FAIL", "close": "PASS", "coin": "INCONCLUSIVE"}
    assert scored["broken"] == 500 and scored["identical"] == 500, "decided at the first look"
    assert scored["close"] > 1000 and scored["reference"] >= max(scored.values())
    assert scored["coin"] < sc.total_items, "stopped for futility, not at the end of the set"
    assert "futile" in state["coin"]["metrics"]["hellaswag"]["order"]["stopped"]
    # Round 2 goes as far as the projection for `close` said (a planned look), and only that far.
    assert [s for s in sessions if s[0] == "reference"] == [("reference", 1000), ("reference", scored["reference"])]
    assert scored["reference"] in sc.design()["looks"] and scored["reference"] < sc.total_items
    assert all(s[0] in ("reference", "close") for s in sessions[5:]), "only the undecided variant goes on"


def test_a_fixed_number_of_items_is_one_round_and_one_look():
    sc = Quality(items="600")
    tok = FakeTok()
    cells = [Cell("reference", (0.0, 0.0)), Cell("close", (0.003, 0.003))]
    sessions = []

    def session(cell, rnd):
        sessions.append((cell.id, rnd.upto))
        metrics, raw = run(FakeRunner(tok, *cell.flips), tok, sc, 10.0, 4, rnd)
        return {"status": "ok", "metrics": metrics, "raw_data": raw}

    state = budget.run(cells, sc, 0.01, lambda c: cells[0], session, lambda r: r["raw_data"], lambda c: "here", {})
    assert sessions == [("reference", 600), ("close", 600)]
    assert sc.design()["looks"] == [600] and sc.design()["z"] == pytest.approx(1.96, abs=1e-3)
    assert state["close"]["metrics"]["hellaswag"]["order"]["stopped"] == "every planned item"
