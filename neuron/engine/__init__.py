"""The neuron's inference engine: the only package that imports llama_cpp.

`Engine` is the protocol the rest of the neuron uses; `types` holds what requests and results
look like. `neuron.engine.llama` (continuous batching on llama.cpp's low-level API) and
`neuron.engine.fake` (tests) implement it; `neuron.engine.vocab` opens a GGUF for its
vocabulary only, to count tokens of a model that is not loaded (a `Tokenizer`). Importing this
package does not import llama_cpp.
"""

from neuron.engine.memory import supports_gpu_offload, tune_malloc
from neuron.engine.protocol import Engine, Tokenizer
from neuron.engine.types import (
    EngineInfo,
    EngineStats,
    Finished,
    FinishReason,
    GenerateRequest,
    Grammar,
    Piece,
    Sampling,
    TokenLogprob,
    Usage,
)

__all__ = [
    "Engine",
    "EngineInfo",
    "EngineStats",
    "FinishReason",
    "Finished",
    "GenerateRequest",
    "Grammar",
    "Piece",
    "Sampling",
    "TokenLogprob",
    "Tokenizer",
    "Usage",
    "supports_gpu_offload",
    "tune_malloc",
]
