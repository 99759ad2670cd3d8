"""The neuron's bearer token: who may load, unload and plan, and (by default) run inference.

With `[auth] token` (or `NEURON_TOKEN`) set, lifecycle routes that change or probe the host
(`/models/load`, `/models/unload`, `/models/plan`, which resolves any source, hub repos
included) require `Authorization: Bearer <token>`, and so do the inference routes (`/v1/*`,
`/tokenize`) unless `[auth] inference = false`. Read-only status routes (`/health`,
`/discovery`, `/models`, `/metrics`) stay open for monitoring. Comparison is constant-time.
"""

from __future__ import annotations

import hmac

from sanic import Request

from neuron.errors import Unauthorized

_INFERENCE_PREFIXES = ("/v1/", "/tokenize")


def require_token(request: Request) -> None:
    """Raise `Unauthorized` unless the request carries this neuron's token (when it has one)."""
    token = request.app.ctx.config.auth_token
    if not token:
        return
    header = request.headers.get("authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip(), token):
        raise Unauthorized("a valid bearer token is required for this route")


async def inference_auth(request: Request) -> None:
    """Request middleware: the token on inference routes, when configured to require it."""
    config = request.app.ctx.config
    if config.auth_token and config.auth_inference and request.path.startswith(_INFERENCE_PREFIXES):
        require_token(request)
