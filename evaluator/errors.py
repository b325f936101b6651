"""The one exception the CLI turns into a one-line message and a non-zero exit."""
import difflib


class UserError(Exception):
    """Bad input from the user: a wrong name, a missing file, a malformed config."""


def unknown(kind: str, name: str, valid) -> UserError:
    """`Unknown backend 'pytroch'. Did you mean: pytorch_eager? Available: ...`"""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" Did you mean: {close[0]}?" if close else ""
    return UserError(f"unknown {kind} {name!r}.{hint} Available: {', '.join(valid) or '(none)'}")
