"""Configurations: one row per (backend variant, target), its scenario cells merged.

A run stores one result per cell (configuration x scenario). The report, the decision guide
and `compare` all reason about configurations (what a person deploys), so this is the one
place that reads cell JSON into flat, named numbers. Anything not measured is None.
"""
import functools
from dataclasses import dataclass, field

from evaluator.report import export
from evaluator.score.gate import rejudge


@dataclass
class Config:
    backend: str
    variant: str
    target: dict
    cells: dict = field(default_factory=dict)  # scenario -> cell result
    model: str = ""
    several_models: bool = False  # the run compares models: each label names its own

    @property
    def label(self) -> str:
        return (f"{self.model} · " if self.several_models else "") + f"{self.backend} · {self.variant}"

    @property
    def target_name(self) -> str:
        return self.target["name"]

    @property
    def key(self) -> tuple:
        return self.model, self.backend, self.variant, self.target_name

    def cell(self, scenario: str) -> dict | None:
        c = self.cells.get(scenario)
        return c if c and c.get("status") == "ok" else None

    # -- status -------------------------------------------------------------------------
    @property
    def statuses(self) -> dict:
        return {s: c["status"] for s, c in self.cells.items()}

    @property
    def measured(self) -> bool:
        return any(c.get("status") == "ok" for c in self.cells.values())

    @property
    def why_not(self) -> str | None:
        """The first reason a cell of this configuration did not measure, if none did."""
        if self.measured:
            return None
        for c in self.cells.values():
            if c.get("reason"):
                return f'{c["status"]}: {c["reason"]}'
        return "no result"

    def gate(self, margin: float | None = None) -> dict | None:
        """The quality gate against the reference: its verdict, recomputed from the stored loss
        intervals when another allowed loss is asked for (the intervals do not change)."""
        g = (self.cell("quality") or {}).get("quality_gate")
        if not g or margin is None or margin == g["margin"]:
            return g
        return rejudge(g, margin)

    def quality_loss(self, margin: float | None = None) -> dict | None:
        """The larger of the acc_norm and perplexity losses (shares of the reference), with its interval."""
        g = self.gate(margin)
        parts = [p for p in (((g or {}).get("hellaswag") or {}).get("acc_norm"), (g or {}).get("perplexity")) if p]
        if not parts:
            return None
        worst = max(parts, key=lambda p: p["loss"])
        return {"loss": worst["loss"], "ci": worst["loss_ci"], "verdict": g["verdict"]}

    @property
    def timing_invalid(self) -> str | None:
        """Why a timing cell's verdict is INVALID (a precision or minimum it did not reach), if one is."""
        for name in ("latency", "throughput"):
            v = (self.cell(name) or {}).get("validity") or {}
            if v and not v.get("valid", True):
                missed = [f"{r['rule']}: {r['value']}" for r in v["rules"] if not r["met"]]
                return f"{name} INVALID ({'; '.join(missed)})"
        return None

    # -- speed --------------------------------------------------------------------------
    def _lat(self, metric: str, stat: str):
        c = self.cell("latency")
        try:
            return c["metrics"][metric][stat] if c else None
        except KeyError:
            return None

    @property
    def e2e_ms(self) -> dict:
        return {s: self._lat("e2e_ms", s) for s in ("mean", "p50", "p50_ci", "p95", "p95_ci", "p95_needs",
                                                    "p99", "p99_ci", "p99_needs", "cv", "precision")}

    @property
    def ttft_ms(self):
        return self._lat("ttft_ms", "p50")

    @property
    def itl_ms(self):
        return self._lat("itl_ms", "p50")

    @property
    def decode_tokens_per_s(self):
        """Median over the timed requests (each request's own decode speed)."""
        return self._lat("decode_tokens_per_s", "p50")

    def interval(self, metric: str, stat: str = "p50") -> list[float] | None:
        """A latency metric's 95% interval, e.g. interval("decode_tokens_per_s")."""
        return self._lat(metric, f"{stat}_ci")

    @property
    def latency_samples(self) -> list[float]:
        return self._lat("e2e_ms", "samples") or []

    @property
    def throughput_tokens_per_s(self):
        c = self.cell("throughput")
        return c["metrics"]["best_tokens_per_s"] if c else None

    @property
    def throughput_ci(self):
        c = self.cell("throughput")
        return c["metrics"].get("best_tokens_per_s_ci") if c else None

    @property
    def per_batch(self) -> list[dict]:
        c = self.cell("throughput")
        return [b for b in c["metrics"]["per_batch"] if "tokens_per_s" in b] if c else []

    @property
    def energy_j_per_token(self):
        return self.energy.get("joules_per_token")

    @property
    def energy(self) -> dict:
        """The latency loop's energy: joules per token with the interval its counters allow, the
        idle floor and what is above it, each counter's method (measure/energy.py)."""
        return ((self.cell("latency") or {}).get("energy")) or {}

    @property
    def bandwidth_gbs(self):
        """The decode ceiling's bandwidth: the probe beside the latency cell (the faster of
        before and after), else the target's spec."""
        probes = ((self.cell("latency") or {}).get("bandwidth") or {}).values()
        probed = [p["gbs"] for p in probes if p]
        return max(probed) if probed else self.target.get("memory_bandwidth_gbs")

    @property
    def bandwidth_source(self) -> str:
        probes = ((self.cell("latency") or {}).get("bandwidth") or {})
        if any(probes.values()):
            return "bandwidth probed beside the cell: " + ", ".join(
                f'{k} {p["gbs"]:.1f} GB/s' for k, p in probes.items() if p)
        return f'bandwidth from the target spec: {self.target.get("memory_bandwidth_gbs")} GB/s'

    # -- memory -------------------------------------------------------------------------
    @functools.cached_property
    def rows(self) -> export.Rows:
        """This configuration's rows of the export table: the numbers the report's tables show
        (built once, at the first use: every cell is in place by then)."""
        return export.Rows([r for cell in self.cells.values() for r in export.cell_rows(cell)])

    @property
    def peak_memory_bytes(self):
        """What must fit on the target (export.Rows.peak_memory)."""
        return self.rows.peak_memory(self.target.get("accelerator") == "cuda")

    @property
    def model_bytes(self):
        """Bytes of the file the engine loads (the quantized artifact, where there is one)."""
        return self.rows.value("model_file")

    # -- quality ------------------------------------------------------------------------
    def _q(self, *path):
        c = self.cell("quality")
        try:
            for p in path:
                c = c[p]
            return c
        except (KeyError, TypeError):
            return None

    @property
    def acc_norm(self):
        return self._q("metrics", "hellaswag", "acc_norm", "value")

    @property
    def perplexity(self):
        return self._q("metrics", "perplexity", "rolling", "token_perplexity")

    @property
    def perplexity_ci(self):
        return self._q("metrics", "perplexity", "rolling", "token_perplexity_ci")

    @property
    def kl_mean(self):
        return self._q("fidelity", "kl_mean")

    @property
    def acc_norm_items(self):
        return self._q("metrics", "hellaswag", "items")

    @property
    def top1_agreement(self):
        return self._q("fidelity", "top1_agreement")

    @property
    def engine(self) -> dict:
        for c in self.cells.values():
            if c.get("engine"):
                return c["engine"]
        return {}


def group(cells: list[dict]) -> list[Config]:
    """Configurations in the order their first cell was planned."""
    by_key: dict[tuple, Config] = {}
    several = len({(c.get("model") or {}).get("name") for c in cells}) > 1
    for c in cells:
        model = (c.get("model") or {}).get("name", "")
        key = (model, c["backend"], c["variant"], c["target"]["name"])
        cfg = by_key.setdefault(key, Config(c["backend"], c["variant"], c["target"], model=model, several_models=several))
        cfg.cells[c["scenario"]["name"]] = c
    return list(by_key.values())


def reference_for(configs: list[Config], reference: str | None, target: str) -> Config | None:
    """The baseline row on a target: the run's reference (BACKEND:VARIANT, or BACKEND:VARIANT@TARGET
    for one target's reference everywhere)."""
    if not reference:
        return None
    spec, _, where = reference.partition("@")
    backend, _, variant = spec.partition(":")
    key = (backend, variant, where or target)
    # Configurations come in planned order, the reference model's first: with several models,
    # the first match is the reference model's.
    return next((c for c in configs if (c.backend, c.variant, c.target_name) == key), None)
