"""The CLI's pure parts: the views of an `/admin/fleet` document, URL and error handling, parsing.

Documents are written here in the shape `cortex/api/admin.py` produces; rendering goes through a
real rich Console into a string.
"""

from __future__ import annotations

import httpx
import pytest
from rich.console import Console

from cortex import cli, cli_views
from tests.conftest import free_port

NOW = 1_000_000.0


def slot(model_id: str, node: str, state: str = "ready", **extra) -> dict:
    return {"model_id": model_id, "node": node, "state": state, "vram_used_mb": 213.0, **extra}


def document() -> dict:
    gpu = {"index": 0, "name": "RTX 4090", "vram_total_mb": 24564, "vram_free_mb": 20000}
    return {
        "now": NOW,
        "nodes": [
            {
                "name": "alpha",
                "up": True,
                "cordoned": True,
                "draining": False,
                "backend": "cuda",
                "gpus": [gpu],
                "models": [
                    slot("smol-a", "alpha", last_used_at=NOW - 125, loaded_at=NOW - 900),
                    slot("adhoc", "alpha", loaded_at=NOW - 30),
                ],
            },
            {
                "name": "beta",
                "up": False,
                "backend": None,
                "gpus": [],
                "models": [slot("smol-a", "beta", "loading")],
            },
        ],
        "catalogue": [
            {"id": "smol-a", "pinned_on": ["alpha"]},
            {"id": "[bold]gemma[/bold]", "pinned_on": []},
        ],
        "aliases": {},
        "loading": ["smol-a"],
        "events": [{"seq": 1, "at": NOW - 5, "kind": "load", "message": "loaded smol-a on alpha"}],
    }


def render(renderable) -> str:
    console = Console(width=160, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(None, "–"), (-3, "0s"), (59.9, "59s"), (125, "2m05s"), (7260, "2h01m"), (90000, "1d01h")],
)
def test_format_age(seconds: float | None, shown: str) -> None:
    assert cli_views.format_age(seconds) == shown


def test_model_rows_catalogue_first_then_resident_extras() -> None:
    rows = {row["id"]: row for row in cli_views.model_rows(document())}
    assert list(rows) == ["smol-a", "[bold]gemma[/bold]", "adhoc"]
    smol = rows["smol-a"]
    assert smol["state"] == "ready, loading"
    assert [(w["node"], w["node_up"]) for w in smol["where"]] == [("alpha", True), ("beta", False)]
    assert smol["idle_s"] == 125  # last use, against the document's clock; loading is not idle
    assert smol["vram_used_mb"] == 426 and smol["pinned_on"] == ["alpha"]
    assert rows["adhoc"]["idle_s"] == 30  # never used: idle since it was loaded
    assert rows["adhoc"]["in_catalogue"] is False
    gemma = rows["[bold]gemma[/bold]"]
    assert gemma["state"] == "not loaded" and gemma["where"] == []
    assert gemma["vram_used_mb"] is None and gemma["idle_s"] is None


def test_models_table_shows_ids_literally() -> None:
    text = render(cli_views.models_table(cli_views.model_rows(document())))
    assert "[bold]gemma[/bold]" in text  # an id is data, never rich markup
    assert "alpha ready, beta loading (node down)" in text
    assert "adhoc (not in catalogue)" in text
    assert "2m05s" in text and "426" in text


def test_status_view() -> None:
    text = render(cli_views.status_view(document(), "http://gw:31313"))
    assert "http://gw:31313: 1/2 nodes up, 3 models resident, 2 catalogued" in text
    alpha = next(line for line in text.splitlines() if "alpha" in line and "RTX" in line)
    assert "yes" in alpha and "cuda" in alpha and "4,564 / 24,564" in alpha
    beta = next(line for line in text.splitlines() if line.strip("│ ").startswith("beta"))
    assert "down" in beta and "none" in beta
    assert "Loading: smol-a" in text
    assert "5s ago" in text and "loaded smol-a on alpha" in text


def test_shown_url_drops_credentials() -> None:
    assert cli._shown_url("https://admin:pw@gw.example:31313/") == "https://gw.example:31313/"
    assert cli._shown_url("http://127.0.0.1:31313") == "http://127.0.0.1:31313"


def test_path_keeps_hub_ids_and_encodes_the_rest() -> None:
    assert cli._path("org/repo:Q4_K_M") == "org/repo:Q4_K_M"
    assert cli._path("a b?c#d%") == "a%20b%3Fc%23d%25"


def test_http_error_takes_the_envelopes_message() -> None:
    openai_shape = httpx.Response(404, json={"error": {"message": "no neuron named 'x'"}})
    assert cli._http_error(openai_shape) == "no neuron named 'x' (HTTP 404 Not Found)"
    unauthorized = httpx.Response(401, json={"error": {"message": "a valid admin key is required"}})
    assert cli._http_error(unauthorized) == (
        "a valid admin key is required (HTTP 401 Unauthorized); pass --key or set CORTEX_ADMIN_KEY"
    )
    assert cli._http_error(httpx.Response(502, text="bad gateway\nmore")) == (
        "bad gateway (HTTP 502 Bad Gateway)"
    )
    assert cli._http_error(httpx.Response(500)) == "HTTP 500 Internal Server Error"
    multiline = httpx.Response(409, json={"error": {"message": "busy:\n  2 in flight"}})
    assert cli._http_error(multiline) == "busy: 2 in flight (HTTP 409 Conflict)"


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "--url", "{url}", "models"],
        ["models", "--json", "--url", "{url}"],
        ["--url", "http://elsewhere:1", "models", "--url", "{url}"],  # the later one wins
    ],
)
def test_client_options_before_or_after_the_command(argv: list[str], capsys) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main([arg.format(url=url) for arg in argv]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"cortex: cannot reach the gateway at {url} (connection refused)\n"


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "serve"],
        ["--url", "ftp://gw", "status"],
        ["top", "--json"],
        ["top", "--refresh", "0"],
        ["pin"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "usage: cortex" in capsys.readouterr().err
