"""The quality scenario: one runner, the same token ids as every other backend, scored here.

It asks for log-probabilities only (HellaSwag items, WikiText-2 windows) and keeps the raw
answers beside the cell (raw/<cell>.json) so fidelity and every summary can be recomputed.
"""
from dataclasses import dataclass

from evaluator.launch.process import RunnerFailure
from evaluator.score import hellaswag, perplexity


# The most logits one grouped score request may make an engine hold: 2^25 floats (128 MiB in
# float32). At a 512-token vocabulary that is ~150 HellaSwag items a request; at 128k, one.
LOGITS_BUDGET = 2**25


@dataclass(frozen=True)
class Quality:
    hellaswag_limit: int | None = None   # None: all 10,042 items
    seed: int = 1234                     # for the --limit subset
    ppl_window: int | None = None        # None: min(model context, 1024)
    ppl_stride: int | None = None        # None: half the window
    ppl_max_tokens: int | None = None    # None: the whole file
    ppl_llamacpp: bool = False           # also llama-perplexity's definition (costs half the rolling pass)
    fidelity_windows: int = 8            # rolling windows scored with top-k for fidelity
    top_k: int = 10
    name: str = "quality"


def _checked(results: list, lengths: list[int], what: str) -> list:
    if len(results) != len(lengths) or any(len(r["logprobs"]) != n for r, n in zip(results, lengths)):
        raise RunnerFailure("invalid", f"{what}: expected {lengths} log-probabilities, got "
                            f"{[len(r.get('logprobs', [])) for r in results]}")
    return results


def _score_windows(runner, windows, timeout_s: float, top_k: int, top_k_windows: int, what: str, progress):
    """(total NLL, tokens scored, the answers of the first `top_k_windows` windows, with top-k)."""
    nll, count, kept = 0.0, 0, []
    for i, w in enumerate(windows):
        k = top_k if i < top_k_windows else 0
        (res,) = _checked(runner.request("score", timeout_s, sequences=[w.tokens], start=w.start, top_k=k)["results"],
                          [len(w.tokens) - w.start], what)
        nll -= sum(res["logprobs"])
        count += len(res["logprobs"])
        if k:
            kept.append(res)
        if progress and i % 100 == 0:
            progress(f"{what} {i}/{len(windows)}")
    return nll, count, kept


def _batches(reqs: list[dict], vocab_size: int):
    """HellaSwag items packed into grouped score requests, each holding at most LOGITS_BUDGET
    logits (rows x longest row x vocabulary) and at least one item."""
    batch, rows, width = [], 0, 0
    for req in reqs:
        r = rows + len(req["sequences"])
        w = max(width, len(req["prefix"]) + max(len(s) for s in req["sequences"]))
        if batch and r * w * vocab_size > LOGITS_BUDGET:
            yield batch
            batch, r, w = [], len(req["sequences"]), len(req["prefix"]) + max(len(s) for s in req["sequences"])
        batch.append(req)
        rows, width = r, w
    if batch:
        yield batch


def run(runner, tok, sc: Quality, timeout_s: float, vocab_size: int, progress=None) -> tuple[dict, dict]:
    """(metrics, raw) for one loaded runner."""
    items = hellaswag.select(hellaswag.load(), sc.hellaswag_limit, sc.seed)
    sums = []
    for batch in _batches(hellaswag.requests(items, tok), vocab_size):
        res = runner.request("score", timeout_s, groups=batch, top_k=0)["results"]
        if len(res) != len(batch):
            raise RunnerFailure("invalid", f"hellaswag: {len(batch)} groups asked, {len(res)} answered")
        for req, answers in zip(batch, res):
            lengths = [len(s) for s in req["sequences"]]
            sums.append([sum(r["logprobs"]) for r in _checked(answers, lengths, "hellaswag")])
        if progress:
            progress(f"hellaswag {len(sums)}/{len(items)}")
    metrics = {"hellaswag": hellaswag.summarize(items, sums)}
    metrics["hellaswag"]["subset"] = (None if sc.hellaswag_limit is None or sc.hellaswag_limit >= hellaswag.ITEMS
                                      else {"limit": sc.hellaswag_limit, "seed": sc.seed})

    source = perplexity.text()
    tokens = tok.encode_cached("wikitext-2-test", source)
    complete = sc.ppl_max_tokens is None or sc.ppl_max_tokens >= len(tokens)
    tokens = tokens if complete else tokens[: sc.ppl_max_tokens]
    window = sc.ppl_window or min(tok.context_length or 1024, 1024)
    stride = sc.ppl_stride or window // 2
    rolling = perplexity.rolling_windows(tokens, tok.bos, window, stride)
    nll, count, fidelity = _score_windows(runner, rolling, timeout_s, sc.top_k, sc.fidelity_windows, "perplexity", progress)
    ppl = {"rolling": perplexity.summarize_rolling(nll, count, source, window, stride, complete)}
    if sc.ppl_llamacpp and (tok.context_length is None or tok.context_length >= perplexity.LLAMACPP_CTX):
        chunks = perplexity.llamacpp_windows(tokens, tok.bos)
        nll, count, _ = _score_windows(runner, chunks, timeout_s, 0, 0, "llama.cpp perplexity", progress)
        ppl["llamacpp"] = perplexity.summarize_llamacpp(nll, count, len(chunks))
    metrics["perplexity"] = ppl
    raw = {"hellaswag": {"items": [it.index for it in items], "ending_logprob_sums": sums},
           "fidelity_windows": fidelity}
    return metrics, raw
