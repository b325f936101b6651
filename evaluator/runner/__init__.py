"""Runner-side library, shipped into every backend environment and image.

Standard library only, and it imports nothing from the host side. The contract is in
`protocol.py`; `serve.py` is the loop that speaks it and owns the timestamps.
"""
from evaluator.runner.protocol import (ERROR_TYPES, PROTOCOL_VERSION, Engine, RunnerError, artifact_home, check_options, choice,
                                      score_groups_as_rows)
from evaluator.runner import child
from evaluator.runner.serve import serve

__all__ = ["PROTOCOL_VERSION", "ERROR_TYPES", "Engine", "RunnerError", "artifact_home", "check_options", "child", "choice",
           "score_groups_as_rows", "serve"]
