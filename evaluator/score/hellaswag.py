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
Each with its standard error (sample variance) and a 95% Wilson interval. Items are scored
in a seeded random order (`order`), so the first n of them are a random subset of n items:
what a quality budget that stops early, or a fixed --quality-items N, scores.
"""
import bz2
import random
from dataclasses import dataclass
from functools import cache

from evaluator.catalog.backends import REPO
from evaluator.stats.intervals import binomial_stderr, wilson_interval

DATA = REPO / "data" / "hellaswag" / "hellaswag_val_full.txt.bz2"
ITEMS = 10042


@dataclass(frozen=True)
class Item:
    index: int
    context: str
    label: int
    endings: tuple


@cache
def load() -> tuple[Item, ...]:
    lines = bz2.decompress(DATA.read_bytes()).decode("utf-8").split("\n")
    items = []
    for i in range(len(lines) // 6):
        block = lines[6 * i: 6 * i + 6]
        items.append(Item(i, block[0], int(block[1]), tuple(block[2:6])))
    if len(items) != ITEMS:
        raise RuntimeError(f"{DATA} holds {len(items)} items, expected {ITEMS}")
    return tuple(items)


def order(items: list[Item], seed: int) -> list[Item]:
    """Every item, in the seeded random order scoring follows."""
    return [items[i] for i in random.Random(seed).sample(range(len(items)), len(items))]


def correct(items: list[Item], ending_logprob_sums: list[list[float]]) -> tuple[list[bool], list[bool]]:
    """Per item: (acc, acc_norm) correctness."""
    acc, acc_norm = [], []
    for item, sums in zip(items, ending_logprob_sums, strict=True):
        acc.append(max(range(4), key=lambda j: sums[j]) == item.label)
        normed = [s / len(e) for s, e in zip(sums, item.endings)]
        acc_norm.append(max(range(4), key=lambda j: normed[j]) == item.label)
    return acc, acc_norm


def requests(items: list[Item], tok) -> list[dict]:
    """One shared-prefix score request per item: the same token ids for every backend."""
    return [{"prefix": [tok.bos] + tok.encode(item.context),
             "sequences": [tok.encode(" " + e) for e in item.endings]} for item in items]


def summarize(items: list[Item], ending_logprob_sums: list[list[float]]) -> dict:
    n = len(items)
    acc, acc_norm = correct(items, ending_logprob_sums)
    out = {"items": n, "of": ITEMS}
    for name, k in (("acc", sum(acc)), ("acc_norm", sum(acc_norm))):
        lo, hi = wilson_interval(k, n)
        out[name] = {"value": k / n, "correct": k, "stderr": binomial_stderr(k, n), "wilson95": [lo, hi]}
    return out
