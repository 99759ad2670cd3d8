"""The fleet's pure core: frozen state (`state`) and the decisions made on it (`routing`,
`affinity`, `eviction`, `catalogue`). Nothing here does I/O, logs or reads a clock; the
effects that carry these decisions out live in `cortex.control` and `cortex.nodes`.
"""
