"""vllm_cuda: backends/vllm's runner, unchanged, under vLLM's CUDA build."""
import os
import runpy

runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "vllm", "runner.py"), run_name="__main__")
