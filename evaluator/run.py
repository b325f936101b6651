"""One evaluation: plan cells (evaluator/plan.py), run each in its own runner, store each result
as it finishes.

A cell is model x backend variant x target x scenario. It ends in exactly one status:
  ok             measured
  unsupported    cannot run on this target (why is in `reason`); not a failure
  failed-preflight  its environment could not be built
  failed-load    the runner refused or failed to load the model
  out-of-memory  the engine ran out of memory
  timeout        a deadline passed; the runner was killed
  crashed        the runner died
  protocol-error the runner broke the protocol (garbage, wrong id, an answer of the wrong shape)
  invalid        it answered, but the answers are wrong (token counts, nondeterminism)
  failed         the runner answered a request with an error
  evaluator-error  a bug in the evaluator itself (its traceback is in the cell's log)
A failed cell carries its reason and the tail of the runner's log, never metrics, and never
stops its siblings.
"""
import json
import platform
import time
import traceback
from dataclasses import dataclass, replace

from evaluator import envs, keys, preflight, provenance, store, weights
from evaluator.phases import Phases
from evaluator.plan import Cell, plan
from evaluator.catalog import backends as backend_catalog
from evaluator.catalog import models, targets
from evaluator.catalog.backends import Backend
from evaluator.errors import UserError
from evaluator.launch import docker, local, ssh
from evaluator.launch.process import RunnerFailure
from evaluator.measure import bandwidth, energy, scenarios, serving, techniques
from evaluator.reference import Reference, data_hashes, load_earlier, parse_reference
from evaluator.score import quality
from evaluator.tokens import HostTokenizer

STATUSES, FAILED = store.STATUSES, store.FAILED


@dataclass(frozen=True)
class Deadlines:
    startup_s: float = 180.0   # imports (torch takes seconds; vLLM much more)
    load_s: float = 600.0
    request_s: float = 300.0   # any single request after load: the longest silence allowed (a chunk of
    #                            back-to-back timed requests gets it plus their expected time: back_to_back.py)
    cell_s: float = 7200.0     # the whole cell, from the runner's start to its last answer


def _model_format(backend: Backend, model: models.Model) -> str:
    """The first format the backend reads that the model has (planning made sure there is one)."""
    return next(f for f in backend.formats if model.artifact(f))


QUALITY_CONTEXT = 1024  # a scored window is at most this long, and a HellaSwag item far shorter


def _context_tokens(sc, check: scenarios.Check, model_context: int | None) -> int:
    """The longest sequence this cell's session sends: what an engine that sizes its caches up
    front (llama.cpp's n_ctx, vLLM's max_model_len) sizes them for, instead of the model's
    whole training context (131,072 tokens on Llama 3.1)."""
    if isinstance(sc, quality.Quality):
        need = max(sc.ppl_window or QUALITY_CONTEXT, QUALITY_CONTEXT)
    elif sc.name in techniques.TECHNIQUES:
        need = max(sc.model_tokens, 1)
    else:
        need = sc.prompt_tokens + sc.new_tokens
        if isinstance(sc, scenarios.Latency):
            need = max(need, 1 + check.new_tokens)  # the greedy check from BOS
    return min(need, model_context) if model_context else need


def probes_here(target) -> bool:
    """Whether this machine's DRAM bandwidth is the target's decode ceiling: a CPU target on this
    machine. Another machine's, an emulated one's, or a GPU's (its own memory, not this DRAM) is
    not ours to probe: those ceilings come from the target's memory_bandwidth_gbs, and say so."""
    return (target.transport in ("local", "docker") and target.arch == platform.machine()
            and target.device == "cpu")


def _spec(cell: Cell, runner, model: models.Model, model_sha256: str, tok: HostTokenizer, check) -> dict:
    """The model as load gives it to this cell's runner (protocol.py: load)."""
    fmt = _model_format(cell.backend, model)
    return {"path": runner.see(model.artifact(fmt)), "format": fmt, "sha256": model_sha256,
            "artifact_cache": runner.artifact_cache or str(store.ARTIFACTS),
            "context_tokens": _context_tokens(cell.scenario, check, tok.context_length), "scenario": cell.scenario.name}


