"""The gateway's effects: what carries the fleet's pure decisions out. `registry` holds the live
fleet state (written on the event loop only; everyone else reads its frozen snapshots),
`scheduler` executes placements (single-flight cold loads, evictions, idle unloads) and
`dispatcher` gets one request onto a neuron, routing again when the fleet moved under it.
Talking to a neuron is `cortex.nodes`'s job; the HTTP routes that call in here are in
`cortex.api`.
"""
