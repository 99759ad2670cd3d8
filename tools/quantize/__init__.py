"""cortex-quantize: turn a GGUF into quantized GGUFs with llama.cpp's own quantizer.

Installed as the package ``cortex_quantize`` (code under ``tools/quantize/``) with the console
script ``cortex-quantize``. Layout:

* `quant_types` — pure: the quantization types offered, parsing ``--types``, classifying the
  input's type, bits-per-weight math, output names, result rows and their order.
* `gguf_info` — reads the input's metadata and tensor index with the ``gguf`` package.
* `imatrix` — loads an importance matrix (llama.cpp's GGUF or legacy ``.dat`` format).
* `quantize` — calls ``llama_model_quantize`` through llama-cpp-python, capturing llama.cpp's
  log to drive a per-tensor progress bar.
* `perplexity` — llama-perplexity-style perplexity with llama-cpp-python.
* `models_toml` — writes the matching ``[[models]]`` entry, keeping the operator's comments.
* `cli` — argparse + rich: validation, progress, the closing table.

Inside the package, imports are relative only.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
