"""One engine's runner for a benchmark script: the --backend, --variant and --model arguments,
their checking (a wrong name is one line and exit 1), and the runner started with that model
loaded, as a cell loads it."""
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evaluator import envs, store  # noqa: E402
from evaluator.catalog import backends, models  # noqa: E402
from evaluator.errors import UserError, unknown  # noqa: E402
from evaluator.launch import local  # noqa: E402


def add_arguments(p, backend="vllm", variant="fp32", model="synthetic-tiny"):
    p.add_argument("--backend", default=backend)
    p.add_argument("--variant", default=variant)
    p.add_argument("--model", default=model)


@contextmanager
def loaded(args, context_tokens: int, scenario: str | None = None):
    """The runner of args.backend with args.model loaded as args.variant (for `scenario`, where
    the engine starts something else for one: llama.cpp's server)."""
    try:
        found = backends.discover()[0]
        if args.backend not in found:
            raise unknown("backend", args.backend, sorted(found))
        backend = found[args.backend]
        options = dict(backend.variant(args.variant).options)
        model = models.resolve(args.model)
    except UserError as exc:
        sys.exit(f"{Path(sys.argv[0]).stem}: {exc}")
    fmt = next(f for f in backend.formats if model.artifact(f))
    with tempfile.TemporaryDirectory() as tmp:
        runner = local.start(backend, envs.python_for(backend), Path(tmp) / "runner.log", 300)
        try:
            spec = {"path": str(model.artifact(fmt)), "format": fmt, "sha256": model.content_hash(),
                    "artifact_cache": str(store.ARTIFACTS), "context_tokens": context_tokens,
                    **({"scenario": scenario} if scenario else {})}
            runner.request("load", 600, model=spec, options=options)
            yield runner
        finally:
            runner.close()


def median(summary: dict, digits: int = 3) -> str:
    """'1.234 ms [1.200, 1.250]': a summary's median with its 95% interval, where the sample bounds one."""
    ci = summary.get("p50_ci")
    interval = f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "[too few requests for an interval]"
    return f"{summary['p50']:.{digits}f} ms {interval}"
