"""The pytorch_eager bare loop with the model's forward under torch.compile (mode default,
dynamic shapes, as pytorch_compile's runner compiles it)."""
from bare_pytorch_eager import run

run(compile_mode="default")
