"""Executing a planned run, in the order things happen:

1. timing cells (latency, throughput), one machine's cells after another's on that machine,
   machines side by side;
2. quality cells, in the rounds of the quality budget (score/budget.py);
3. each variant against its reference: the gate and fidelity, written into its cell;
4. the decision guide's constraints into run.json, and the report.

cli.py parses and prints; run.py plans cells and runs one runner session; this file decides
what runs when.
"""
import dataclasses
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from evaluator import keys, plan, run, store
from evaluator.launch import process
from evaluator.measure import sampling, serving
from evaluator.reference import Earlier
from evaluator.score import budget, fidelity, gate, quality, reuse, stored


class Stopped(Exception):
    """The run was interrupted: a cell that ends after it is not stored (its runner was killed)."""


@contextmanager
def _interruptible(stopping: threading.Event):
    """Ctrl-C stops the run promptly: the cells running on every machine have their runners
    killed at once, no new cell starts, and KeyboardInterrupt reaches the caller, which writes
    the report of the cells that had finished."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum, frame):
        stopping.set()
        process.kill_all()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def machine_of(cell: plan.Cell) -> str:
    """Cells on one machine run one after another, so nothing disturbs another's measurement
    (this machine hosts both the `local` and the `docker` targets)."""
    return cell.target.host if cell.target.transport in ("ssh-docker", "ssh") else "this machine"


def _side_by_side(cells: list, work) -> None:
    by_machine = {}
    for cell in cells:
        by_machine.setdefault(machine_of(cell), []).append(cell)
    with ThreadPoolExecutor(max_workers=len(by_machine) or 1) as pool:
        for done in [pool.submit(lambda cs: [work(c) for c in cs], cs) for cs in by_machine.values()]:
            done.result()


def _line(cell: plan.Cell, result: dict) -> str:
    line = f"{result['status']:>14}  {cell.id}"
    artifact = (result.get("load") or {}).get("artifact")
    for a in [*(artifact or {}).get("built_from", []), *([artifact] if artifact else [])]:
        line += (f"  [artifact {a['kind']}: reused from cache]" if a["reused"]
                 else f"  [artifact {a['kind']}: built in {a['build_s']:.1f} s, cached]")
    if result["status"] == "unsupported":
        return line + f"  ({result['reason'][:160]})"
    if result["status"] != "ok":
        return line + f"  ({result['reason']})"
    if "check" in result and "matches_reference" in result["check"]:
        line += "  greedy check: " + ("matches reference" if result["check"]["matches_reference"]
                                      else f"differs from reference at char {result['check']['first_divergence_char']}")
    if cell.scenario.name == "latency":
        m = result["metrics"]
        line += (f"  median {m['e2e_ms']['p50']:.3g} ms ±{100 * m['e2e_ms']['precision']:.1f}%, decode "
                 f"{m['decode_tokens_per_s']['p50']:,.0f} tokens/s ({result['iterations']} requests)")
    if cell.scenario.name == "throughput":
        m = result["metrics"]
        line += f"  best {m['best_tokens_per_s']:,.0f} tokens/s at batch {m['best_batch_size']}"
    if cell.scenario.name == "serving":
        m = result["metrics"]
        peak = max(m["per_rate"], key=lambda r: r["output_tokens_per_s"])
        line += (f"  {len(m['per_rate'])} loads, up to {peak['output_tokens_per_s']:,.0f} output tokens/s at "
                 f"{serving.load_label(peak)}" + ("" if m["saturated"] else " (not saturated)")
                 + (f", max {m['max_rate_within_slo']:g} requests/s within the SLO" if m["slo"] and m["max_rate_within_slo"]
                    else ", no rate within the SLO" if m["slo"] else "")
                 + "".join(f"; {r['rate']:g}/s INVALID (arrivals offered late)" for r in m["per_rate"] if not r["valid"])
                 + "".join(f"; {serving.load_label(r)} undecided for the SLO ({r['met_slo']} of {r['requests']} met it: "
                           f"{m['slo_requests_needed']}+ requests can show {m['slo_share']:.0%})"
                           for r in m["per_rate"] if r.get("slo_verdict") == "undecided"))
    if result.get("validity") and not result["validity"]["valid"]:
        line += "  " + sampling.explain(result["validity"])
    if cell.scenario.name == "quality":
        m = result["metrics"]
        order, ppl = m["hellaswag"]["order"], m["perplexity"]["rolling"]
        line += (f"  HellaSwag acc_norm {m['hellaswag']['acc_norm']['value']:.4f} ({m['hellaswag']['items']:,} items; "
                 f"{order['stopped']}), perplexity {ppl['token_perplexity']:.4f} "
                 f"({ppl.get('windows', '?')} of {ppl.get('windows_total', '?')} windows)")
    return line


def execute(prep: run.Prepared, check, deadlines: run.Deadlines, margin: float, resume: bool, say,
            bar, reuse_answers: bool = True) -> tuple[list[dict], list[dict]]:
    """Run every cell of a prepared run; returns (failed cells, timing cells whose loop did not
    reach the asked precision: measured, with the precision they reached). With `reuse_answers`,
    a quality cell starts from the answers an earlier run kept under its key (score/reuse.py)."""
    with _interruptible(stopping := threading.Event()):
        return _execute(prep, check, deadlines, margin, resume, say, bar, stopping, reuse_answers)


def _execute(prep, check, deadlines, margin, resume, say, bar, stopping, reuse_answers) -> tuple[list[dict], list[dict]]:
    failed, imprecise, refused = [], [], {}  # refused: (model, backend, variant, target) -> why its runner refused it

    def kept(cell):
        result = run.finished(prep.path, cell, prep.subject(cell).info, check) if resume else None
        if result:
            say(f"{result['status']:>14}  {cell.id}  (kept from before the resume)")
        return result

    def session(cell, rnd=None, rounds=()):
        if stopping.is_set():
            raise Stopped
        bar.set_description(cell.id)
        same = (cell.model, cell.backend.name, cell.variant.name, cell.target.name)
        if same in refused and not cell.unsupported:
            cell = dataclasses.replace(cell, unsupported=refused[same])
        subject = prep.subject(cell)
        result = run.run_cell(cell, subject.model, subject.info, subject.tok, prep.path, prep.run_id, check, deadlines,
                              log=say, progress=lambda n: bar.set_postfix_str(f"{n}"), rnd=rnd)
        if stopping.is_set():
            raise Stopped  # its runner was killed mid-cell: that is not a result
        if rnd is not None and result["status"] == "ok":
            order = result["metrics"]["hellaswag"]["order"]
            result["rounds"] = [*rounds, {"upto": rnd.upto, "scored": order["scored"], "stopped": order["stopped"],
                                          "wall_s": result["wall_s"], "phases": result.get("phases")}]
        try:
            store.write_cell(prep.path / "cells" / f"{cell.id}.json", result)
        except ValueError as exc:  # a result no reader could read: this evaluator's bug, and this cell's end
            where = store.log_evaluator_bug(prep.path, f"storing {cell.id}")
            result = {"cell_id": cell.id, "backend": cell.backend.name, "variant": cell.variant.name,
                      "target": {"name": cell.target.name}, "scenario": {"name": cell.scenario.name},
                      "status": "evaluator-error", "reason": f"evaluator bug: its result is malformed: {exc}"[:400]
                      + f" (traceback in {where.relative_to(prep.path)})"}
            store.write_cell(prep.path / "cells" / f"{cell.id}.json", result)
        if result["status"] == "unsupported" and not cell.unsupported:
            refused[same] = f"{result['reason']} (found loading {cell.id})"
        if result["status"] in run.FAILED:
            failed.append(result)
        try:
            line = _line(cell, result)
        except Exception as exc:  # the cell is stored: only its summary line is lost
            where = store.log_evaluator_bug(prep.path, f"summarising {cell.id}")
            line = f"{result['status']:>14}  {cell.id}  (evaluator bug in its summary line: {exc!r}; traceback in {where})"
        say(line)
        if result.get("validity") and not result["validity"]["valid"]:
            imprecise.append(result)
            for line in sampling.print_rules(result["validity"]):
                say(f"{'':>16}{line}")
        return result

    timing = [c for c in prep.cells if not isinstance(c.scenario, quality.Quality)]
    scored = [c for c in prep.cells if isinstance(c.scenario, quality.Quality)]

    def timed(cell):
        kept(cell) or session(cell)
        bar.update()

    _side_by_side(timing, timed)
    if scored:
        sc = scored[0].scenario
        earlier = prep.earlier

        def reference_of(cell):
            if earlier:
                return earlier.get(prep.reference.target or cell.target.name) or next(iter(earlier.values()))
            return prep.reference.cell_for(cell, scored)

        kept_results = {c.id: r for c in scored if (r := kept(c))}
        answer_keys = _answers_keys(prep, scored, reference_of, check) if reuse_answers else {}
        for c in scored:
            if c.id in answer_keys and c.id not in kept_results and (
                    r := reuse.take(answer_keys[c.id], c.id, prep.path, prep.run_id, prep.subject(c).info)):
                store.write_cell(prep.path / "cells" / f"{c.id}.json", r)
                kept_results[c.id] = r
                say(f"{'reused':>14}  {c.id}  ({reuse.items(r):,} HellaSwag items' answers of run "
                    f"{reuse.reused_from(r)['run_id']}, same key; --rescore scores them again)")
        history = {cid: r.get("rounds", []) for cid, r in kept_results.items()}

        def quality_session(cell, rnd):
            result = session(cell, rnd, history.get(cell.id, ()))
            history[cell.id] = result.get("rounds", [])
            return result

        def same_tokens(cell):
            ref = prep.subjects.get(prep.reference.model)
            return ref is None or other_tokenizer(ref.info, prep.subject(cell).info) is None

        kept_results.update({e.id: e.result for e in earlier.values()})
        budget.run(scored, sc, margin, reference_of, quality_session,
                   lambda r: stored.read(prep.path / r["raw"]), machine_of, kept_results, same_tokens)
        bar.update(len(scored))
        for c in finish_quality(prep.path, prep.reference, margin, sc, [e.result for e in earlier.values()]):
            say(gate_line(c))
        for c in scored:
            if c.id in answer_keys and (result := store.read_cell(prep.path / "cells" / f"{c.id}.json")):
                reuse.keep(prep.path, result, answer_keys[c.id])
    return failed, imprecise


def _answers_keys(prep: run.Prepared, scored: list, reference_of, check) -> dict[str, str]:
    """Cell id -> the key its quality answers are kept under across runs (score/reuse.py): its
    own cell key and its reference's. Cells on this machine only (a remote target's identity is
    not ours to fingerprint), and not those planned unsupported."""
    known = {}

    def own(cell):  # a reference is asked for by each of its variants: hash its files once
        if cell.id not in known:
            known[cell.id] = keys.cell_key(cell, prep.subject(cell).info, check)
        return known[cell.id]

    answers = {}
    for c in scored:
        if c.unsupported or c.target.transport not in ("local", "docker"):
            continue
        ref = reference_of(c)
        ref_key = (None if ref is None or ref.id == c.id else
                   ref.result.get("key") if isinstance(ref, Earlier) else own(ref))
        answers[c.id] = reuse.key(own(c), ref_key)
    return answers


def close(prep: run.Prepared, constraints: dict) -> tuple[Path, int]:
    """However the run ended: the decision guide's constraints into run.json, the report written
    from what is stored. Returns (the report's path, how many cells are stored)."""
    from evaluator.report import html

    run.store_guide(prep.path, constraints)
    return html.build(prep.path), len(list((prep.path / "cells").glob("*.json")))


def finish_quality(run_path, reference: run.Reference, margin: float, sc: quality.Quality,
                   earlier: list[dict] = ()) -> list[dict]:
    """Each variant's quality cell against its reference's (this run's, or `earlier` run's
    reference cells), item by item: `fidelity` and `quality_gate` written into the cell
    (atomically). Returns the updated cells."""
    _, cells = store.load_run(run_path)
    mine = {((c.get("model") or {}).get("name", ""), c["backend"], c["variant"], c["target"]["name"]): c for c in cells
            if c["scenario"]["name"] == "quality" and c["status"] == "ok"}
    theirs = {c["target"]["name"]: c for c in earlier}
    several = len({key[0] for key in mine}) > 1
    ref_model = reference.model or next(iter(mine), ("",))[0]  # planned first: the reference model's cells
    updated = []
    for (_, _, _, target), c in mine.items():
        where = reference.target or target
        ref = (theirs.get(where) or next(iter(theirs.values())) if theirs else
               mine.get((ref_model, reference.backend.name, reference.variant.name, where)))
        if ref is None or ref is c:
            continue
        label = (f"{ref['model']['name']} · " if several else "") + f"{ref['backend']}.{ref['variant']}@{ref['target']['name']}"
        label += f" of run {ref['run_id']}" if theirs else ""
        try:
            ref_raw, raw = stored.read(run_path / ref["raw"]), stored.read(run_path / c["raw"])
        except stored.Malformed as exc:
            _lose_comparison(c, f"not compared with {label}: the stored answer is malformed: {exc}")
        else:
            try:
                c.update(_compare(ref_raw, raw, label, margin, sc, other_tokenizer(ref.get("model") or {}, c.get("model") or {})))
            except Exception as exc:  # the answers were well formed: what failed is this evaluator
                where = store.log_evaluator_bug(run_path, f"comparing {c['cell_id']} with {label}")
                _lose_comparison(c, f"not compared with {label}: evaluator bug: {type(exc).__name__}: {exc} "
                                    f"(traceback in {where.relative_to(run_path)})")
        store.write_cell(run_path / "cells" / f"{c['cell_id']}.json", c)
        updated.append(c)
    return updated


def other_tokenizer(a: dict, b: dict) -> str | None:
    """Why model `b` cannot be compared with reference model `a` (their run infos) token by token,
    if it cannot: its tokenizer encodes text differently (windows and vocabularies do not pair)."""
    if a.get("name") == b.get("name") or a.get("tokenizer_sha256") == b.get("tokenizer_sha256"):
        return None
    return (f"{b['name']} and {a['name']} tokenize differently: KL and the perplexity ratio need the same tokens, so "
            "only HellaSwag is paired; compare their perplexity in bits per byte")


def _compare(ref_raw: dict, raw: dict, label: str, margin: float, sc: quality.Quality, other_tokenizer: str | None = None) -> dict:
    if other_tokenizer:  # HellaSwag items pair across any tokenizers; windows and distributions do not
        gate_ = gate.assess(ref_raw, raw, margin, sc.design(), sc.total_items, same_tokens=False)
        return {"fidelity": {"unavailable": other_tokenizer, "reference": label},
                "quality_gate": dict(gate_, reference=label, perplexity_unpaired=other_tokenizer)}
    vocab = ref_raw.get("vocab_size")  # where both sides' partitions are the whole vocabulary, the KL is exact
    out = {"fidelity": dict(fidelity.compare(ref_raw["fidelity_windows"], raw["fidelity_windows"], vocab), reference=label)}
    chunks = [(r.get("perplexity") or {}).get("llamacpp") or {} for r in (ref_raw, raw)]
    if all(ch.get("fidelity_windows") for ch in chunks):  # --ppl-llamacpp: on llama-perplexity's positions
        out["fidelity_llamacpp"] = dict(fidelity.compare(chunks[0]["fidelity_windows"], chunks[1]["fidelity_windows"], vocab),
                                        reference=label, top_k=chunks[1]["top_k"],
                                        positions=f"the first {len(chunks[1]['fidelity_windows'])} llama-perplexity chunks")
    out["quality_gate"] = dict(gate.assess(ref_raw, raw, margin, sc.design(), sc.total_items), reference=label)
    return out


def _lose_comparison(c: dict, why: str) -> None:
    """This comparison is lost, never the report."""
    for key in ("fidelity", "fidelity_llamacpp", "quality_gate"):
        c.pop(key, None)
    c["quality_gate_error"] = why[:500]


def gate_line(c: dict) -> str:
    if c.get("quality_gate_error"):
        return f"quality {c['backend']}.{c['variant']}@{c['target']['name']}: {c['quality_gate_error']}"
    f, g = c["fidelity"], c["quality_gate"]
    if f.get("unavailable"):
        kl = f"KL not compared ({f['unavailable']})"
    else:
        kl = (f"KL mean {f['kl_mean']:.2e}" + (f" [{f['kl_mean_ci'][0]:.2e}, {f['kl_mean_ci'][1]:.2e}]" if f.get("kl_mean_ci")
                                               else "") + f", top-1 agreement {f['top1_agreement']:.4f}")
    verdict = g["verdict"] + (": " + "; ".join(g["reasons"]) if g["reasons"] else "")
    model = f"{c['model']['name']} · " if " · " in g["reference"] else ""  # the run compares models
    return f"quality {model}{c['backend']}.{c['variant']}@{c['target']['name']} vs {g['reference']}: {kl}; gate {verdict}"
