"""Recompute every stored quality gate of a run from its raw answers, independently of the
evaluator's statistics: per item, the ending with the highest log-probability sum per character
(acc_norm), the items only the variant gets right (b) and only the reference (c), and McNemar's
exact p from scipy's binomial test. Prints one line per variant; exits 1 on any mismatch.

    .venvs/host/bin/python benchmarks/audit_gates.py reports/<run-id>

Run it on a `--quality-items all` run to check the full set (the test suite checks 400 items).
"""
import json
import sys
from pathlib import Path

from scipy.stats import binomtest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from evaluator.score import hellaswag  # noqa: E402  (the data file's items: labels and ending lengths)


def right(raw: dict, items) -> dict[int, bool]:
    h = raw["hellaswag"]
    return {i: max(range(4), key=lambda j: sums[j] / len(items[i].endings[j])) == items[i].label
            for i, sums in zip(h["items"], h["ending_logprob_sums"])}


def main(folder: Path) -> int:
    items = hellaswag.load()
    cells = [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*__quality.json"))]
    raw = {c["cell_id"]: json.loads((folder / c["raw"]).read_text()) for c in cells if c.get("raw")}
    bad = 0
    for cell in cells:
        gate = (cell.get("quality_gate") or {}).get("hellaswag")
        if not gate:
            continue
        ref_id = next(c["cell_id"] for c in cells
                      if f'{c["backend"]}.{c["variant"]}@{c["target"]["name"]}' == cell["quality_gate"]["reference"])
        ref, var = right(raw[ref_id], items), right(raw[cell["cell_id"]], items)
        shared = raw[cell["cell_id"]]["hellaswag"]["items"][: gate["items"]]
        b = sum(var[i] and not ref[i] for i in shared)
        c = sum(ref[i] and not var[i] for i in shared)
        p = binomtest(b, b + c, 0.5).pvalue if b + c else 1.0
        stored = gate["acc_norm"]
        ok = (stored["gained"], stored["lost"], stored["items"]) == (b, c, len(shared)) and abs(stored["mcnemar_p"] - p) < 1e-9
        bad += not ok
        label = f'{cell["backend"]}:{cell["variant"]}'
        print(f'{label:<26} items {len(shared):>6}  gained {b:>4}  lost {c:>4}  '
              f'McNemar p {p:.4g}  stored ({stored["gained"]}, {stored["lost"]}, {stored["mcnemar_p"]:.4g})  '
              f'{"equal" if ok else "MISMATCH"}')
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "run.json").is_file():
        sys.exit("usage: audit_gates.py reports/<run-id>  (a run folder holding run.json)")
    sys.exit(main(Path(sys.argv[1])))
