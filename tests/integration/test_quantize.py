"""cortex-quantize end to end on a real model, through the real command (no mocks).

The test makes a valid llama-architecture F16 GGUF from the SmolLM2-135M demo model (its Q4_1
tensors dequantized with the gguf package, metadata copied), quantizes it to Q8_0 and Q4_K_M with
perplexity on a short English text, loads and runs every output with llama-cpp-python, and
checks the table, the JSON results, the output metadata and the models.toml entry. Then the
refusals (exit 2, one message, no traceback, nothing written), requantizing the Q4_1 demo model
with --allow-requantize, and an importance matrix reaching llama.cpp (Q2_K_S refuses without).

SmolLM2's 576-wide rows are not a multiple of the 256-element k-quant block, so llama.cpp puts
most Q4_K_M tensors in Q5_0/Q6_K/Q8_0 instead: its Q4_K_M is ~6.3 bits per weight here, not
~4.8. The bounds below allow for that.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType
from gguf.quants import dequantize

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

# Original prose written for this test (no third-party text): enough for 3 chunks of 128 tokens.
PPL_TEXT = """\
The lighthouse on the northern cape was built in the spring of a wet year, when the harbour \
still smelled of tar and fresh timber. The keeper who first lived there kept a small notebook \
in which he wrote down the weather every morning, the ships that passed in the afternoon, and \
the number of birds that rested on the gallery rail at dusk. His entries were short and plain. \
On calm days he noted only the direction of the wind and the colour of the sea. On stormy days \
he wrote more, describing how the lamp trembled in its brass frame and how the spray reached \
the windows of the lantern room, nearly forty metres above the rocks.

Years later, his granddaughter found the notebooks in a wooden chest and read them one winter \
evening after another. She was surprised by how little the coast had changed. The same currents \
carried the same kinds of driftwood into the bay, and the fishing boats still left before dawn \
and returned in the early afternoon. What had changed was the town itself. The narrow streets \
near the water had been paved, the old market hall had become a library, and the school now \
taught children whose parents had come from many different countries.

She decided to copy the most interesting entries into a single book and to give it to the \
library. To do this well, she needed to understand the instruments her grandfather had used. \
A retired sailor explained the barometer to her, and a teacher from the school helped her read \
the old units of measurement. Slowly the pages became a record not only of weather and ships \
but of a whole way of life: the careful habits of a man who believed that paying attention was \
a kind of duty.

When the book was finished, the library held a small evening for the people of the town. The \
granddaughter read a few entries aloud. One described a night in November when a cargo ship \
lost its rudder and drifted toward the rocks, and how the crews of three fishing boats worked \
together to tow it into the harbour. Another described a quiet morning in June when the sea was \
so still that the keeper could see the reflection of the lighthouse stretching across the water \
toward the town. After the reading, several older people stood up to share what they remembered \
of those years, and the evening ended much later than anyone had planned.

Today the lamp is automatic and no keeper lives on the cape. Visitors climb the spiral stairs on \
summer weekends, look out over the bay, and read a short sign about the building's history. \
Few of them know about the notebooks, but the book is still on a shelf in the library, and every \
few weeks someone borrows it, takes it home, and reads about the wind, the ships and the birds.
"""


# Runs with perplexity use one thread: on a busy shared CI box llama.cpp's spinning compute
# threads slow down badly, and one is plenty for a 135M model. Quantizing alone uses two.
def run_tool(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cortex_quantize", *(str(a) for a in args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
        check=False,
    )


def assert_refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("cortex-quantize: error: "), result.stderr
    assert message in result.stderr


def make_f16_copy(source: Path, dest: Path) -> Path:
    """A valid llama GGUF with SmolLM2's metadata and its tensors dequantized to F16 (F32 for
    1-D), i.e. what convert_hf_to_gguf.py would have written for these weights."""
    reader = GGUFReader(source)
    writer = GGUFWriter(dest, arch=str(reader.fields["general.architecture"].contents()))
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        if name == "general.file_type":
            writer.add_uint32(name, int(LlamaFileType.MOSTLY_F16))
            continue
        sub_type = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        if tensor.tensor_type == GGMLQuantizationType.F32:
            data = np.array(tensor.data, dtype=np.float32)
        else:
            data = dequantize(tensor.data, tensor.tensor_type)
        if data.ndim >= 2:
            data = data.astype(np.float16)
        writer.add_tensor(tensor.name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("quantize")
    yield path
    shutil.rmtree(path, ignore_errors=True)  # ~1 GB of GGUFs; pytest keeps old tmp dirs


@pytest.fixture(scope="module")
def f16_model(smollm_path: Path, workdir: Path) -> Path:
    return make_f16_copy(smollm_path, workdir / "SmolLM2-135M-Instruct-F16.gguf")


@pytest.fixture(scope="module")
def ppl_text(workdir: Path) -> Path:
    path = workdir / "lighthouse.txt"
    path.write_text(PPL_TEXT, encoding="utf-8")
    return path


def load_and_generate(path: Path, prompt: str, n: int = 8) -> tuple[str, dict[str, str]]:
    """Greedy continuation with llama-cpp-python, and the metadata llama.cpp read."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=256, n_threads=1, verbose=False)
    try:
        out = llm.create_completion(prompt, max_tokens=n, temperature=0.0, seed=1)
        metadata = dict(llm.metadata)
    finally:
        llm.close()
    return out["choices"][0]["text"], metadata


