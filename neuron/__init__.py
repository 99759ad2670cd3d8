"""neuron: the per-host daemon that holds GGUF models in (V)RAM and serves them over HTTP."""

__version__ = "0.1.0"
