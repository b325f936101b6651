"""deploy-eval: measure one model across many backends and devices, side by side.

The host side (this package, minus `evaluator.runner`) plans cells, launches runners, measures,
scores, stores and reports. `evaluator.runner` is the runner-side library: stdlib only, it must
import nothing from here, so this file stays empty of imports.
"""
