"""The gateway's HTTP routes (OpenAI, Anthropic, Responses, admin) and what they share: body
validation, the dispatcher that gets a request onto a neuron (`proxy`), and SSE encoding and
relay. Translation lives in `cortex.dialects`, routing and placement in `cortex.fleet`.
"""