def _measure(cell: Cell, runner, model: models.Model, model_sha256: str, tok: HostTokenizer, check: scenarios.Check,
             deadlines: Deadlines, progress, rnd: quality.Round | None, phases: Phases, made: dict | None) -> dict:
    result = {"engine": runner.request("describe", deadlines.request_s)}
    if not result["engine"].get("available", True):
        raise RunnerFailure("unsupported", result["engine"].get("unavailable_reason") or "engine unavailable here")
    too_old, note = preflight.cuda_driver(result["engine"]) if cell.target.device == "cuda" else (None, None)
    if too_old:
        raise RunnerFailure("unsupported", too_old)
    if note:
        result["cuda_compatibility"] = note
    options = dict(cell.options, device=cell.target.device)
    spec = _spec(cell, runner, model, model_sha256, tok, check)
    if made:  # weights another backend made on this target: a path its runners share (weights.py)
        spec.update(path=made["path"], made_by=made)
    try:
        with phases("load"):
            result["load"] = runner.request("load", deadlines.load_s, model=spec, options=options)
    except RunnerFailure as exc:
        if exc.status == "failed":
            exc.status = "failed-load"
        raise
    sc = cell.scenario
    if isinstance(sc, scenarios.Latency):
        # Checked against the reference before it is timed: greedy from BOS.
        with phases("check"):
            tokens = scenarios.run_check(runner, tok.bos, check, deadlines.request_s)
        text = tok.decode(tokens)
        result["check"] = {"prompt": "BOS", "new_tokens": check.new_tokens, "tokens": tokens, "text": text}
        if model.reference_greedy and check.new_tokens == 256:
            expected = model.reference_greedy.read_text(encoding="utf-8").rstrip("\n")
            diverge = next((i for i, (a, b) in enumerate(zip(text, expected)) if a != b), None)
            if diverge is None and len(text) != len(expected):
                diverge = min(len(text), len(expected))
            result["check"].update(reference=str(model.reference_greedy.relative_to(backend_catalog.REPO)),
                                   matches_reference=diverge is None, first_divergence_char=diverge)
        prompts = tok.prompts(sc.prompt_tokens, sc.distinct_prompts)
        probe = bandwidth.probe if probes_here(cell.target) else lambda: None
        before = probe()  # this machine's bandwidth right now: the ceiling decode speed is held to
        with phases("latency"):
            result.update(scenarios.run_latency(runner, prompts, sc, deadlines.request_s, progress))
        if cell.target.power_log:  # an external meter's log, over the same stretch of the runner's clock
            spent = result["energy"]
            start, end = spent.get("wall_time") or (None, None)
            spent["meter"] = (energy.meter(cell.target.power_log, start, end, spent["tokens"]) if start and end
                              else {"unavailable": "the runner's energy answers carry no clock"})
        result["bandwidth"] = {"before": before, "after": probe()}
        if result["engine"].get("supports", {}).get("score", True):
            with phases("check"):
                result["consistency"] = scenarios.check_consistency(runner, prompts[0], result["output_tokens"],
                                                                    deadlines.request_s)
        result["prompt_tokens"] = prompts[0]
    elif isinstance(sc, quality.Quality):
        vocab = result["load"].get("vocab_size") or model.config().get("vocab_size") or 1
        rnd = rnd or quality.Round(sc.total_items)
        result["metrics"], result["raw"] = quality.run(runner, tok, sc, deadlines.request_s, vocab, rnd, progress,
                                                       phases)
    elif isinstance(sc, techniques.Attention):
        with phases("attention"):
            result.update(techniques.run_attention(runner, sc, deadlines.request_s, cell.target.device))
    elif isinstance(sc, techniques.Train):
        with phases("train"):
            result.update(techniques.run_train(runner, sc, tok.prompts(sc.sequence_tokens, sc.batch * sc.steps),
                                               deadlines.request_s, progress))
    elif isinstance(sc, techniques.Kv):
        with phases("kv"):
            result.update(techniques.run_kv(runner, sc, tok.prompts(sc.prompt_tokens, 1)[0], deadlines.request_s, progress))
    elif isinstance(sc, techniques.Flops):
        with phases("flops"):
            result.update(techniques.run_flops(runner, sc, model.config(), deadlines.request_s))
    elif isinstance(sc, serving.Serving):
        with phases("serving"):
            result.update(serving.run_serving(runner, tok.prompts(sc.prompt_tokens, sc.requests), sc,
                                              deadlines.request_s, progress))
    else:
        prompts = tok.prompts(sc.prompt_tokens, max(sc.batch_sizes) * sc.distinct_batches)
        with phases("throughput"):
            result.update(scenarios.run_throughput(runner, prompts, sc, deadlines.request_s, progress))
    result["memory"] = runner.request("memory", deadlines.request_s)
    return result


