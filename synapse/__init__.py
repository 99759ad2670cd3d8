"""What the two programs share: the strict TOML loader and how a Sanic app is run.

cortex (the gateway) and neuron (the host daemon) never import each other; anything both need
lives here, and this package imports neither of them.
"""
