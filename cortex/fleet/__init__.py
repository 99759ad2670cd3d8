"""The fleet and its decisions: frozen state (`state`); pure decision modules with no I/O,
logging or clock (`routing`, `eviction`, `catalogue`); the mutable `registry` holding the live
state; and the `scheduler`, which alone carries decisions out against the neurons.
"""