def run_cell(cell: Cell, model: models.Model, model_info: dict, tok: HostTokenizer, run_path, run_id: str,
             check: scenarios.Check, deadlines: Deadlines, log=print, progress=None, rnd: quality.Round | None = None) -> dict:
    """One runner session for a cell; a quality cell's session is one round of its budget (`rnd`)."""
    base = {
        "schema": store.SCHEMA_VERSION, "run_id": run_id, "cell_id": cell.id,
        "model": model_info, "backend": cell.backend.name, "variant": cell.variant.name,
        "variant_options": cell.variant.options, "target": vars(cell.target),
        "scenario": {"name": cell.scenario.name, "options": scenarios.options(cell.scenario)},
        "key": keys.cell_key(cell, model_info, check), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "evaluator_revision": provenance.git_revision(),
    }
    t0, phases = time.monotonic(), Phases()
    if cell.unsupported:
        return dict(base, status="unsupported", reason=cell.unsupported, log_tail=None)
    transport = cell.target.transport
    try:
        with phases("environment"):
            placement, python = _environment(cell, model, model_info, base, log)
    except (envs.EnvironmentFailed, docker.ImageFailed) as exc:
        return dict(base, status="failed-preflight", reason=str(exc), log_tail=None, phases=phases.as_dict())
    log_path = run_path / "logs" / f"{cell.id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    runner = made = None

    def start_maker(maker: Cell):  # its own environment and log, the same target and model
        placement, python = _environment(maker, model, model_info, {}, log)
        runner = _start(maker, placement, python, run_path / "logs" / f"{maker.id}.log", deadlines)
        return runner, _spec(maker, runner, model, model_info.get("sha256"), tok, check)

    try:
        if cell.variant.maker:
            with phases("weights"):
                made = weights.made(cell, run_id, model_info.get("sha256"), start_maker, deadlines.load_s)
    except (envs.EnvironmentFailed, docker.ImageFailed) as exc:
        return dict(base, status="failed-preflight", reason=f"the environment that makes its weights: {exc}", log_tail=None,
                    phases=phases.as_dict())
    except RunnerFailure as exc:
        return dict(base, status="failed-load" if exc.status == "failed" else exc.status, reason=exc.reason,
                    log_tail=getattr(exc, "log_tail", None), phases=phases.as_dict())
    try:
        with phases("start"):
            runner = _start(cell, placement, python, log_path, deadlines)
        runner.cell_deadline = t0 + deadlines.cell_s
        if progress:  # a load that compiles or exports for minutes shows that it is still going, and where
            runner.waiting = lambda what, s: progress(f"{what}: {s:.0f} s so far (log: {log_path.name})")
        measured = _measure(cell, runner, model, model_info.get("sha256"), tok, check, deadlines, progress, rnd, phases,
                            made)
        status, reason, tail = "ok", None, None
    except RunnerFailure as exc:
        measured, status, reason = {}, exc.status, exc.reason
        tail = runner.log_tail() if runner else log_path.read_text(errors="replace")[-2000:]
    except Exception as exc:  # noqa: BLE001  the evaluator's own bug: this cell ends, the run goes on
        # Runner answers were checked at the boundary (launch/answers.py), so this is not the
        # runner's fault: say so, and keep the traceback in the cell's log.
        measured, status = {}, "evaluator-error"
        reason = f"evaluator bug while running the cell: {type(exc).__name__}: {exc} (traceback in logs/{cell.id}.log)"
        with open(log_path, "a", encoding="utf-8") as f:
            f.write("\n--- deploy-eval evaluator traceback ---\n" + traceback.format_exc())
        tail = traceback.format_exc()[-2000:]
    finally:
        if runner:
            runner.close()
    out = dict(base, status=status, reason=reason, log_tail=tail,
               environment=(f"image {placement.image['tag']} ({placement.image['id']})" if transport.endswith("docker")
                            else f"given on {cell.target.host}: {python} ({cell.backend.given_python[1]})"
                            if transport == "ssh"
                            else f"given: {python} ({cell.backend.given_python[1]})" if cell.backend.given_python
                            else envs.describe(python)),
               wall_s=time.monotonic() - t0, phases=phases.as_dict(), finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    if status == "ok":
        raw = measured.pop("raw", None)
        if raw is not None:  # per-item answers, kept beside the cell so any summary can be recomputed
            store.write_json(run_path / "raw" / f"{cell.id}.json", raw, compact=True)
            out["raw"] = f"raw/{cell.id}.json"
        out.update(measured)
        out["parameters"] = measured["load"].get("parameters")
    return out


def _start(cell: Cell, placement, python, log_path, deadlines: Deadlines):
    transport = cell.target.transport
    if transport in ("docker", "ssh-docker"):
        return docker.start(placement, cell.target, log_path, cell.id, deadlines.startup_s)
    if transport == "ssh":
        return ssh.start(placement, cell.target, python, log_path, cell.id, deadlines.startup_s)
    return local.start(cell.backend, python, log_path, deadlines.startup_s)


def _environment(cell: Cell, model: models.Model, model_info: dict, base: dict, log):
    """(placement, interpreter): a local interpreter (built or reused, the first time a cell of
    its backend asks); a Docker placement (image, model, cache); or an ssh one (the runner
    library and the model shipped) with the target's own interpreter."""
    if cell.target.transport == "local":
        return None, envs.python_for(cell.backend, log=log)
    artifact = model.artifact(_model_format(cell.backend, model))
    if cell.target.transport == "ssh":
        placement = ssh.prepare(cell.backend, cell.target, artifact if artifact.is_dir() else artifact.parent,
                                model_info["sha256"], store.ARTIFACTS, log=log)
        return placement, cell.backend.given_python[0]
    placement = docker.prepare(cell.backend, cell.target, artifact if artifact.is_dir() else artifact.parent,
                               model_info["sha256"], store.ARTIFACTS, log=log)
    base["image"] = placement.image
    return placement, None


def finished(run_path, cell: Cell, model_info: dict, check) -> dict | None:
    """A stored result this run can keep on resume: it ended ok or unsupported, under the same key."""
    result = store.read_cell(run_path / "cells" / f"{cell.id}.json")
    if result and result["status"] not in FAILED and result.get("key") == keys.cell_key(cell, model_info, check):
        return result
    return None


def store_guide(run_path, constraints: dict) -> None:
    """The decision guide's constraints, kept in run.json so a rebuilt report uses them."""
    run_json = run_path / "run.json"
    run_info = json.loads(run_json.read_text())
    run_info["guide"] = constraints
    store.write_json(run_json, run_info)


def _subject(name: str, model_path: str | None, scenario_list: list) -> "Subject":
    """One model of the run, checked: its tokenizer, its context against the scenarios, its identity."""
    model = models.resolve(name, model_path)
    tok = HostTokenizer(model.hf_path)
    for sc in scenario_list:
        if not isinstance(sc, quality.Quality):
            scenarios.check_fits(sc, tok.context_length)
        elif sc.ppl_window and tok.context_length and sc.ppl_window > tok.context_length:
            raise UserError(f"--ppl-window {sc.ppl_window} exceeds {model.name}'s context of {tok.context_length} tokens")
    info = {"name": model.name, "source": model.source, "synthetic": model.synthetic, "path": str(model.hf_path),
            "formats": list(model.formats), "size_bytes": model.size_bytes(), "sha256": model.content_hash(),
            "tokenizer_sha256": tok.fingerprint()}
    return Subject(model, info, tok)


def start_run(model_names: list[str], model_path: str | None, target_names: list[str], backend_names: list[str] | None,
              variant_patterns: list[str] | None, scenario_list: list, reports_root=store.REPORTS,
              reference: str = "pytorch_eager:fp32-sdpa-kv", argv: list[str] | None = None, resume_id: str | None = None,
              threads: int | None = None, reference_run: str | None = None, pythons: list[str] = ()):
    """Preflight: every name and option checked before any runner starts. With several models,
    the first is the reference: every other model's quality is compared with its reference
    configuration, item by item (a distilled or pruned student against its teacher)."""
    if len(set(model_names)) != len(model_names):
        raise UserError(f"model {next(m for m in model_names if model_names.count(m) > 1)!r} is named twice")
    if model_path and len(model_names) > 1:
        raise UserError("--model-path gives one model's folder: name a single MODEL with it")
    if reference_run and len(model_names) > 1:
        raise UserError("--reference-run pairs one model with an earlier run's reference: name a single MODEL with it")
    subjects = {name: _subject(name, model_path, scenario_list) for name in model_names}
    first = next(iter(subjects.values()))
    target_list = targets.resolve(target_names)
    backends = envs.given(backend_catalog.select(backend_names), list(pythons))
    ref = replace(parse_reference(reference, [t.name for t in target_list]), model=first.model.name)
    for target in target_list:
        preflight.reachable(target)
    preflight.disk_space([reports_root, store.ARTIFACTS], sum(s.model.size_bytes() for s in subjects.values()))
    quality_sc = next((sc for sc in scenario_list if isinstance(sc, quality.Quality)), None)
    earlier = (load_earlier(reference_run, reports_root, ref, first.info, quality_sc)
               if reference_run and quality_sc else {})
    backends_on = {t.name: envs.on_target(backends, t) for t in target_list}
    cells = []
    for s in subjects.values():  # the reference's quality cell is the first model's only
        cells += plan(s.model, backends, variant_patterns, target_list, scenario_list,
                      None if reference_run or s is not first else ref,
                      (("threads", threads),) if threads else (), backends_on)
    run_id = resume_id or store.new_run_id("+".join(model_names))
    path = store.run_dir(run_id, reports_root)
    run_info = {
        "schema": store.SCHEMA_VERSION, "run_id": run_id, "model": first.info,
        "models": [s.info for s in subjects.values()],
        "targets": [vars(t) for t in target_list], "backends": [b.name for b in backends],
        "scenarios": [{"name": s.name, "options": scenarios.options(s)} for s in scenario_list],
        "planned_cells": [c.id for c in cells], "host": provenance.host(),
        "reference": ref.label, "reference_run": reference_run, "data": data_hashes(), "argv": argv,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "memory_sizes": targets.memory_sizes(),
    }
    if resume_id:  # the run keeps its identity and history; only what did not finish runs again
        previous = json.loads((path / "run.json").read_text())
        run_info["started_at"] = previous["started_at"]
        run_info["resumed_at"] = previous.get("resumed_at", []) + [time.strftime("%Y-%m-%dT%H:%M:%S%z")]
    store.write_json(path / "run.json", run_info)
    return Prepared(subjects, cells, run_id, path, run_info, ref, earlier)


@dataclass(frozen=True)
class Subject:
    """A model of the run and what its cells need: its info (as stored) and its tokenizer."""
    model: models.Model
    info: dict
    tok: HostTokenizer


@dataclass(frozen=True)
class Prepared:
    """A run that passed preflight: what `evaluate` needs to execute it."""
    subjects: dict  # model name -> Subject, the reference model first
    cells: list
    run_id: str
    path: object
    run_info: dict
    reference: Reference
    earlier: dict  # target -> an earlier run's reference quality cell (--reference-run)

    def subject(self, cell: Cell) -> Subject:
        return self.subjects.get(cell.model) or next(iter(self.subjects.values()))

    @property
    def context_length(self) -> int | None:
        """The shortest context of the run's models (what a check from BOS must fit in)."""
        lengths = [s.tok.context_length for s in self.subjects.values() if s.tok.context_length]
        return min(lengths) if lengths else None
