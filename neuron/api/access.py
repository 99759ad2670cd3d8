"""The neuron's access log: one line per request on the `neuron.access` logger.

Fields: method, route pattern, model id (resident ids only: ids are validated printable text),
status, duration, prompt / cached / completion tokens, and whether the client went away before
the answer was complete. Never prompts, tokens or keys. Streams are logged when their last
chunk is sent (the response hook runs when their headers go out, before anything is known);
everything else from the app's response hook.
"""

from __future__ import annotations

import logging
import time

from sanic import Request

from neuron.engine import Usage
from synapse.access import access_line

access_log = logging.getLogger("neuron.access")


def started(request: Request) -> None:
    request.ctx.started_at = time.monotonic()


def log_request(
    request: Request, status: int, *, usage: Usage | None = None, client_gone: bool = False
) -> None:
    """Write the request's line, once."""
    if getattr(request.ctx, "access_logged", False):
        return
    request.ctx.access_logged = True
    began = getattr(request.ctx, "started_at", None)
    duration_ms = round((time.monotonic() - began) * 1000) if began is not None else -1
    route = request.route.path if request.route is not None else "-"
    model = getattr(request.ctx, "model", None)
    resident = model if model in request.app.ctx.manager.models else "-"
    access_log.info(
        "%s",
        access_line(
            request.method,
            "/" + route.lstrip("/"),
            model=resident,
            status=status,
            duration_ms=duration_ms,
            tokens_in=usage.prompt_tokens if usage else 0,
            cached=usage.cached_tokens if usage else 0,
            tokens_out=usage.completion_tokens if usage else 0,
            client_gone=client_gone,
        ),
    )
