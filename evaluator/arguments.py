"""The command line's arguments: the parser of every command, the types that check each value
as it is read (a bad one ends in one line and exit 2), and the decision guide's options, which
`eval` and `report` share. The commands themselves are in cli.py."""
import argparse
from pathlib import Path

from evaluator import store


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


def model_names(text: str) -> list[str]:
    """MODEL[,MODEL...]: a synthetic spec's own commas (synthetic:hidden_size=64,...) stay in it."""
    names = []
    for part in text.split(","):
        if names and names[-1].startswith("synthetic:") and "=" in part and not part.startswith("synthetic:"):
            names[-1] += "," + part
        elif not part.strip():
            raise argparse.ArgumentTypeError(f"{text!r} has an empty model name; give MODEL or MODEL,MODEL,...")
        else:
            names.append(part.strip())
    return names


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


def constraints(args, stored: dict | None = None):
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
    e.add_argument("model", nargs="?", type=model_names, help="catalog name (see `just models`), a hub id org/name, or a "
                   "label with --model-path; several comma-separated compare models (a teacher and its distilled or "
                   "pruned student): the first is the reference, HellaSwag items pair across all of them")
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
                   help="requests per rate, at least (default: %(default)s)")
    v.add_argument("--serving-min-s", type=float, default=serving.Serving.min_duration_s, metavar="SECONDS",
                   help="each rate's schedule lasts at least this long, with more requests at heavy rates, so a rate "
                        "measures the engine settled, not starting up (default: %(default)s)")
    v.add_argument("--concurrency", type=serving.parse_concurrency, default=(), metavar="N,N,..",
                   help="sweep numbers of users instead of rates: N requests in flight, each answered one letting "
                        "the next in (a closed load, like vllm bench serve --max-concurrency), e.g. 1,4,16")
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
    q.add_argument("--rescore", action="store_true",
                   help="score every quality cell anew, even where an earlier run on this machine kept the answers of the "
                        "same configuration (same model bytes, backend files, evaluator code, data and options), which a "
                        "run otherwise starts from and names in its report")
    q.add_argument("--reference-run", metavar="RUN_ID", help="take the reference's quality from an earlier run instead "
                   "of measuring it (same model, data, order and windows; refused otherwise)")
    e.add_argument("--python", action="append", default=[], metavar="BACKEND=PATH",
                   help="run BACKEND's runner with this interpreter, an environment you prepared (offline GPU boxes, "
                        "another transformers): used as it is, nothing is built; checked once before the run; local "
                        "targets (repeat for several backends)")
    e.add_argument("--threads", type=_positive_int, default=None,
                   help="CPU threads every engine uses (default: each engine's own choice, recorded in results)")
    e.add_argument("--request-timeout", type=float, default=Deadlines.request_s,
                   help="seconds a runner may take to answer one request after load; then it is killed (a chunk of timed "
                        "requests run back to back gets this plus twice their median each) (default: %(default)s)")
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
