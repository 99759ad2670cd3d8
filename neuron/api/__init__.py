"""The neuron's HTTP routes: lifecycle (`/discovery`, `/health`, `/models…`) and OpenAI-compatible
inference, with pure request parsing (`schema`) and response rendering (`render`), bearer-token
auth, the access log and the SSE encoder.
"""
