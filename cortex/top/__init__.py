"""`cortex top`: a full-screen live view of the fleet, polled from ``GET /admin/fleet``.

`view`, `panels` and `common` are pure (no I/O, no clock: ages come from the `now` given);
`run` holds the loop, the polling and the terminal.
"""
