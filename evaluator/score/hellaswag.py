"""HellaSwag (Zellers et al. 2019), validation split, all 10,042 items by default.

Data: data/hellaswag/hellaswag_val_full.txt.bz2, llama.cpp's text format, 6 lines per item:
context, gold label (0-3), four endings. Its preprocessing, done when the file was made:
context = activity_label + ": " + ctx; "[header]", "[step]", "[substeps]" removed, "[title]"
rewritten, double spaces collapsed. We use those lines as they are.

Scoring, per item: the context is [BOS] + tokens(context); each ending is tokens(" " + ending),
scored as a continuation of the context (one shared-prefix score request per item, so
engines that can compute the context once do). For ending j, L_j = sum of its tokens'
log-probabilities.
  acc      = share of items where argmax_j L_j is the gold ending
  acc_norm = share of items where argmax_j L_j / len(ending_j in characters) is gold
             (lm-evaluation-harness's definition; the leading space is not counted)
Each with its standard error (sample variance) and a 95% Wilson interval. `limit` takes a
seeded random subset of items (sorted by index), reproducible from (limit, seed).
"""
import bz2
import random
from dataclasses import dataclass

from evaluator.catalog.backends import REPO
from evaluator.measure.stats import binomial_stderr, wilson_interval

DATA = REPO / "data" / "hellaswag" / "hellaswag_val_full.txt.bz2"
ITEMS = 10042


@dataclass(frozen=True)
class Item:
    index: int
    context: str
    label: int
    endings: tuple


def load() -> list[Item]:
    lines = bz2.decompress(DATA.read_bytes()).decode("utf-8").split("\n")
    items = []
    for i in range(len(lines) // 6):
        block = lines[6 * i: 6 * i + 6]
        items.append(Item(i, block[0], int(block[1]), tuple(block[2:6])))
    if len(items) != ITEMS:
        raise RuntimeError(f"{DATA} holds {len(items)} items, expected {ITEMS}")
    return items


def select(items: list[Item], limit: int | None, seed: int) -> list[Item]:
    if limit is None or limit >= len(items):
        return items
    chosen = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in chosen]


def requests(items: list[Item], tok) -> list[dict]:
    """One shared-prefix score request per item: the same token ids for every backend."""
    return [{"prefix": [tok.bos] + tok.encode(item.context),
             "sequences": [tok.encode(" " + e) for e in item.endings]} for item in items]


def summarize(items: list[Item], ending_logprob_sums: list[list[float]]) -> dict:
    n = len(items)
    correct = correct_norm = 0
    for item, sums in zip(items, ending_logprob_sums):
        correct += max(range(4), key=lambda j: sums[j]) == item.label
        normed = [s / len(e) for s, e in zip(sums, item.endings)]
        correct_norm += max(range(4), key=lambda j: normed[j]) == item.label
    out = {"items": n, "of": ITEMS}
    for name, k in (("acc", correct), ("acc_norm", correct_norm)):
        lo, hi = wilson_interval(k, n)
        out[name] = {"value": k / n, "correct": k, "stderr": binomial_stderr(k, n), "wilson95": [lo, hi]}
    return out
