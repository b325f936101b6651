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


def check_keys(where: str, table: dict, allowed) -> None:
    """Unknown keys are errors, never silently ignored (a typo must not change a result)."""
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"{where}: unknown key {key!r}{hint}; valid keys: {', '.join(sorted(allowed))}")
