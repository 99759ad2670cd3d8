"""A GGUF model's geometry as plain data: what memory planning needs, read by `gguf_meta`.

Pure: a frozen value with no reader attached, so that the planner (`neuron.offload`) and its
tests use it without the `gguf` package or numpy. Sizes are bytes; per-layer tuples hold one
entry per repeating layer.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelGeometry"]


@dataclass(frozen=True)
class ModelGeometry:
    """What memory planning needs from one GGUF, or all parts of a split one: hyper-parameters from
    the first part's metadata, tensor sizes summed over every part.

    Sizes are bytes. `n_head_kv` and `swa_layers` hold one entry per layer; `layer_bytes`,
    `output_bytes` and `token_embd_bytes` count every tensor once (see the module docstring).
    """

    architecture: str
    name: str | None
    file_bytes: int
    n_layers: int
    n_ctx_train: int
    n_embd: int
    n_head: int
    n_head_kv: tuple[int, ...]
    head_dim_k: int
    head_dim_v: int
    sliding_window: int | None
    swa_layers: tuple[bool, ...]
    layer_bytes: tuple[int, ...]
    output_bytes: int
    token_embd_bytes: int
    tied_embeddings: bool
    n_vocab: int
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None

    @property
    def tensor_bytes(self) -> int:
        """All tensor data in the file(s), each tensor once."""
        return sum(self.layer_bytes) + self.output_bytes + self.token_embd_bytes
