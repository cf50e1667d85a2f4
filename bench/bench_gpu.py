"""The GPU part of the benchmarks: engines/gpu_check.py's Molmo2-4B-shaped model (random
weights) on a CUDA GPU, transformers' baseline vs the torch backend's decode path (static
KV cache compiled into CUDA graphs): vision ms/frame, time to first token, decode tokens/s,
their ratio and the fraction of the measured bandwidth roofline. Without a CUDA GPU it
prints {"skipped": ...}; the export/ONNX Runtime/TensorRT sections run with
`python -m molmo2_ros.engines.gpu_check` itself.
"""
import json
import sys

import torch

if __name__ == "__main__":
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA GPU"}))
        sys.exit(0)
    from molmo2_ros.engines.gpu_check import main

    sys.exit(main(["--only", "hf_baseline,decode_roofline,torch_static_cache"] + sys.argv[1:]))
