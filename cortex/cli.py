"""`cortex` command line: `serve` runs the gateway (local mode when no config exists)."""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from cortex.tomlconf import ConfigError, parse_listen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cortex", description="Gateway for a fleet of neurons.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, help="cortex.toml (default /etc/cortex/cortex.toml)")
    serve.add_argument("--listen", help="host:port (default 0.0.0.0:31313; local mode 127.0.0.1)")
    serve.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_command(args)
    return 2


def serve_command(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from cortex.config import DEFAULT_CONFIG_PATH, load_config

    path = args.config or (DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None)
    neuron = None
    try:
        if args.listen:
            parse_listen(args.listen)
        if path is not None:
            config = load_config(path)
            if args.listen:
                config = replace(config, listen=args.listen)
        else:
            from cortex.local import LocalNeuron, local_config

            print("cortex: no config found; local mode (one neuron on this host)", file=sys.stderr)
            neuron = LocalNeuron()
            neuron.wait_ready()
            config = local_config(neuron, args.listen or "127.0.0.1:31313")
    except (ConfigError, ValueError, RuntimeError, TimeoutError) as exc:
        print(f"cortex: {exc}", file=sys.stderr)
        if neuron is not None:
            neuron.stop()
        return 2
    from cortex.app import create_app

    app = create_app(config)
    host, port = parse_listen(config.listen)
    try:
        if neuron is None:
            print(f"cortex: serving on http://{host}:{port}", file=sys.stderr)
        else:
            ids = ", ".join(entry.id for entry in config.models) or "none"
            print(f"cortex: serving on http://{host}:{port}  models: {ids}", file=sys.stderr)
        app.run(host=host, port=port, single_process=True, motd=False, access_log=False)
    finally:
        if neuron is not None:
            neuron.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
