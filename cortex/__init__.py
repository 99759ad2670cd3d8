"""cortex: the gateway that makes a handful of neurons look like one OpenAI/Anthropic server."""

__version__ = "0.1.0"
