"""onnxruntime_gpu: backends/onnxruntime's runner and exporter under the onnxruntime-gpu package."""
import os
import runpy

runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "onnxruntime", "runner.py"), run_name="__main__")
