"""The gateway's HTTP edge (OpenAI, Anthropic, Responses, admin): parse and validate a body,
hand it to `cortex.control`'s dispatcher, relay the answer (`sse`). Translation lives in
`cortex.dialects`, routing and placement in `cortex.fleet`.
"""
