"""The API dialects cortex speaks, as pure code: OpenAI body checks (`openai`), JSON Schema
checks (`schema`), and Anthropic Messages and OpenAI Responses translated to and from Chat
Completions (`anthropic`, `responses`). No I/O and no logging; the routes are `cortex.api`.
"""
