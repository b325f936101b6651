"""Weights another backend makes: a variant whose manifest says `made_by` (vLLM's gptq-w4a16 is
llm-compressor's GPTQ checkpoint) runs on a model folder that the maker backend's runner builds.

The maker is asked over the protocol like any runner, on the same target: its load makes the
artifact (or finds it in the target's artifact cache, where it keeps what it built) and answers
its path as the maker's runner sees it. Both runners of a target share that cache (a local
folder, the same folder mounted at /artifacts in every container, a remote host's own), so the
path is the consumer's too. The host never reads the checkpoint; the consumer's load gets it as
`model.path`, with the maker's answer as `model.made_by`.

One making per (run, target, maker, variant, model): the latency, throughput and quality
cells of a variant share it (the first pays for the calibration; its time is in that cell's
`weights` phase and in the artifact's record).
"""
from dataclasses import replace

from evaluator.launch.process import RunnerFailure

_made: dict[tuple, dict] = {}


def made(cell, run_id: str, model_sha256: str, start, load_s: float) -> dict:
    """The artifact the maker of `cell.variant` answers (its `path` among the rest). `start(maker_cell)`
    opens the maker's runner on the cell's target and returns (runner, model spec); a maker that
    fails or refuses fails this cell with its reason."""
    by, variant = cell.variant.maker
    key = (run_id, cell.target.name, by.name, variant.name, model_sha256)
    if key in _made:  # made for an earlier cell of this run: this one built nothing (another run asks again)
        return dict(_made[key], reused=True, build_s=None)
    maker_cell = replace(cell, id=f"{cell.id}--weights", backend=by, variant=variant)
    runner = None
    try:
        runner, spec = start(maker_cell)
        answer = runner.request("load", load_s, model=spec, options=dict(maker_cell.options, device=cell.target.device))
    except RunnerFailure as exc:
        exc.reason = f"making its weights with {by.name} {variant.name}: {exc.reason}"
        exc.log_tail = runner.log_tail() if runner else None  # the maker's log: the cell's own has not started
        raise
    finally:
        if runner:
            runner.close()
    artifact = answer.get("artifact")
    if not isinstance(artifact, dict) or not isinstance(artifact.get("path"), str):
        raise RunnerFailure("protocol-error", f"{by.name} {variant.name}'s load answered no artifact path: {artifact!r}"[:300])
    _made[key] = dict(artifact, backend=by.name, variant=variant.name)
    return _made[key]
