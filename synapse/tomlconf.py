"""Strict TOML reading shared by both programs' config loaders.

`TomlTable` wraps one parsed table and hands out typed values; every key it hands out is marked
used, and `finish()` rejects the keys nobody asked for. Every problem is a `ConfigError` naming
the file, the dotted key and, when it can be found, the line, so that an operator can fix a typo
without reading code. Parsing uses tomlkit so that writers elsewhere can keep comments.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import tomlkit
from tomlkit.exceptions import ParseError

T = TypeVar("T")
_MISSING = object()


class ConfigError(Exception):
    """A config file that cannot be used; the message names file, key and line."""

    def __init__(self, path: Path | str, key: str, message: str, line: int | None = None) -> None:
        where = f"{path}" + (f":{line}" if line else "")
        super().__init__(f"{where}: {key}: {message}" if key else f"{where}: {message}")
        self.path = str(path)
        self.key = key
        self.line = line


def _find_line(text: str, table: str, key: str) -> int | None:
    """Best-effort line of `key` inside the table named `table` ("" = root, "a.b", "x[2]")."""
    want_table, _, index_text = table.partition("[")
    want_index = int(index_text.rstrip("]")) if index_text else None
    current = ""
    seen_arrays: dict[str, int] = {}
    key_re = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        header = re.match(r"^\[\[\s*([^\]]+?)\s*\]\]", stripped)
        if header:
            name = header.group(1)
            seen_arrays[name] = seen_arrays.get(name, -1) + 1
            current = f"{name}[{seen_arrays[name]}]"
            continue
        header = re.match(r"^\[\s*([^\]]+?)\s*\]", stripped)
        if header:
            current = header.group(1)
            continue
        wanted = want_table if want_index is None else f"{want_table}[{want_index}]"
        if current == wanted and key_re.match(line):
            return number
    return None


class TomlTable:
    """Typed, strict access to one TOML table of one file."""

    def __init__(self, path: Path | str, text: str, data: dict[str, Any], name: str = "") -> None:
        self.path = path
        self.text = text
        self.data = data
        self.name = name
        self._used: set[str] = set()

    @classmethod
    def load(cls, path: Path) -> TomlTable:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(path, "", f"cannot read: {exc.strerror}") from exc
        try:
            doc = tomlkit.parse(text)
        except ParseError as exc:
            raise ConfigError(path, "", f"invalid TOML: {exc}", getattr(exc, "line", None)) from exc
        return cls(path, text, doc.unwrap())

    def dotted(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def error(self, key: str, message: str) -> ConfigError:
        return ConfigError(
            self.path, self.dotted(key), message, _find_line(self.text, self.name, key)
        )

    def get(
        self,
        key: str,
        kind: type[T] | tuple[type, ...],
        default: Any = _MISSING,
        check: Callable[[Any], str | None] | None = None,
    ) -> T:
        """The value at `key`, which must be of `kind`; `check` returns an error text or None."""
        self._used.add(key)
        if key not in self.data:
            if default is _MISSING:
                raise self.error(key, "is required")
            return default
        value = self.data[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # bool is an int in Python; a TOML `true` where a number belongs is still a mistake.
        if isinstance(value, bool) and bool not in kinds:
            raise self.error(key, f"expected {_names(kinds)}, got a boolean")
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds):
            raise self.error(key, f"expected {_names(kinds)}, got {type(value).__name__}")
        if check is not None and (problem := check(value)):
            raise self.error(key, problem)
        return cast(T, value)  # an instance of `kind` (checked above)

    def strings(self, key: str, default: list[str] | None = None) -> list[str]:
        values = self.get(key, list, [] if default is None else default)
        for item in values:
            if not isinstance(item, str):
                raise self.error(key, "expected a list of strings")
        return list(values)

    def table(self, key: str) -> TomlTable:
        value = self.get(key, dict, {})
        return TomlTable(self.path, self.text, value, self.dotted(key))

    def tables(self, key: str) -> list[TomlTable]:
        values = self.get(key, list, [])
        out = []
        for index, item in enumerate(values):
            if not isinstance(item, dict):
                raise self.error(key, f"expected an array of tables ([[{key}]])")
            out.append(TomlTable(self.path, self.text, item, f"{self.dotted(key)}[{index}]"))
        return out

    def finish(self) -> None:
        """Reject keys that no reader asked for: they are typos or options of another version."""
        for key in self.data:
            if key not in self._used:
                raise self.error(key, "unknown key")


def positive(value: float) -> str | None:
    return None if value > 0 else "must be greater than 0"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must be 0 or more"


def listen_address(value: str) -> str | None:
    try:
        parse_listen(value)
    except ValueError as exc:
        return str(exc)
    return None


def parse_listen(value: str) -> tuple[str, int]:
    """'host:port' (IPv6 as '[::1]:port') → (host, port)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"expected 'host:port', got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port_text)


def _names(kinds: tuple[type, ...]) -> str:
    return " or ".join(
        {
            str: "a string",
            int: "an integer",
            float: "a number",
            bool: "a boolean",
            list: "a list",
            dict: "a table",
        }.get(k, k.__name__)
        for k in kinds
    )
