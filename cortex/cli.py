"""`cortex` command line: `serve` runs the gateway; the other commands drive a running one.

`serve` runs the gateway (local mode when no config exists). `status`, `models`, `load`,
`unload`, `pin`, `unpin`, `cordon`, `uncordon` and `top` are clients of a gateway's admin API
(`--url`, default http://127.0.0.1:31313 or `CORTEX_URL`; `--key` or `CORTEX_ADMIN_KEY`, sent as
`Authorization: Bearer`). They print rich tables, or with `--json` the JSON a script wants.

Invariants: exit 0 on success, 1 when the gateway is unreachable or answers with an error (one
line on stderr, never a traceback), 2 for usage errors; the admin key is never printed. The
views (`status_view`, `model_rows`, `models_table`) are pure functions of the `/admin/fleet`
document, so they are tested without a gateway.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from rich.console import Console

from cortex.cli_views import NONE, model_rows, models_table, status_view
from synapse.tomlconf import ConfigError, parse_listen

DEFAULT_URL = "http://127.0.0.1:31313"
CONNECT_TIMEOUT_S = 5.0
QUERY_TIMEOUT_S = 30.0
# A load may cold-load a large model from a slow disk or evict first; the gateway's own
# cold_load_timeout_s bounds it, so the client only guards against a gateway that hangs.
ACTION_TIMEOUT_S = 3600.0
# RFC 3986 path characters stay as they are: the gateway's routes match the raw path, so an id
# like "org/repo:Q4_K_M" must arrive unencoded; anything else (space, ?, #, %) is encoded.
PATH_SAFE = "/:@!$&'()*+,;="


class CliError(Exception):
    """A failure reported as one line on stderr, exit status 1."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cortex", description="Gateway for a fleet of neurons.")
    _add_client_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, help="cortex.toml (default /etc/cortex/cortex.toml)")
    serve.add_argument("--listen", help="host:port (default 0.0.0.0:31313; local mode 127.0.0.1)")
    serve.add_argument("--log-level", default="INFO")
    _add_client_commands(sub)
    args = parser.parse_args(argv)
    if args.command == "serve":
        if _client_options_given(args):
            parser.error("--url, --key and --json belong to the client commands, not serve")
        return serve_command(args)
    if args.command == "top" and getattr(args, "json", False):
        parser.error("top is a live view: --json does not apply")
    url = getattr(args, "url", None) or os.environ.get("CORTEX_URL") or DEFAULT_URL
    if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
        parser.error(f"--url must look like http://host:port, not {_shown_url(url)!r}")
    key = getattr(args, "key", None) or os.environ.get("CORTEX_ADMIN_KEY") or None
    return client_command(args, url.rstrip("/"), key)


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS keeps an option given before the subcommand from being reset by the subparser's
    # default, so `cortex --json models` and `cortex models --json` both work.
    parser.add_argument(
        "--url", default=argparse.SUPPRESS, help=f"gateway URL (env CORTEX_URL; {DEFAULT_URL})"
    )
    parser.add_argument(
        "--key", default=argparse.SUPPRESS, help="admin key (env CORTEX_ADMIN_KEY; safer than argv)"
    )
    parser.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
    )


def _client_options_given(args: argparse.Namespace) -> bool:
    return any(hasattr(args, name) for name in ("url", "key", "json"))


def _add_client_commands(sub: Any) -> None:
    def add(name: str, help_text: str, aliases: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, aliases=list(aliases))
        _add_client_options(command)
        return command

    add("status", "fleet summary: nodes, GPUs, loads in progress, recent events")
    add("models", "models: where they are loaded, state, VRAM, idle time")
    for name, what in (
        ("load", "load a model where it fits best, or on --node"),
        ("unload", "unload a model from every node, or from --node"),
    ):
        command = add(name, what)
        command.add_argument("model", metavar="MODEL")
        command.add_argument("--node", help="a neuron's name, as in `cortex status`")
    pin = add("pin", "pin a model to nodes (saved to models.toml)")
    pin.add_argument("model", metavar="MODEL")
    pin.add_argument(
        "--node", action="append", help="a node to pin on (repeatable; default: where it is loaded)"
    )
    add("unpin", "remove a model's pins (saved to models.toml)").add_argument(
        "model", metavar="MODEL"
    )
    # drain/undrain: the first release's names, kept as synonyms.
    add(
        "cordon", "stop new loads on a node; its models move as they go idle", ("drain",)
    ).add_argument("node", metavar="NODE")
    add("uncordon", "let a cordoned node take loads again", ("undrain",)).add_argument(
        "node", metavar="NODE"
    )
    top = add("top", "live terminal view of the fleet")
    top.add_argument("--refresh", type=_positive_float, default=1.0, help="seconds (default 1)")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be greater than 0")
    return value