MODELS_TOML = """\
# catalogue kept by hand
[[models]]
id = "other"                 # something unrelated
source = "other.gguf"

[aliases]
"gpt-4o-mini" = "other"
"""


def test_f16_to_q8_0_and_q4_k_m_with_perplexity_table_and_models_toml(
    f16_model: Path, ppl_text: Path, workdir: Path
) -> None:
    out_dir = workdir / "out"
    models_toml = workdir / "models.toml"
    models_toml.write_text(MODELS_TOML)
    results = workdir / "results.json"
    result = run_tool(
        f16_model,
        "--types", "Q8_0,q4_k_m",
        "--out-dir", out_dir,
        "--ppl-text", ppl_text,
        "--ppl-ctx", 128,
        "--ppl-chunks", 2,
        "--models-toml", models_toml,
        "--id", "smol-q8",
        "--n-ctx", 2048,
        "--threads", 1,
        "--json", results,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    stdout = result.stdout

    # The closing table: header, the input as reference row, both outputs.
    assert "perplexity on 2×128 tokens (126 scored)" in stdout
    for header in ("type", "size MiB", "bits/weight", "PPL", "Δ PPL"):
        assert header in stdout
    table = stdout[stdout.index("cortex-quantize results") :]
    rows = [line for line in table.splitlines() if line.startswith("│")]
    assert [r.split("│")[1].strip() for r in rows] == ["F16 (input)", "Q8_0", "Q4_K_M"]
    assert re.search(r"Q4_K_M: \d+ of 272 tensors fell back to another type", stdout)

    document = json.loads(results.read_text())
    ref, q8, q4 = document["rows"]
    assert [ref["type"], q8["type"], q4["type"]] == ["F16", "Q8_0", "Q4_K_M"]
    assert ref["reference"] and not q8["reference"] and not q4["reference"]
    assert document["perplexity"] == {"ctx": 128, "chunks": 2, "tokens_scored": 126}

    # Sizes and bits per weight: F16 > Q8_0 > Q4_K_M, each in its range.
    assert ref["size_bytes"] > q8["size_bytes"] > q4["size_bytes"]
    assert 15.9 < ref["bits_per_weight"] < 16.5
    assert 8.4 < q8["bits_per_weight"] < 9.0
    assert 4.5 < q4["bits_per_weight"] < 6.8  # ~6.3: the fall-backs above
    for row in (q8, q4):
        path = Path(row["path"])
        assert path.parent == out_dir and path.stat().st_size == row["size_bytes"]
    assert Path(q8["path"]).name == "SmolLM2-135M-Instruct-Q8_0.gguf"
    assert not list(out_dir.glob("*.part"))

    # Perplexity: sane values, Q8_0 ≈ F16, Q4_K_M no better than Q8_0.
    for row in (ref, q8, q4):
        assert math.isfinite(row["ppl"]) and 1.0 < row["ppl"] < 500.0
        assert row["ppl_uncertainty"] > 0
    assert abs(q8["ppl"] / ref["ppl"] - 1) < 0.05
    assert q8["ppl"] <= q4["ppl"] * 1.01

    # Every output loads in llama-cpp-python, is what it says, and still answers.
    text, metadata = load_and_generate(Path(q8["path"]), "The capital of France is")
    assert "Paris" in text
    assert metadata["general.file_type"] == str(int(LlamaFileType.MOSTLY_Q8_0))
    text, metadata = load_and_generate(Path(q4["path"]), "The capital of France is")
    assert text.strip()
    assert metadata["general.file_type"] == str(int(LlamaFileType.MOSTLY_Q4_K_M))

    # models.toml: the operator's lines kept, the entry added for the first type.
    text = models_toml.read_text()
    assert text.startswith(MODELS_TOML.split("[aliases]")[0])
    assert '"gpt-4o-mini" = "other"' in text
    from cortex.config import load_models

    models, _ = load_models(models_toml)
    entry = next(m for m in models if m.id == "smol-q8")
    assert (entry.source, entry.n_ctx) == ("SmolLM2-135M-Instruct-Q8_0.gguf", 2048)
    assert "# cortex-quantize: Q8_0 from SmolLM2-135M-Instruct-F16.gguf" in text
    assert f"PPL {q8['ppl']:.3f} vs {ref['ppl']:.3f} (F16)" in text
    assert document["models_toml"]["action"] == "added"


def test_requantizing_needs_the_flag(smollm_path: Path, workdir: Path) -> None:
    out_dir = workdir / "requant"
    refused = run_tool(smollm_path, "--types", "Q8_0", "--out-dir", out_dir)
    assert_refused(refused, "is already quantized (Q4_1)")
    assert "--allow-requantize" in refused.stderr
    assert not out_dir.exists()

    done = run_tool(
        smollm_path, "--types", "Q8_0", "--out-dir", out_dir, "--allow-requantize", "--threads", 2
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Requantized from Q4_1" in done.stdout
    assert "Add --ppl-text FILE" in done.stdout
    text, metadata = load_and_generate(
        out_dir / "SmolLM2-135M-Instruct-Q8_0.gguf", "The capital of France is"
    )
    assert text.strip()
    assert metadata["general.file_type"] == str(int(LlamaFileType.MOSTLY_Q8_0))


def test_refusals_exit_2_with_one_message(f16_model: Path, workdir: Path) -> None:
    text_file = workdir / "notes.txt"
    text_file.write_text("not a model at all\n")
    short_text = workdir / "short.txt"
    short_text.write_text("Too short to measure anything.\n")
    out_dir = workdir / "refused"
    cases = [
        (("--types", "Q4_K_M,Q9_X"), "unknown quantization type(s) Q9_X; valid: F16, BF16, Q8_0"),
        ((workdir / "missing.gguf", "--types", "Q8_0"), "missing.gguf: no such file"),
        ((text_file, "--types", "Q8_0"), "notes.txt: not a GGUF file"),
        (("--types", "IQ2_XXS"), "IQ2_XXS need(s) an importance matrix"),
        (("--types", "Q8_0", "--ppl-text", short_text), "tokens long; perplexity needs at least"),
        (("--types", "Q8_0", "--imatrix", text_file), "notes.txt: not an imatrix file"),
        (("--types", "Q8_0", "--models-toml", text_file), "--models-toml and --id go together"),
    ]
    for args, message in cases:
        if not isinstance(args[0], Path):
            args = (f16_model, *args)
        assert_refused(run_tool(*args, "--out-dir", out_dir), message)
    assert not out_dir.exists()


def write_ones_imatrix(model: Path, dest: Path, *, wrong: bool = False) -> Path:
    """A GGUF importance matrix of ones for every matrix of ``model`` (uniform importance is a
    valid matrix: it is what quantizing without one assumes)."""
    writer = GGUFWriter(dest, arch="imatrix")
    writer.add_array("imatrix.datasets", ["ones"])
    writer.add_uint32("imatrix.chunk_count", 1)
    writer.add_uint32("imatrix.chunk_size", 512)
    for tensor in GGUFReader(model).tensors:
        if len(tensor.shape) < 2 or tensor.name == "token_embd.weight":
            continue
        n = int(tensor.shape[0]) + (1 if wrong else 0)
        writer.add_tensor(f"{tensor.name}.in_sum2", np.ones(n, dtype=np.float32))
        writer.add_tensor(f"{tensor.name}.counts", np.ones(1, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dest


def test_an_importance_matrix_reaches_llama_cpp(f16_model: Path, workdir: Path) -> None:
    out_dir = workdir / "imatrix"
    refused = run_tool(f16_model, "--types", "Q2_K_S", "--out-dir", out_dir)
    assert_refused(refused, "Q2_K_S need(s) an importance matrix")

    wrong = write_ones_imatrix(f16_model, workdir / "wrong.imatrix.gguf", wrong=True)
    assert_refused(
        run_tool(f16_model, "--types", "Q2_K_S", "--imatrix", wrong, "--out-dir", out_dir),
        "values but the model's tensor needs",
    )

    imatrix = write_ones_imatrix(f16_model, workdir / "ones.imatrix.gguf")
    done = run_tool(
        f16_model, "--types", "Q2_K_S", "--imatrix", imatrix, "--out-dir", out_dir, "--threads", 2
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "importance matrix ones.imatrix.gguf: 210 entries, 210 of this model's tensors" in (
        done.stdout
    )
    text, metadata = load_and_generate(
        out_dir / "SmolLM2-135M-Instruct-Q2_K_S.gguf", "Once upon a time", n=4
    )
    assert text.strip()
    assert metadata["general.file_type"] == str(int(LlamaFileType.MOSTLY_Q2_K_S))
    assert metadata["quantize.imatrix.file"] == "ones.imatrix.gguf"
    assert metadata["quantize.imatrix.entries_count"] == "210"
    assert metadata["quantize.imatrix.dataset"] == "ones"
    assert metadata["quantize.imatrix.chunks_count"] == "1"


def test_a_llama_cpp_failure_is_reported_with_its_reason_and_leaves_nothing(
    f16_model: Path, workdir: Path
) -> None:
    """Straight through the API (the CLI refuses this case before calling llama.cpp)."""
    from cortex_quantize.errors import RunError
    from cortex_quantize.quant_types import find_type
    from cortex_quantize.quantize import quantize_file

    output = workdir / "failed" / "x-IQ2_XXS.gguf"
    output.parent.mkdir()
    with pytest.raises(RunError, match=r"IQ2_XXS: llama\.cpp failed to quantize: .*imatrix"):
        quantize_file(f16_model, output, find_type("IQ2_XXS"), threads=1, allow_requantize=False)
    assert list(output.parent.iterdir()) == []
