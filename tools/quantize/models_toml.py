"""Write the ``[[models]]`` entry for a quantized file into cortex's models.toml.

Invariants:
* The file is edited with tomlkit: the operator's comments, order and other keys survive; only
  ``source``, ``n_ctx`` (when given) and the trailing comment on ``source`` of the entry with our
  ``id`` change, or one ``[[models]]`` table is appended when no entry has that id.
* ``source`` is the output's file name: the neuron resolves bare file names in its
  ``model_dirs``.
* `check_models_toml` is called before any work: a file that does not parse, whose ``models`` is
  not an array of tables, or where the id is already an alias, raises `InputError`.
* The write is atomic (temporary file + rename).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT

from .errors import InputError

__all__ = ["check_models_toml", "write_models_entry"]


def _load(path: Path) -> Any:
    if not path.exists():
        return tomlkit.document()
    try:
        return tomlkit.parse(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--models-toml {path}: cannot read: {exc}") from exc
    except TOMLKitError as exc:
        raise InputError(f"--models-toml {path}: not valid TOML: {exc}") from exc


def check_models_toml(path: Path, model_id: str) -> None:
    if not model_id.strip():
        raise InputError("--id must not be empty")
    if path.exists() and not path.is_file():
        raise InputError(f"--models-toml {path}: not a file")
    if not path.exists() and not path.parent.is_dir():
        raise InputError(f"--models-toml {path}: directory {path.parent} does not exist")
    document = _load(path)
    models = document.get("models")
    if models is not None and not isinstance(models, AoT):
        raise InputError(f"--models-toml {path}: 'models' is not an array of [[models]] tables")
    aliases = document.get("aliases")
    if isinstance(aliases, dict) and model_id in aliases:
        raise InputError(f"--models-toml {path}: {model_id!r} is already an alias in [aliases]")


def write_models_entry(
    path: Path, *, model_id: str, source: str, n_ctx: int | None, comment: str
) -> str:
    """Add or update the entry; returns ``"added"`` or ``"updated"``."""
    check_models_toml(path, model_id)
    document = _load(path)
    source_item = tomlkit.string(source)
    source_item.comment(comment)
    models = document.get("models")
    action = "updated"
    entry = None
    if isinstance(models, AoT):
        entry = next((t for t in models if t.get("id") == model_id), None)
    if entry is None:
        action = "added"
        entry = tomlkit.table()
        entry.add("id", model_id)
        entry.add("source", source_item)
        if n_ctx is not None:
            entry.add("n_ctx", n_ctx)
        if isinstance(models, AoT):
            models.append(entry)
        else:
            document.append("models", tomlkit.aot())
            document["models"].append(entry)
    else:
        entry["source"] = source_item
        if n_ctx is not None:
            entry["n_ctx"] = n_ctx
    text = tomlkit.dumps(document)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    if path.exists():  # keep the operator's permissions (models.toml may hold nothing secret,
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))  # but it is theirs to decide)
    os.replace(tmp, path)
    return action
