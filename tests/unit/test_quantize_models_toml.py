"""cortex_quantize.models_toml: the entry is added or updated, everything else survives."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex.config import load_models
from cortex_quantize.errors import InputError
from cortex_quantize.models_toml import check_models_toml, write_models_entry

OPERATOR_FILE = """\
# Fleet catalogue — maintained by ops, do not reorder.
[[models]]
id = "qwen-coder"          # the coding model
source = "Qwen/Qwen2.5-Coder-7B-Instruct-GGUF:Q4_K_M"
n_ctx = 16384
priority = 10

# small one for tests
[[models]]
id = "smol"
source = "old-smol.gguf"
pinned_on = ["gpu1"]
aliases = ["tiny"]

[aliases]
"gpt-4o" = "qwen-coder"   # clients hard-code this
"""


def test_appends_a_new_entry_and_keeps_the_operators_comments(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(OPERATOR_FILE)
    action = write_models_entry(
        path, model_id="smol-q8", source="smol-Q8_0.gguf", n_ctx=2048, comment="Q8_0, 138 MiB"
    )
    text = path.read_text()
    assert action == "added"
    assert text.startswith(OPERATOR_FILE.split("[aliases]")[0])
    assert '"gpt-4o" = "qwen-coder"   # clients hard-code this' in text
    assert 'source = "smol-Q8_0.gguf" # Q8_0, 138 MiB' in text
    models, aliases = load_models(path)
    assert [m.id for m in models] == ["qwen-coder", "smol", "smol-q8"]
    assert (models[2].source, models[2].n_ctx) == ("smol-Q8_0.gguf", 2048)
    assert aliases == {"gpt-4o": "qwen-coder", "tiny": "smol"}


def test_updates_an_existing_entry_in_place(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    path.write_text(OPERATOR_FILE)
    path.chmod(0o640)
    action = write_models_entry(
        path, model_id="smol", source="smol-Q4_K_M.gguf", n_ctx=None, comment="Q4_K_M"
    )
    assert action == "updated"
    text = path.read_text()
    assert "old-smol.gguf" not in text
    assert text.replace('"smol-Q4_K_M.gguf" # Q4_K_M', '"old-smol.gguf"') == OPERATOR_FILE
    assert path.stat().st_mode & 0o777 == 0o640
    models, _ = load_models(path)
    smol = models[1]
    assert (smol.source, smol.pinned_on, smol.aliases) == ("smol-Q4_K_M.gguf", ("gpu1",), ("tiny",))

    write_models_entry(path, model_id="smol", source="smol-Q8_0.gguf", n_ctx=4096, comment="Q8")
    models, _ = load_models(path)
    assert (models[1].source, models[1].n_ctx) == ("smol-Q8_0.gguf", 4096)
    assert path.read_text().count("# Q8") == 1
    assert "# Q4_K_M" not in path.read_text()


def test_creates_the_file(tmp_path: Path) -> None:
    path = tmp_path / "models.toml"
    write_models_entry(path, model_id="m", source="m-Q8_0.gguf", n_ctx=None, comment="c")
    models, aliases = load_models(path)
    assert [(m.id, m.source, m.n_ctx) for m in models] == [("m", "m-Q8_0.gguf", None)]
    assert aliases == {}


@pytest.mark.parametrize(
    ("content", "model_id", "message"),
    [
        ("[[models]\nid=", "x", "not valid TOML"),
        ('models = "nope"\n', "x", "'models' is not an array"),
        (OPERATOR_FILE, "gpt-4o", "'gpt-4o' is already an alias"),
        (OPERATOR_FILE, " ", "--id must not be empty"),
    ],
)
def test_check_rejects(tmp_path: Path, content: str, model_id: str, message: str) -> None:
    path = tmp_path / "models.toml"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        check_models_toml(path, model_id)
    assert path.read_text() == content


def test_check_rejects_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        check_models_toml(tmp_path / "nope" / "models.toml", "x")
