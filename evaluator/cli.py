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
from evaluator.errors import UserError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _csv(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _quality_items(text: str) -> str:
    if text in ("auto", "all"):
        return text
    try:
        return str(_positive_int(text))
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not auto, all or a positive number of items") from None


def _batch_sizes(text: str) -> tuple:
    return tuple(_positive_int(t) for t in _csv(text))



GUIDE_OPTIONS = {"memory_budget": "memory_budget_gb", "max_quality_loss": "max_quality_loss_pct",
                 "max_latency_ms": "max_latency_ms", "objective": "objective"}  # option -> Constraints field


def _guide_options(p: argparse.ArgumentParser) -> None:
    """Left unset unless given: `eval` fills in Constraints' defaults, `report` the run's own."""
    from evaluator.report.guide import OBJECTIVES, Constraints

    g = p.add_argument_group("decision guide (which configuration to deploy on each target)")
    g.add_argument("--memory-budget", type=float, metavar="GB", help="memory a configuration may use (default: each target's memory)")
    g.add_argument("--max-quality-loss", type=float, metavar="PCT", help="the quality gate's allowed loss against the "
                   "reference, in percent of it: HellaSwag acc_norm drop or perplexity rise. PASS when the whole 95%% "
                   f"interval of the loss is within it (default: {Constraints.max_quality_loss_pct:g})")
    g.add_argument("--max-latency-ms", type=float, metavar="MS", help="p95 end-to-end latency objective at batch 1 (default: none)")
    g.add_argument("--objective", help=f"what the best configuration maximizes or minimizes: "
                   f"{', '.join(OBJECTIVES)} (default: {Constraints.objective})")


def _constraints(args, stored: dict | None = None):
    """The options given, on top of `stored` (a run's own constraints) or the defaults."""
    from evaluator.report.guide import Constraints

    given = {field: getattr(args, opt) for opt, field in GUIDE_OPTIONS.items() if getattr(args, opt) is not None}
    return Constraints(**{**(stored or {}), **given})


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, like every other bad input
        self.exit(2, f"error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    from evaluator.measure import serving
    from evaluator.measure.scenarios import SCENARIOS, Latency, Throughput
    from evaluator.run import Deadlines

    p = _Parser(prog="deploy-eval", description="Measure one model across backends and devices, side by side.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    e = sub.add_parser("eval", help="evaluate a model on targets", description=(
        "Run every (backend variant x target x scenario) cell for MODEL and write reports/<run-id>/ "
        "with one JSON file per cell and index.html. Each cell first checks greedy output from BOS "
        "(against the published reference where the model has one), then times."))
    e.add_argument("model", nargs="?", help="catalog name (see `just models`), a hub id org/name, or a label with --model-path")
    e.add_argument("--resume", metavar="RUN_ID", help="finish an interrupted run: re-runs only the cells that did not end ok or "
                   "unsupported, or whose inputs changed (model, backend, options); takes no other arguments")
    e.add_argument("--model-path", help="local Hugging Face folder (config.json, *.safetensors, tokenizer.json)")
    e.add_argument("--targets", type=_csv, default=["local"], help="comma-separated targets (default: local; see `just targets`)")
    e.add_argument("--backends", type=_csv, help="comma-separated backends (default: every default backend; see `just backends`)")
    e.add_argument("--variants", type=_csv, help="comma-separated variant names or globs, e.g. 'fp32-*,bf16-sdpa-kv'; "
                   "'*' for all (default: each backend's defaults)")
    e.add_argument("--scenarios", type=_csv, default=None,
                   help=f"comma-separated, from {', '.join(SCENARIOS)} (default: all; synthetic models: no quality), serving, and the "
                        "techniques attention, train, flops, kv (pytorch_eager; `just techniques MODEL` runs them)")
    e.add_argument("--prompt-tokens", type=_positive_int, default=Latency.prompt_tokens,
                   help="prompt length in tokens, BOS included (default: %(default)s)")
    e.add_argument("--new-tokens", type=_positive_int, default=Latency.new_tokens,
                   help="tokens generated per request (default: %(default)s)")
    e.add_argument("--warmup", type=int, default=Latency.warmup, help="untimed requests before timing (default: %(default)s)")
    e.add_argument("--min-iterations", type=_positive_int, default=Latency.min_iterations,
                   help="latency: at least this many timed requests (default: %(default)s)")
    e.add_argument("--min-duration", type=float, default=Latency.min_duration_s,
                   help="latency: and at least this many seconds of them (default: %(default)s)")
    e.add_argument("--precision", type=float, default=100 * Latency.precision, metavar="PCT",
                   help="timing: sample until the 95%% interval of every headline median is within this share of it "
                        "(half-width, %%); a cell that cannot reach it within --max-time is invalid (default: %(default)g)")
    e.add_argument("--max-time", type=float, default=Latency.max_time_s, metavar="S",
                   help="timing: the cap on a latency loop, and on each batch size of the throughput sweep "
                        f"({Throughput.max_time_s:g} s by default there), precision reached or not (default: %(default)g)")
    e.add_argument("--batch-sizes", type=_batch_sizes, default=Throughput.batch_sizes, help="throughput sweep (default: 1,4,16)")
    e.add_argument("--check-tokens", type=_positive_int, default=256,
                   help="greedy tokens from BOS checked before timing (default: %(default)s)")
    v = e.add_argument_group("serving (scenario `serving`, asked for by name: a seeded stream of requests, rate by rate)")
    v.add_argument("--rates", type=serving.parse_rates, default=serving.Serving.rates, help="requests/s, rising to the knee (1,2,..64)")
    v.add_argument("--serving-requests", type=_positive_int, default=serving.Serving.requests,
                   help="requests per rate (default: %(default)s)")
    v.add_argument("--burstiness", type=serving.parse_burstiness, default=1.0,
                   help="gamma shape of the gaps: 1 Poisson, <1 burstier (default: 1)")
    v.add_argument("--slo", type=serving.parse_slo, default=(), metavar="ttft:MS,tpot:MS,e2e:MS",
                   help="latency objectives: goodput and the max requests/s within them")
    q = e.add_argument_group("quality (scenario `quality`: HellaSwag, WikiText-2 perplexity, fidelity to the reference)")
    q.add_argument("--quality-items", type=_quality_items, default="auto", metavar="auto|N|all",
                   help="HellaSwag items, scored in a seeded random order: auto stops once every variant's verdict "
                        "against the reference is known (or cannot be); N: the first N; all: 10,042 (default: %(default)s)")
    q.add_argument("--limit", type=lambda t: str(_positive_int(t)), dest="quality_items", metavar="N",
                   help="the same as --quality-items N")
    q.add_argument("--seed", type=int, default=1234, help="seed of the HellaSwag order (default: %(default)s)")
    q.add_argument("--ppl-window", type=_positive_int, help="rolling perplexity window in tokens (default: min(context, 1024))")
    q.add_argument("--ppl-stride", type=_positive_int, help="rolling perplexity stride (default: half the window)")
    q.add_argument("--ppl-tokens", type=_positive_int, help="only the first N tokens of WikiText-2 test (default: the whole "
                   "file; with --quality-items auto its windows are sampled in a seeded order, as many as the verdicts need)")
    q.add_argument("--ppl-llamacpp", action="store_true",
                   help="also perplexity as llama-perplexity -c 512 defines it (512-token chunks, second half scored)")
    q.add_argument("--reference", default="pytorch_eager:fp32-sdpa-kv", metavar="BACKEND:VARIANT[@TARGET]",
                   help="what every variant's quality is compared with: on each target its own, or with @TARGET that "
                        "target's for all (default: %(default)s)")
    q.add_argument("--reference-run", metavar="RUN_ID", help="take the reference's quality from an earlier run instead "
                   "of measuring it (same model, data, order and windows; refused otherwise)")
    e.add_argument("--python", action="append", default=[], metavar="BACKEND=PATH",
                   help="run BACKEND's runner with this interpreter, an environment you prepared (offline GPU boxes, "
                        "another transformers): used as it is, nothing is built; checked once before the run; local "
                        "targets (repeat for several backends)")
    e.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads every engine uses (default: each engine's own choice, recorded in results)")
    e.add_argument("--request-timeout", type=float, default=Deadlines.request_s,
                   help="seconds a runner may take to answer one request after load; then it is killed (default: %(default)s)")
    e.add_argument("--cell-timeout", type=float, default=Deadlines.cell_s,
                   help="seconds for a whole cell, load and every request; then its runner is killed (default: %(default)s)")
    e.add_argument("--load-timeout", type=float, default=Deadlines.load_s, help="seconds for startup plus load (default: %(default)s)")
    e.add_argument("--reports", type=Path, default=store.REPORTS, help="where run folders go (default: reports/)")
    _guide_options(e)

    sub.add_parser("backends", help="list backends and say which manifests are broken", description=(
        "List every folder under backends/ from its backend.toml (never importing backend code): formats, devices, "
        "architectures, variants. A broken manifest is printed as BROKEN with why, and the exit code is 1."))
    sub.add_parser("models", help="list the model catalog", description=(
        "List evaluator/catalog/models.toml: built-in models and the Hugging Face hub ids the others resolve to "
        "(through the local hub cache first). Any org/name hub id or --model-path folder also works."))
    sub.add_parser("targets", help="list targets (built-in and ~/.config/deploy-eval/targets.toml)", description=(
        "List targets: transport, CPU architecture, device, memory and memory bandwidth. Add your own in "
        "~/.config/deploy-eval/targets.toml or the file named by DEPLOY_EVAL_TARGETS (see README)."))
    r = sub.add_parser("report", help="rebuild a run's index.html from its stored results", description=(
        "Rebuild reports/RUN_ID/index.html from run.json and cells/*.json alone (nothing is re-run). "
        "Decision-guide options given here replace the ones the run was started with."))
    r.add_argument("run_id", help="a folder name under reports/ (or a path to one)")
    r.add_argument("--reports", type=Path, default=store.REPORTS, help=argparse.SUPPRESS)
    _guide_options(r)
    x = sub.add_parser("export", help="a run's results as one tidy table (csv, parquet or markdown)", description=(
        "One row per configuration x metric x statistic, with its 95% interval, unit, sample count and timing "
        "verdict, read from the stored cells (see evaluator/report/export.py). pandas reads it directly."))
    x.add_argument("run_id", help="a folder name under reports/ (or a path to one)")
    x.add_argument("--format", default="csv", help="csv, parquet or md (default: %(default)s)")
    x.add_argument("--out", type=Path, help="the file to write (default: results.<format> in the run's folder)")
    x.add_argument("--reports", type=Path, default=store.REPORTS, help=argparse.SUPPRESS)
    c = sub.add_parser("compare", help="what changed between two runs, beyond their own noise", description=(
        "Match the cells of two runs by backend, variant, target and scenario, and mark each metric that changed "
        "by more than the runs' own noise (see evaluator/report/compare.py for the rules)."))
    c.add_argument("run_a", help="the earlier run (a folder name under reports/ or a path)")
    c.add_argument("run_b", help="the later run")
    c.add_argument("--changed-only", action="store_true", help="print only the metrics that changed")
    c.add_argument("--reports", type=Path, default=store.REPORTS, help=argparse.SUPPRESS)
    return p


def _resumed(args) -> argparse.Namespace:
    """The arguments of the run being resumed, read back from its run.json."""
    run_json = args.reports / args.resume / "run.json"
    if not run_json.is_file():
        from evaluator.errors import unknown
        raise unknown("run", args.resume, sorted(p.parent.name for p in args.reports.glob("*/run.json")))
    argv = json.loads(run_json.read_text()).get("argv")
    if argv is None:
        raise UserError(f"run {args.resume} was not started by `eval` with its arguments recorded; it cannot be resumed")
    old = parser().parse_args(["eval", *argv])
    old.reports, old.resume, old.argv = args.reports, args.resume, argv
    return old


def cmd_eval(args) -> int:
    from evaluator import run
    from evaluator.launch import leftovers
    from evaluator.measure import scenarios, serving, techniques
    from evaluator.score.quality import Quality

    if args.resume:
        if args.model is not None:
            raise UserError("--resume RUN_ID takes no model or other options: the run's own are reused")
        args = _resumed(args)
    elif args.model is None:
        raise UserError("eval needs a MODEL (see `just models`), or --resume RUN_ID")
    quality_left_out = False
    if args.scenarios is None:  # random weights have no quality worth a quarter of an hour
        from evaluator.catalog import models
        quality_left_out = models.is_synthetic(args.model, args.model_path)
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
        "serving": serving.Serving(rates=args.rates, requests=args.serving_requests, prompt_tokens=args.prompt_tokens,
                                   new_tokens=args.new_tokens, burstiness=args.burstiness, slo=args.slo),
        "attention": techniques.Attention(), "train": techniques.Train(), "flops": techniques.Flops(), "kv": techniques.Kv(),
    }
    if args.ppl_stride and args.ppl_stride >= (args.ppl_window or args.ppl_stride + 1):
        raise UserError(f"--ppl-stride {args.ppl_stride} must be smaller than --ppl-window {args.ppl_window}")
    if args.ppl_window and args.ppl_window < 2:
        raise UserError("--ppl-window must be at least 2 tokens")
    scenario_list = [chosen[s] for s in args.scenarios]
    constraints = _constraints(args)  # refused here, before anything runs
    with leftovers.hold_machine(f"run of {args.model}"):  # before the run folder: a refusal leaves nothing
        return _measure(args, scenario_list, constraints, deadlines, quality_left_out)


def _measure(args, scenario_list: list, constraints, deadlines, quality_left_out: bool) -> int:
    """Plan the run, execute it, write the report and say how it went."""
    from tqdm import tqdm

    from evaluator import evaluate, phases, run
    from evaluator.measure import scenarios

    prep = run.start_run(args.model, args.model_path, args.targets, args.backends, args.variants, scenario_list,
                         args.reports, args.reference, argv=args.argv, resume_id=args.resume, threads=args.threads,
                         reference_run=args.reference_run, pythons=args.python)
    check = scenarios.Check(new_tokens=min(args.check_tokens, (prep.tok.context_length or 10**9) - 1))
    if quality_left_out:
        print(f"{args.model} is synthetic (random weights): quality is left out; ask with --scenarios quality",
              file=sys.stderr)
    print(f"run {prep.run_id}: {len(prep.cells)} cells -> {prep.path}", file=sys.stderr)
    bar = tqdm(total=len(prep.cells), unit="cell", file=sys.stderr, dynamic_ncols=True, disable=None)  # no bar off a terminal

    def say(text):  # above the bar, on stderr like every other message of a run
        bar.write(text, file=sys.stderr)

    started = time.monotonic()
    try:
        failed, imprecise = evaluate.execute(prep, check, deadlines, constraints.margin,
                                             bool(args.resume), say, bar)
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
    print(html.build(path, _constraints(args, stored)))
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
    args = parser().parse_args(argv)
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
