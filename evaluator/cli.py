"""Command line: `python -m evaluator {eval,backends,models,targets,report} ...` (what `just` calls).

Bad input ends in one line on stderr that says what is wrong and what is valid, exit code 2.
`eval` exits 1 when any requested cell failed (unsupported cells are not failures).
"""
import argparse
import json
import sys
import time
from pathlib import Path

from evaluator import store
from evaluator import arguments
from evaluator.errors import UserError


def _resumed(args) -> argparse.Namespace:
    """The arguments of the run being resumed, read back from its run.json."""
    run_json = args.reports / args.resume / "run.json"
    if not run_json.is_file():
        from evaluator.errors import unknown
        raise unknown("run", args.resume, sorted(p.parent.name for p in args.reports.glob("*/run.json")))
    argv = json.loads(run_json.read_text()).get("argv")
    if argv is None:
        raise UserError(f"run {args.resume} was not started by `eval` with its arguments recorded; it cannot be resumed")
    old = arguments.parser().parse_args(["eval", *argv])
    old.reports, old.resume, old.argv = args.reports, args.resume, argv
    return old


def _options(argv: list[str]) -> list[str]:
    """The option names in an argument list (`--name` or `--name=value`)."""
    return [a.split("=", 1)[0] for a in argv if a.startswith("--")]


def cmd_eval(args) -> int:
    from evaluator import run
    from evaluator.launch import leftovers
    from evaluator.measure import scenarios, serving, techniques
    from evaluator.score.quality import Quality

    if args.resume:
        given = [*(args.model or []), *(a for a in _options(args.argv or []) if a not in ("--resume", "--reports"))]
        if given:
            raise UserError(f"--resume RUN_ID takes no model or other options (given: {' '.join(given)}): "
                            "the run's own are reused")
        args = _resumed(args)
    elif args.model is None:
        raise UserError("eval needs a MODEL (see `just models`), or --resume RUN_ID")
    quality_left_out = False
    if args.scenarios is None:  # random weights have no quality worth a quarter of an hour
        from evaluator.catalog import models
        quality_left_out = all(models.is_synthetic(m, args.model_path) for m in args.model)
        args.scenarios = [s for s in scenarios.SCENARIOS if not (quality_left_out and s == "quality")]
    unknown = [s for s in args.scenarios if s not in scenarios.SCENARIOS + scenarios.OPT_IN + techniques.TECHNIQUES]
    if unknown:
        from evaluator.errors import unknown as unknown_name
        raise unknown_name("scenario", unknown[0], scenarios.SCENARIOS + scenarios.OPT_IN + techniques.TECHNIQUES)
    if args.precision <= 0:
        raise UserError(f"--precision must be > 0 percent, got {args.precision:g}")
    if args.max_time <= 0:
        raise UserError(f"--max-time must be > 0 seconds, got {args.max_time:g}")
    if args.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {args.warmup}")
    if args.serving_min_s < 0:
        raise UserError(f"--serving-min-s must be >= 0 seconds, got {args.serving_min_s:g}")
    if min(args.request_timeout, args.load_timeout, args.cell_timeout) <= 0:
        raise UserError("--request-timeout, --load-timeout and --cell-timeout must be > 0 seconds")
    deadlines = run.Deadlines(startup_s=args.load_timeout, load_s=args.load_timeout, request_s=args.request_timeout,
                              cell_s=args.cell_timeout)
    common = dict(prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, precision=args.precision / 100)
    chosen = {
        "latency": scenarios.Latency(warmup=args.warmup, min_iterations=args.min_iterations,
                                     min_duration_s=args.min_duration, max_time_s=args.max_time, **common),
        "throughput": scenarios.Throughput(batch_sizes=args.batch_sizes,
                                           max_time_s=min(args.max_time, scenarios.Throughput.max_time_s), **common),
        "quality": Quality(items=args.quality_items, seed=args.seed, ppl_window=args.ppl_window,
                           ppl_stride=args.ppl_stride, ppl_max_tokens=args.ppl_tokens, ppl_llamacpp=args.ppl_llamacpp),
        "serving": serving.Serving(rates=args.rates, concurrency=args.concurrency, requests=args.serving_requests,
                                   min_duration_s=args.serving_min_s, prompt_tokens=args.prompt_tokens,
                                   new_tokens=args.new_tokens, burstiness=args.burstiness, slo=args.slo),
        "attention": techniques.Attention(), "train": techniques.Train(), "flops": techniques.Flops(), "kv": techniques.Kv(),
    }
    if args.ppl_stride and args.ppl_stride >= (args.ppl_window or args.ppl_stride + 1):
        raise UserError(f"--ppl-stride {args.ppl_stride} must be smaller than --ppl-window {args.ppl_window}")
    if args.ppl_window and args.ppl_window < 2:
        raise UserError("--ppl-window must be at least 2 tokens")
    scenario_list = [chosen[s] for s in args.scenarios]
    constraints = arguments.constraints(args)  # refused here, before anything runs
    with leftovers.hold_machine(f"run of {','.join(args.model)}"):  # before the run folder: a refusal leaves nothing
        return _measure(args, scenario_list, constraints, deadlines, quality_left_out)


