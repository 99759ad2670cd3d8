"""The neuron's inference engine: the only code that imports llama_cpp."""

from neuron.engine.llama_thread import Cancelled, Engine, Usage, limit_malloc_arenas

__all__ = ["Cancelled", "Engine", "Usage", "limit_malloc_arenas"]
