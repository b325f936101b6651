"""Where a cell's time went: seconds per named phase, so the next slow part is obvious.

A cell records its phases (environment, runner start, load, the greedy check, the timing
loops, and for quality HellaSwag and WikiText-2 apart); the run's summary adds them up
(`summarize`), and the report shows them per cell.
"""
import time
from contextlib import contextmanager


class Phases:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.monotonic() - t0

    def as_dict(self) -> dict[str, float]:
        return {name: round(s, 2) for name, s in self.seconds.items()}


def summarize(results: list[dict], wall_s: float, top: int = 3) -> list[str]:
    """Lines for the run's summary: each phase's total over every cell (largest first, with
    the cells that spent most in it), against the run's wall time."""
    totals, by_cell = {}, {}
    for r in results:
        for rnd in r.get("rounds") or [{"phases": r.get("phases") or {}}]:
            for name, s in (rnd.get("phases") or {}).items():
                totals[name] = totals.get(name, 0.0) + s
                by_cell.setdefault(name, {}).setdefault(r["cell_id"], 0.0)
                by_cell[name][r["cell_id"]] += s
    several = len({r["cell_id"].split("__", 1)[0] for r in results}) > 1
    short = (lambda cid: cid) if several else (lambda cid: cid.split("__", 1)[1])  # one model: no need to name it
    lines = [f"where the time went ({wall_s / 60:.1f} min in all; cells run one at a time per machine):"]
    for name, s in sorted(totals.items(), key=lambda kv: -kv[1]):
        worst = sorted(by_cell[name].items(), key=lambda kv: -kv[1])[:top]
        lines.append(f"  {name:<22} {s:8.1f} s   " + ", ".join(f"{short(cid)} {t:.0f} s" for cid, t in worst))
    return lines