def _measure(args, scenario_list: list, constraints, deadlines, quality_left_out: bool) -> int:
    """Plan the run, execute it, write the report and say how it went."""
    from tqdm import tqdm

    from evaluator import evaluate, phases, run
    from evaluator.measure import scenarios

    prep = run.start_run(args.model, args.model_path, args.targets, args.backends, args.variants, scenario_list,
                         args.reports, args.reference, argv=args.argv, resume_id=args.resume, threads=args.threads,
                         reference_run=args.reference_run, pythons=args.python)
    check = scenarios.Check(new_tokens=min(args.check_tokens, (prep.context_length or 10**9) - 1))
    if quality_left_out:
        print(f"{','.join(args.model)} {'is' if len(args.model) == 1 else 'are'} synthetic (random weights): quality is "
              "left out; ask with --scenarios quality", file=sys.stderr)
    print(f"run {prep.run_id}: {len(prep.cells)} cells -> {prep.path}", file=sys.stderr)
    bar = tqdm(total=len(prep.cells), unit="cell", file=sys.stderr, dynamic_ncols=True, disable=None)  # no bar off a terminal

    def say(text):  # above the bar, on stderr like every other message of a run
        bar.write(text, file=sys.stderr)

    started = time.monotonic()
    try:
        failed, imprecise = evaluate.execute(prep, check, deadlines, constraints.margin,
                                             bool(args.resume), say, bar, not args.rescore)
    except KeyboardInterrupt:
        bar.close()
        report, done = evaluate.close(prep, constraints.as_dict())
        print(f"interrupted: {done} of {len(prep.cells)} cells finished and kept; report: {report}\n"
              f"go on with: just eval --resume {prep.run_id}", file=sys.stderr)
        return 130
    except UserError:
        raise
    except Exception as exc:  # a bug of the evaluator's own between cells: the finished cells and a report stay
        bar.close()
        log = store.log_evaluator_bug(prep.path, "running the cells")
        report, done = evaluate.close(prep, constraints.as_dict())
        print(f"evaluator bug: {type(exc).__name__}: {exc} (traceback in {log}); {done} of {len(prep.cells)} cells "
              f"finished and kept; report: {report}", file=sys.stderr)
        return 1
    bar.close()
    report, _ = evaluate.close(prep, constraints.as_dict())
    print(*phases.summarize(store.load_run(prep.path)[1], time.monotonic() - started), sep="\n", file=sys.stderr)
    print(f"report: {report}", file=sys.stderr)
    if imprecise:
        print(f"{len(imprecise)} timing cells did not reach ±{args.precision:g}% within --max-time {args.max_time:g} s "
              "(INVALID: their numbers carry the wider intervals they reached; raise --max-time for more):", file=sys.stderr)
        for r in imprecise:
            reached = [x["value"] for x in r["validity"]["rules"] if not x["met"]]
            print(f"  {r['cell_id']}: {', '.join(reached)}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(prep.cells)} cells failed:", file=sys.stderr)
        for r in failed:
            print(f"  {r['cell_id']}: {r['status']}: {r['reason']}", file=sys.stderr)
        return 1
    return 0


def cmd_backends(args) -> int:
    from evaluator.catalog.backends import discover

    good, broken = discover()
    for b in good.values():
        default = "" if b.default else "  (not in default runs)"
        print(f"{b.name:<16} {len(b.variants):>3} variants  formats={','.join(b.formats)}  devices={','.join(b.devices)}  "
              f"archs={','.join(b.archs)}{default}\n{'':<17}{b.description}")
    for name, why in broken.items():
        print(f"BROKEN {name}: {why}", file=sys.stderr)
    return 1 if broken else 0


def cmd_models(args) -> int:
    from evaluator.catalog.models import catalog

    for name, entry in catalog().items():
        where = entry.get("path") or (f"hub {entry['hub']}" if "hub" in entry else "synthetic (built on first use)")
        print(f"{name:<16} {where:<40} {entry.get('description', '')}")
    return 0


def cmd_targets(args) -> int:
    from evaluator.catalog.targets import all_targets, resolve

    for t in resolve(list(all_targets())):
        bw = f"{t.memory_bandwidth_gbs:g} GB/s" if t.memory_bandwidth_gbs else "bandwidth ?"
        print(f"{t.name:<12} {t.transport:<10} {t.arch:<8} {t.device:<5} {t.memory_gb:>6g} GB  {bw:<14} {t.description}")
    return 0


def _run_path(run_id: str, reports: Path) -> Path:
    path = Path(run_id)
    if not (path / "run.json").is_file():
        path = reports / run_id
    if not (path / "run.json").is_file():
        from evaluator.errors import unknown
        raise unknown("run", run_id, sorted(p.parent.name for p in reports.glob("*/run.json")))
    return path


def cmd_report(args) -> int:
    from evaluator.report import html

    path = _run_path(args.run_id, args.reports)
    stored = json.loads((path / "run.json").read_text()).get("guide")
    print(html.build(path, arguments.constraints(args, stored)))
    return 0


def cmd_export(args) -> int:
    from evaluator.report import export

    if args.format not in export.FORMATS:
        from evaluator.errors import unknown
        raise unknown("format", args.format, export.FORMATS)
    path = _run_path(args.run_id, args.reports)
    out = args.out or path / f"results.{args.format}"
    rows = export.table(path)
    export.write(rows, args.format, out)
    print(f"{len(rows)} rows -> {out}")
    return 0


def cmd_compare(args) -> int:
    from evaluator.report import compare

    rows, notes = compare.compare(_run_path(args.run_a, args.reports), _run_path(args.run_b, args.reports))
    print(compare.format_rows(rows, notes, args.changed_only))
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = arguments.parser().parse_args(argv)
    args.argv = argv[1:] if args.command == "eval" else None  # what --resume replays
    try:
        return {"eval": cmd_eval, "backends": cmd_backends, "models": cmd_models,
                "targets": cmd_targets, "report": cmd_report, "compare": cmd_compare,
                "export": cmd_export}[args.command](args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished cells are saved in their run folder", file=sys.stderr)
        return 130
