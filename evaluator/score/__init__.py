"""Quality, computed once, in the evaluator, from the raw log-probabilities every runner returns.

Runners only answer `score` requests for token ids the evaluator chose; every definition
(HellaSwag's normalization, perplexity's windows, fidelity's KL) lives here, so numbers from
different backends and devices are comparable by construction.
"""
