"""Perplexity on WikiText-2 test (raw), the whole file as one token stream.

Two definitions, each named in every result:

rolling (ours): the stream is [BOS] + tokens(file). Windows of `window` tokens advance by
  `stride`; each window scores only the tokens no earlier window scored, so every token is
  scored exactly once, with at least window - stride tokens of context (except at the start).
  From the total negative log-likelihood NLL (nats) over T tokens:
    token perplexity = exp(NLL / T)
    word perplexity  = exp(NLL / W), W = whitespace-separated words of the file
    bits per byte    = NLL / (ln 2 * B), B = UTF-8 bytes of the file
  Word perplexity and bits per byte compare across tokenizers; token perplexity does not.
  With `--quality-items auto` the windows are scored in a seeded random order and only as
  many as the verdicts need (quality.py): the token perplexity is then an estimate of the
  whole file's, with its 95% interval (ratio estimator over windows); word perplexity and
  bits per byte are given for the whole file only.

llamacpp (llama-perplexity's, tools/perplexity/perplexity.cpp): the file without its final
  newline (llama.cpp's -f drops it), tokenized as llama.cpp tokenizes it
  (HostTokenizer.encode_as_llamacpp), BOS first; consecutive, non-overlapping chunks of
  n_ctx = 512 tokens of that stream, the first token of each replaced by BOS; only the second
  half scored (positions 257..511, predicted with at least 256 tokens of context).
  token perplexity = exp(mean NLL), the number llama-perplexity -c 512 prints (checked against
  a llama-perplexity built from the same llama.cpp source: tests/test_llama_perplexity.py).
"""
import math
import random
import re
from dataclasses import dataclass

from evaluator.catalog.backends import REPO
from evaluator.stats import paired
from evaluator.stats.intervals import Z95

DATA = REPO / "data" / "wikitext-2" / "wiki.test.raw"
LLAMACPP_CTX = 512


@dataclass(frozen=True)
class Window:
    tokens: list
    start: int  # first scored position inside the window


def text() -> str:
    return DATA.read_text(encoding="utf-8")


def llamacpp_text() -> str:
    """The file as llama-perplexity -f reads it: one trailing newline dropped."""
    whole = text()
    return whole[:-1] if whole.endswith("\n") else whole


def rolling_windows(tokens: list[int], bos: int, window: int, stride: int) -> list[Window]:
    if not 1 <= stride < window:
        raise ValueError(f"stride {stride} must be in [1, window {window}): a scored token needs context")
    stream = [bos] + tokens
    windows, scored_until, end = [], 1, min(window, len(stream))
    while True:
        begin = max(0, end - window)
        windows.append(Window(stream[begin:end], scored_until - begin))
        scored_until = end
        if end == len(stream):
            return windows
        end = min(end + stride, len(stream))


def llamacpp_windows(stream: list[int], bos: int, n_ctx: int = LLAMACPP_CTX) -> list[Window]:
    """llama-perplexity's chunks of `stream` (BOS + the text's tokens): every whole chunk of n_ctx,
    its first token replaced by BOS, scored from the middle."""
    return [Window([bos] + stream[i * n_ctx + 1:(i + 1) * n_ctx], n_ctx // 2 + 1) for i in range(len(stream) // n_ctx)]


def window_order(count: int, seed: int | None) -> list[int]:
    """The order windows are scored in: the file's, or seeded random (a sample of any length
    is then a simple random sample of the windows)."""
    return list(range(count)) if seed is None else random.Random(seed).sample(range(count), count)


def summarize_rolling(window_nll: list[float], window_tokens: list[int], total_windows: int, text: str,
                      window: int, stride: int, file_tokens: int | None = None) -> dict:
    """The rolling perplexity of the windows scored. `file_tokens`, the tokens all the windows
    score, turns a per-token rate into per-word and per-byte ones (`text`, what those tokens
    spell, has known words and bytes): exactly where every window is scored, as an estimate with
    its interval from a sample."""
    nll, tokens = sum(window_nll), sum(window_tokens)
    out = {"definition": f"rolling, window {window}, stride {stride}, BOS first, every token scored once",
           "tokens": tokens, "nll": nll, "token_perplexity": math.exp(nll / tokens),
           "windows": len(window_tokens), "windows_total": total_windows}
    sampled = len(window_tokens) < total_windows
    rate, se = paired.log_rate(window_nll, window_tokens) if sampled and len(window_tokens) >= 2 else (nll / tokens, None)
    if se is not None:  # a sample of the windows: the whole file's perplexity lies within this interval
        out["token_perplexity_ci"] = [math.exp(rate - Z95 * se), math.exp(rate + Z95 * se)]
        out["definition"] += f", {len(window_tokens)} of {total_windows} windows (seeded random sample)"
    words, size = len(re.findall(r"\S+", text)), len(text.encode("utf-8"))
    if (se is not None or not sampled) and words and size:
        # Word- and byte-normalized: the file's NLL (its tokens times the rate) over its words or
        # bytes; with a sample, the rate's interval scaled the same way.
        file_tokens = file_tokens or tokens
        out.update(words=words, bytes=size, word_perplexity=math.exp(rate * file_tokens / words),
                   bits_per_byte=rate * file_tokens / (math.log(2) * size))
        if se is not None:
            lo, hi = rate - Z95 * se, rate + Z95 * se
            out.update(word_perplexity_ci=[math.exp(lo * file_tokens / words), math.exp(hi * file_tokens / words)],
                       bits_per_byte_ci=[lo * file_tokens / (math.log(2) * size), hi * file_tokens / (math.log(2) * size)])
    return out


def summarize_llamacpp(nll: float, tokens: int, chunks: int) -> dict:
    return {"definition": f"llama-perplexity compatible: {chunks} chunks of {LLAMACPP_CTX}, BOS first, second half scored",
            "tokens": tokens, "nll": nll, "token_perplexity": math.exp(nll / tokens)}
