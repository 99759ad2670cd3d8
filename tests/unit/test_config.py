"""Both config loaders: good files load, bad ones fail naming file, key and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex.config import load_config, set_pinned
from cortex.fleet.eviction import Strategy
from neuron.config import load_config as load_neuron_config
from synapse.tomlconf import ConfigError

GOOD = """
models_config = "models.toml"

[gateway]
listen = "127.0.0.1:4000"
api_keys = ["k1"]
cold_load_timeout_s = 30

[eviction]
strategy = "priority"
idle_unload_after_s = 600

[[neurons]]
name = "gpu1"
endpoint = "http://gpu1:13131"
token = "t"

[[neurons]]
name = "gpu2"
endpoint = "http://gpu2:13131/"
"""

MODELS = """
# operator's notes stay
[[models]]
id = "coder"   # the main one
source = "org/repo:Q4_K_M"
n_ctx = 8192
priority = 5
aliases = ["gpt-4o"]

[[models]]
id = "small"
source = "small.gguf"

[aliases]
"cheap" = "small"
"""


def write(tmp_path: Path, cortex: str, models: str = MODELS) -> Path:
    (tmp_path / "models.toml").write_text(models)
    path = tmp_path / "cortex.toml"
    path.write_text(cortex)
    return path


def test_good_config_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, GOOD))
    assert config.listen == "127.0.0.1:4000"
    assert config.strategy is Strategy.PRIORITY
    assert [n.endpoint for n in config.neurons] == ["http://gpu1:13131", "http://gpu2:13131"]
    assert config.neurons[0].token == "t"
    assert config.aliases == {"cheap": "small", "gpt-4o": "coder"}
    assert config.models[0].priority == 5 and config.models[0].n_ctx == 8192


@pytest.mark.parametrize(
    ("cortex", "models", "key", "line"),
    [
        (GOOD.replace('listen = "127.0.0.1:4000"', 'listn = "x"'), MODELS, "gateway.listn", 5),
        (
            GOOD.replace("cold_load_timeout_s = 30", "cold_load_timeout_s = -1"),
            MODELS,
            "gateway.cold_load_timeout_s",
            7,
        ),
        (
            GOOD.replace('strategy = "priority"', 'strategy = "fifo"'),
            MODELS,
            "eviction.strategy",
            10,
        ),
        (
            GOOD.replace('endpoint = "http://gpu1:13131"', 'endpoint = "gpu1:13131"'),
            MODELS,
            "neurons[0].endpoint",
            15,
        ),
        (GOOD.replace('name = "gpu2"', 'name = "gpu1"'), MODELS, "neurons", None),
        (
            GOOD.replace("cold_load_timeout_s = 30", 'cold_load_timeout_s = "long"'),
            MODELS,
            "gateway.cold_load_timeout_s",
            7,
        ),
        (GOOD, MODELS.replace("n_ctx = 8192", "n_ctx = true"), "models[0].n_ctx", 6),
        # The contract's bounds on a load body (what the neuron would refuse) apply here too.
        (GOOD, MODELS.replace("n_ctx = 8192", "n_ctx = 8"), "models[0].n_ctx", 6),
        (GOOD, MODELS.replace('"cheap" = "small"', '"cheap" = "nothing"'), "aliases.cheap", None),
        (GOOD, MODELS.replace('id = "small"', 'id = "coder"'), "models", None),
        (
            GOOD,
            MODELS.replace("priority = 5", 'priority = 5\npinned_on = ["gpu9"]'),
            "pinned_on",
            None,
        ),
    ],
)
def test_bad_config_names_file_key_and_line(
    tmp_path: Path, cortex: str, models: str, key: str, line: int | None
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, cortex, models))
    assert info.value.key == key
    assert info.value.path.endswith(".toml")
    if line is not None:
        assert info.value.line == line
        assert f":{line}:" in str(info.value)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path, "[gateway\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_set_pinned_keeps_comments(tmp_path: Path) -> None:
    write(tmp_path, GOOD)
    models = tmp_path / "models.toml"
    set_pinned(models, "coder", ["gpu1"])
    text = models.read_text()
    assert "# operator's notes stay" in text and "# the main one" in text
    assert 'pinned_on = ["gpu1"]' in text
    set_pinned(models, "coder", [])
    assert "pinned_on" not in models.read_text()
    assert models.read_text().replace("\n", "") == MODELS.replace("\n", "")


def test_neuron_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "neuron.toml"
    path.write_text(
        'listen = "127.0.0.1:9000"\nmodel_dirs = ["/srv/models"]\n'
        'default_models = ["a", { id = "b", source = "b.gguf", n_ctx = 2048 }]\n'
        '[admission]\nmax_queue_depth = 3\n[auth]\ntoken = "file-token"\n'
    )
    config = load_neuron_config(path)
    assert config.port == 9000 and config.model_dirs == (Path("/srv/models"),)
    assert [m.model for m in config.default_models] == ["a", "b"]
    assert config.default_models[1].n_ctx == 2048
    assert config.admission.max_queue_depth == 3 and config.auth_token == "file-token"
    monkeypatch.setenv("NEURON_TOKEN", "env-token")
    assert load_neuron_config(path).auth_token == "env-token"
    path.write_text('default_models = [{ id = "b", parallel = 65 }]\n')
    with pytest.raises(ConfigError) as info:
        load_neuron_config(path)
    assert info.value.key == "default_models[0].parallel"  # the load API's own bound
    path.write_text("[admission]\nmax_in_flight = 0\n")
    with pytest.raises(ConfigError) as info:
        load_neuron_config(path)
    assert info.value.key == "admission.max_in_flight" and info.value.line == 2
    path.write_text("vram_headroom = 5\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_neuron_config(path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "auto"),
        ('[engine]\nflash_attn = "off"\n', "off"),
        ('[engine]\nflash_attn = "on"\n', "on"),
    ],
)
def test_neuron_flash_attn_mode(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "neuron.toml"
    path.write_text(text)
    assert load_neuron_config(path).flash_attn == expected


def test_neuron_flash_attn_rejects_other_values(tmp_path: Path) -> None:
    path = tmp_path / "neuron.toml"
    path.write_text('[engine]\nparallel = 2\nflash_attn = "yes"\n')
    with pytest.raises(ConfigError, match='"auto", "on", "off"') as info:
        load_neuron_config(path)
    assert info.value.key == "engine.flash_attn" and info.value.line == 3
