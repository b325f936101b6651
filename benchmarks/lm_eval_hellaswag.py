"""deploy-eval's HellaSwag next to lm-evaluation-harness's, side by side on this machine: the
same model folder, the same items, the same device and threads, both computing acc and acc_norm.

lm-eval (0.4.13, its `hf` model: transformers' AutoModelForCausalLM) runs in its own
environment, .venvs/lm-eval (built once from PyPI, with this machine's torch 2.13.0 CPU wheel
and pytorch_eager's transformers). This machine cannot reach the hub, so lm-eval reads the
items from a local task: the same prepared file deploy-eval reads (data/hellaswag/, llama.cpp's
lm-eval-preprocessed validation set, in deploy-eval's seeded item order) as `query`, four
`choices` and `label`, scored with
lm-eval's own multiple-choice path (" " + choice as the continuation, acc and acc_norm by
characters): lm-eval's hellaswag task differs only in where the preprocessing happens.

deploy-eval's side is one quality cell of pytorch_eager fp32-sdpa-kv on the same items (every
item, no early stop; perplexity on 2,000 tokens, which its timing leaves out): the time is the
cell's `hellaswag` phase, lm-eval's its `total_evaluation_time_seconds` (the evaluation, model
loading excluded on both sides). The two alternate, `--rounds` times; the ratio is the median
of the per-round ratios. Both process walls are printed too.

    .venvs/host/bin/python benchmarks/lm_eval_hellaswag.py [--items 2000] [--batch-size 64] [--rounds 2] [--model stories260k-student]
"""
import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from evaluator.score import hellaswag  # noqa: E402

VENV = REPO / ".venvs" / "lm-eval"
REQUIREMENTS = ["torch==2.13.0", "transformers==5.24.0", "lm-eval[hf]==0.4.13"]
MODELS = {"stories260k": REPO / "data" / "stories260k" / "hf",  # 8-wide heads: attention is most of the time
          "stories260k-student": REPO / "data" / "stories260k-student" / "hf"}  # 32-wide heads, 13x the weights
SEED = 1234  # deploy-eval's default item order: lm-eval's first N are its first N
TASK = """task: hellaswag_local
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{{{query}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def lm_eval_python() -> Path:
    python = VENV / "bin" / "python"
    want = hashlib.sha256(repr(REQUIREMENTS).encode()).hexdigest()
    stamp = VENV / ".stamp"
    if python.exists() and stamp.exists() and stamp.read_text() == want:
        return python
    print(f"building {VENV} (once): {' '.join(REQUIREMENTS)}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS], check=True)
    stamp.write_text(want)
    return python


def lm_eval(python: Path, model: str, task_dir: Path, out: Path, items: int, batch_size: int, threads: int) -> dict:
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(threads), HF_DATASETS_CACHE=str(out / "datasets"))
    t0 = time.monotonic()
    done = subprocess.run([str(python), "-m", "lm_eval", "--model", "hf",
                           "--model_args", f"pretrained={MODELS[model]},dtype=float32", "--device", "cpu",
                           "--tasks", "hellaswag_local", "--include_path", str(task_dir), "--batch_size", str(batch_size),
                           "--limit", str(items), "--output_path", str(out), "--log_samples"],
                          env=env, capture_output=True, text=True, timeout=7200)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        sys.exit(f"lm-eval failed: {done.stderr.strip()[-1500:]}")
    (results,) = out.rglob("results_*.json")
    r = json.loads(results.read_text())
    (samples,) = out.rglob("samples_hellaswag_local_*.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    return {"eval_s": float(r["total_evaluation_time_seconds"]), "wall_s": wall,
            "acc": round(sum(x["acc"] for x in rows)), "acc_norm": round(sum(x["acc_norm"] for x in rows)), "items": len(rows)}


def deploy_eval(model: str, items: int, reports: Path) -> dict:
    t0 = time.monotonic()
    # --rescore: every round scores afresh (a repeated run would otherwise re-score the answers kept from the last)
    done = subprocess.run([sys.executable, "-m", "evaluator", "eval", model, "--backends", "pytorch_eager",
                           "--variants", "fp32-sdpa-kv", "--scenarios", "quality", "--limit", str(items),
                           "--ppl-tokens", "2000", "--rescore", "--reports", str(reports)],
                          cwd=REPO, capture_output=True, text=True, timeout=7200)
    wall = time.monotonic() - t0
    if done.returncode != 0:
        sys.exit(f"deploy-eval failed: {done.stderr.strip()[-1500:]}")
    (path,) = reports.rglob("cells/*quality.json")
    cell = json.loads(path.read_text())
    hs = cell["metrics"]["hellaswag"]
    return {"eval_s": cell["phases"]["hellaswag"], "wall_s": wall, "items": hs["items"],
            "acc": round(hs["acc"]["value"] * hs["items"]), "acc_norm": round(hs["acc_norm"]["value"] * hs["items"])}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=2000, help="the first N items in deploy-eval's seeded order (default 2000)")
    p.add_argument("--batch-size", type=int, default=64, help="lm-eval's batch size (default 64)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--model", choices=sorted(MODELS), default="stories260k")
    args = p.parse_args()
    python = lm_eval_python()
    threads = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "hellaswag.jsonl"
        data.write_text("".join(json.dumps({"query": it.context, "choices": list(it.endings), "label": it.label}) + "\n"
                                for it in hellaswag.order(hellaswag.load(), SEED)))
        (tmp / "task").mkdir()
        (tmp / "task" / "hellaswag_local.yaml").write_text(TASK.format(data=data))
        ratios = []
        for rnd in range(args.rounds):
            theirs = lm_eval(python, args.model, tmp / "task", tmp / f"lm-eval-{rnd}", args.items, args.batch_size, threads)
            ours = deploy_eval(args.model, args.items, tmp / f"deploy-eval-{rnd}")
            same = (theirs["items"], theirs["acc"], theirs["acc_norm"]) == (ours["items"], ours["acc"], ours["acc_norm"])
            ratios.append(theirs["eval_s"] / ours["eval_s"])
            print(f"round {rnd + 1}: lm-eval {theirs['eval_s']:.1f} s evaluating (process {theirs['wall_s']:.1f} s), "
                  f"deploy-eval {ours['eval_s']:.1f} s (process {ours['wall_s']:.1f} s): {ratios[-1]:.2f}x; "
                  f"correct: lm-eval {theirs['acc']}/{theirs['acc_norm']}, deploy-eval {ours['acc']}/{ours['acc_norm']} "
                  f"of {ours['items']} (acc/acc_norm) -> {'identical' if same else 'DIFFERENT'}", flush=True)
        print(f"deploy-eval's HellaSwag on {args.model} is {statistics.median(ratios):.2f}x lm-eval's speed "
              f"(median of {args.rounds} rounds; lm-eval batch {args.batch_size}, {threads} threads)")


if __name__ == "__main__":
    main()
