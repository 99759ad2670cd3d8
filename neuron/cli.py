"""`neuron` command line: run the daemon."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from synapse.tomlconf import ConfigError, parse_listen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="neuron", description="Serve GGUF models on this host.")
    parser.add_argument("--config", type=Path, help="neuron.toml (default /etc/neuron/neuron.toml)")
    parser.add_argument("--listen", help="host:port, overrides the config (default 0.0.0.0:13131)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from dataclasses import replace

    from neuron.config import load_config

    try:
        config = load_config(args.config)
        if args.listen:
            parse_listen(args.listen)
            config = replace(config, listen=args.listen)
    except (ConfigError, ValueError) as exc:
        print(f"neuron: {exc}", file=sys.stderr)
        return 2
    from neuron.app import create_app
    from neuron.engine import tune_malloc
    from synapse.serving import serve

    tune_malloc()
    app = create_app(config)
    serve(app, config.host, config.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
