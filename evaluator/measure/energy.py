"""Energy of a timed loop, from two readings of the runner's counters (runner/energy.py), each
joule tagged with its method and its uncertainty; idle power measured before the loop and
reported apart; an external meter's log integrated over the same stretch.

Uncertainty, per counter: a hardware energy counter (RAPL, NVML) is read to its resolution,
so two readings differ by at most two units; a sampled power sensor (Jetson INA3221, Pi 5 PMIC,
a meter's log) is integrated from readings at about 10 Hz, and the 95% interval of its mean
power over the stretch (1.96 standard errors of the readings), times the stretch's length, is
its uncertainty. Neither includes the sensor's own calibration, which no reading can reveal.
"""
import csv
import math
import re
import time

RESOLUTION_J = {"rapl:": 1e-6, "nvml:": 1e-3}  # one unit of each counter
IDLE_S = 2.0  # the runner sits idle this long after load, before warmup, where a counter exists


def _counted(key: str) -> bool:
    """CPU packages plus their DRAM domains, every GPU, every sampled board sensor: core/uncore
    sub-domains are inside the package's count already."""
    return (key.startswith(("nvml:", "sampled:")) or key.endswith(":dram")
            or re.fullmatch(r"rapl:intel-rapl:\d+:package-\d+", key) is not None)


def _spent(before: dict, after: dict) -> dict:
    """{counter: joules between the two readings}. RAPL counters restart from 0 past their range
    (max_energy_range_uj): a smaller reading after is one wrap, unwrapped with that range (a timed
    loop is far shorter than two wraps). A counter with no known range that went backwards is
    dropped, never counted negative."""
    wraps = after.get("wrap_joules") or {}
    spent = {}
    for k in sorted(set(before.get("joules") or {}) & set(after.get("joules") or {})):
        delta = after["joules"][k] - before["joules"][k]
        if delta < 0 and wraps.get(k):
            delta += wraps[k]
        if delta >= 0:
            spent[k] = delta
    return spent


def _half_width(key: str, before: dict, after: dict, duration_s: float) -> float | None:
    """The 95% uncertainty of one counter's joules over the stretch (module docstring)."""
    for prefix, unit in RESOLUTION_J.items():
        if key.startswith(prefix):
            return 2 * unit
    b, a = (before.get("samples") or {}).get(key), (after.get("samples") or {}).get(key)
    if not (a and b) or a["n"] - b["n"] < 2:
        return None
    n = a["n"] - b["n"]
    mean = (a["sum_w"] - b["sum_w"]) / n
    var = max(0.0, ((a["sum_w2"] - b["sum_w2"]) - n * mean * mean) / (n - 1))
    return 1.96 * math.sqrt(var / n) * duration_s


def spent(before: dict, after: dict, tokens: int, duration_s: float, idle_w: dict | None = None) -> dict:
    """Joules spent during the timed loop (whole machine or GPU, idle draw included: what the
    deployment pays), with their 95% uncertainty and methods; above idle where idle was measured."""
    per_counter = _spent(before, after)
    counted = {k: v for k, v in per_counter.items() if _counted(k)}
    stretch = {"tokens": tokens, "wall_time": [before.get("wall_time"), after.get("wall_time")]}
    if not counted:
        why = after.get("unavailable") or ("every counter went backwards with no known range (restarted?)"
                                           if set(before.get("joules") or {}) & set(after.get("joules") or {})
                                           else "no energy counter")
        return {"unavailable": why, **stretch}
    joules = sum(counted.values())
    widths = [_half_width(k, before, after, duration_s) for k in counted]
    half = math.sqrt(sum(w * w for w in widths)) if None not in widths else None
    out = {"joules": joules, "joules_ci95": half, "joules_per_token": joules / tokens if tokens else None,
           "watts": joules / duration_s if duration_s else None, "counters": per_counter,
           "methods": {k: (after.get("methods") or {}).get(k, "counter") for k in counted}, **stretch}
    if idle_w is not None:
        idle = sum(idle_w.get(k, 0.0) for k in counted)
        above = joules - idle * duration_s
        out.update(idle_watts=idle, joules_above_idle=above, joules_per_token_above_idle=above / tokens if tokens else None)
    return out


def idle_watts(runner, timeout_s: float, seconds: float = IDLE_S, sleep=time.sleep) -> dict | None:
    """{counter: watts} while the loaded runner does nothing, or None where it has no counter."""
    first = runner.request("energy", timeout_s)
    if not first.get("joules"):
        return None
    t0 = time.monotonic()
    sleep(seconds)
    second = runner.request("energy", timeout_s)
    elapsed = time.monotonic() - t0
    return {k: v / elapsed for k, v in _spent(first, second).items()} if elapsed > 0 else None


def meter(path: str, start: float, end: float, tokens: int) -> dict:
    """An external meter's log (CSV: unix time in seconds, watts; a header line allowed) integrated
    by the trapezoid rule over [start, end] of the runner machine's clock, with the same interval
    on its mean power as a sampled sensor's."""
    readings = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            try:
                readings.append((float(row[0]), float(row[1])))
            except (ValueError, IndexError):
                continue  # the header, or a line the meter's software wrote for people
    inside = sorted((t, w) for t, w in readings if start <= t <= end)
    if len(inside) < 2:
        return {"unavailable": f"{path} has {len(inside)} readings between {start:.3f} and {end:.3f} (unix time): "
                               f"is the meter logging, and is its clock this machine's?"}
    joules = sum((t1 - t0) * (w0 + w1) / 2 for (t0, w0), (t1, w1) in zip(inside, inside[1:]))
    watts = [w for _, w in inside]
    n, mean = len(watts), sum(watts) / len(watts)
    sd = math.sqrt(sum((w - mean) ** 2 for w in watts) / (n - 1))
    return {"joules": joules, "joules_ci95": 1.96 * sd / math.sqrt(n) * (inside[-1][0] - inside[0][0]),
            "joules_per_token": joules / tokens if tokens else None, "readings": n, "method": f"external meter log {path}"}