def serve_command(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per poll otherwise
    from cortex.config import DEFAULT_CONFIG_PATH, load_config

    path = args.config or (DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None)
    neuron = None
    try:
        if args.listen:
            parse_listen(args.listen)
        if path is not None:
            config = load_config(path)
            if args.listen:
                config = replace(config, listen=args.listen)
        else:
            from cortex.local import LocalNeuron, local_config

            print("cortex: no config found; local mode (one neuron on this host)", file=sys.stderr)
            neuron = LocalNeuron()
            neuron.wait_ready()
            config = local_config(neuron, args.listen or "127.0.0.1:31313")
    except (ConfigError, ValueError, RuntimeError, TimeoutError) as exc:
        print(f"cortex: {exc}", file=sys.stderr)
        if neuron is not None:
            neuron.stop()
        return 2
    from cortex.app import create_app
    from synapse.serving import serve

    app = create_app(config)
    host, port = parse_listen(config.listen)
    try:
        if neuron is None:
            print(f"cortex: serving on http://{host}:{port}", file=sys.stderr)
        else:
            ids = ", ".join(entry.id for entry in config.models) or "none"
            print(f"cortex: serving on http://{host}:{port}  models: {ids}", file=sys.stderr)
        serve(app, host, port)
    finally:
        if neuron is not None:
            neuron.stop()
    return 0


def client_command(args: argparse.Namespace, url: str, key: str | None) -> int:
    """Run one client command against the gateway at `url`; the exit status."""
    if args.command == "top":
        return top_command(url, key, args.refresh)
    try:
        with AdminClient(url, key) as client:
            return COMMANDS[args.command](client, args, getattr(args, "json", False))
    except CliError as exc:
        print(f"cortex: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def top_command(url: str, key: str | None, refresh_s: float) -> int:
    # Imported here so that the other commands never depend on the live view's module.
    try:
        from cortex.top.run import run_top
    except ModuleNotFoundError as exc:
        if exc.name not in ("cortex.top.run", "cortex.top"):
            raise
        print("cortex: top is not available in this build", file=sys.stderr)
        return 1
    return run_top(url, key, refresh_s)


class AdminClient:
    """The admin API of one gateway over httpx; every failure becomes a `CliError`."""

    def __init__(self, url: str, key: str | None) -> None:
        self.shown = _shown_url(url)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(base_url=url, headers=headers, follow_redirects=False)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self._http.close()

    def get(self, path: str) -> Any:
        return self._request("GET", path, None, QUERY_TIMEOUT_S)

    def post(self, path: str, body: dict[str, Any], timeout_s: float = QUERY_TIMEOUT_S) -> Any:
        return self._request("POST", path, body, timeout_s)

    def _request(self, method: str, path: str, body: Any, timeout_s: float) -> Any:
        timeout = httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S)
        try:
            response = self._http.request(method, path, json=body, timeout=timeout)
        except httpx.ConnectTimeout:
            raise CliError(f"cannot reach the gateway at {self.shown} (timed out)") from None
        except httpx.TimeoutException:
            raise CliError(
                f"the gateway at {self.shown} did not answer in {timeout_s:g}s"
            ) from None
        except httpx.ConnectError as exc:
            raise CliError(f"cannot reach the gateway at {self.shown} ({_reason(exc)})") from None
        except httpx.TransportError as exc:
            raise CliError(f"the gateway at {self.shown} broke off ({_reason(exc)})") from None
        if response.status_code >= 400:
            raise CliError(_http_error(response))
        try:
            return response.json()
        except ValueError:
            raise CliError(
                f"{self.shown} answered {method} {path} without JSON: is it a cortex gateway?"
            ) from None


def _shown_url(url: str) -> str:
    """The URL without any user:password part, so that no credential reaches the terminal."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def _reason(exc: BaseException) -> str:
    """The OS's words for a transport failure ("connection refused"), else the exception's."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror[:1].lower() + seen.strerror[1:]
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


def _http_error(response: httpx.Response) -> str:
    """One line from an error response: the envelope's message, the status and a hint."""
    message = None
    try:
        error = response.json().get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        pass
    if not isinstance(message, str) or not message:
        message = response.text.strip().splitlines()[0][:200] if response.text.strip() else ""
    message = " ".join(message.split())  # one line on stderr, whatever the server sent
    status = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    line = f"{message} ({status})" if message else status
    if response.status_code == 401:
        line += "; pass --key or set CORTEX_ADMIN_KEY"
    return line


def _path(value: str) -> str:
    return quote(value, safe=PATH_SAFE)


def _emit(as_json: bool, document: Any, line: str) -> int:
    print(json.dumps(document, indent=2) if as_json else line)
    return 0


# -- commands ------------------------------------------------------------------------------------


def cmd_status(client: AdminClient, args: argparse.Namespace, as_json: bool) -> int:
    document = client.get("/admin/fleet")
    if as_json:
        return _emit(True, document, "")
    Console().print(status_view(document, client.shown))
    return 0


def cmd_models(client: AdminClient, args: argparse.Namespace, as_json: bool) -> int:
    rows = model_rows(client.get("/admin/fleet"))
    if as_json:
        return _emit(True, rows, "")
    Console().print(models_table(rows))
    return 0


def cmd_load(client: AdminClient, args: argparse.Namespace, as_json: bool) -> int:
    body = {"node": args.node} if args.node else {}
    result = client.post(f"/admin/models/{_path(args.model)}/load", body, ACTION_TIMEOUT_S)
    return _emit(as_json, result, f"loaded {result.get('model')} on {result.get('node')}")


def cmd_unload(client: AdminClient, args: argparse.Namespace, as_json: bool) -> int:
    body = {"node": args.node} if args.node else {}
    result = client.post(f"/admin/models/{_path(args.model)}/unload", body, ACTION_TIMEOUT_S)
    nodes = ", ".join(result.get("unloaded_from") or []) or NONE
    return _emit(as_json, result, f"unloaded {result.get('model')} from {nodes}")


def cmd_pin(client: AdminClient, args: argparse.Namespace, as_json: bool) -> int:
    body = {"nodes": args.node} if args.node else {}
    result = client.post(f"/admin/models/{_path(args.model)}/pin", body)
    line = f"pinned {result.get('model')} on {', '.join(result.get('pinned_on') or [])}"
    return _emit(as_json, result, line + _persisted(result))


def cmd_unpin(client: AdminClient, args: argparse.Namespace, as_json: bool) -> int:
    result = client.post(f"/admin/models/{_path(args.model)}/unpin", {})
    return _emit(as_json, result, f"unpinned {result.get('model')}" + _persisted(result))


def _persisted(result: dict[str, Any]) -> str:
    if result.get("persisted"):
        return " (saved to models.toml)"
    return " (not saved: the gateway has no models.toml; it lasts until a restart)"


def cmd_cordon(client: AdminClient, args: argparse.Namespace, as_json: bool) -> int:
    result = client.post(f"/admin/nodes/{_path(args.node)}/cordon", {})
    line = f"cordoned {result.get('node')}: no new loads; its models move as they go idle"
    return _emit(as_json, result, line)


def cmd_uncordon(client: AdminClient, args: argparse.Namespace, as_json: bool) -> int:
    result = client.post(f"/admin/nodes/{_path(args.node)}/uncordon", {})
    return _emit(as_json, result, f"uncordoned {result.get('node')}: it takes loads again")


COMMANDS: dict[str, Callable[[AdminClient, argparse.Namespace, bool], int]] = {
    "status": cmd_status,
    "models": cmd_models,
    "load": cmd_load,
    "unload": cmd_unload,
    "pin": cmd_pin,
    "unpin": cmd_unpin,
    "cordon": cmd_cordon,
    "drain": cmd_cordon,
    "uncordon": cmd_uncordon,
    "undrain": cmd_uncordon,
}


if __name__ == "__main__":
    sys.exit(main())
