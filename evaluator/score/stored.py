"""The shape of a quality cell's stored answers (raw/<cell>.json), checked before any comparison
reads them. A file that does not have it is a malformed answer: its comparison is lost, with the
field that is wrong named. Anything that goes wrong after the check is the evaluator's own bug,
and is reported as one."""
import functools
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator


class _Shape(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


def _paired(a: list, b: list, what: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{what}: {len(a)} against {len(b)}")


class HellaSwag(_Shape):
    items: list[int]
    ending_logprob_sums: list[list[float]]

    @model_validator(mode="after")
    def _check(self):
        _paired(self.items, self.ending_logprob_sums, "items and rows of ending sums")
        return self


class Windows(_Shape):
    window_nll: list[float]
    window_tokens: list[int]

    @model_validator(mode="after")
    def _check(self):
        _paired(self.window_nll, self.window_tokens, "window NLLs and token counts")
        return self


class Perplexity(_Shape):
    rolling: Windows | None = None
    llamacpp: Windows | None = None


class FidelityWindow(_Shape):
    logprobs: list[float]
    top: list[list[list[float]]]  # per position, [token id, log-probability] pairs
    wanted: list[list[float]] | None = None  # as earlier versions stored it; now `kl`
    kl: list[float] | None = None

    @model_validator(mode="after")
    def _check(self):
        _paired(self.logprobs, self.top, "positions and top lists")
        if self.kl is not None:
            _paired(self.logprobs, self.kl, "positions and KL values")
        return self


class Answers(_Shape):
    hellaswag: HellaSwag | None = None
    perplexity: Perplexity = Perplexity()
    fidelity_windows: list[FidelityWindow] = []


class Malformed(ValueError):
    """A stored answer that is not what a quality cell writes."""


def read(path: Path) -> dict:
    """The stored answers at `path` as written, once they are known to have the shape above.

    Read once per version of the file and shared: the reference's answers are asked for by every
    variant in every round (a small vocabulary's whole distributions: ~20 MB, seconds to parse
    and check), so callers build new dicts and lists and never change these in place."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise Malformed(f"{path.name} cannot be read: {exc.strerror}") from None
    return _read(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _read(path: Path, mtime_ns: int, size: int) -> dict:
    try:
        raw = json.loads(path.read_text())
        Answers.model_validate(raw)
    except OSError as exc:
        raise Malformed(f"{path.name} cannot be read: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise Malformed(f"{path.name} is not JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the top level"
        raise Malformed(f"{path.name}: {where}: {first['msg']}") from None
    return raw
