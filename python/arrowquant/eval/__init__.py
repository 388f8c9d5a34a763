"""End-to-end evaluation: sample the FP model and quantized settings in pairs and compare.

from arrowquant.eval import evaluate
doc = evaluate("models/digits-ddpm", {"local": "out-local/"}, out_dir="eval-out")
"""

from arrowquant.eval.harness import evaluate

__all__ = ["evaluate"]
