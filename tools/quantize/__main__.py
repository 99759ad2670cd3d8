"""``python -m cortex_quantize`` — same as the ``cortex-quantize`` console script."""

from __future__ import annotations

from .cli import main

raise SystemExit(main())
