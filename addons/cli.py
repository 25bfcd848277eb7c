"""The `llmitm` command: shorthands over the mitmdump line the README documents.

    llmitm run [CONFIG] [--listen 127.0.0.1:8000] [--web] [-- MITMPROXY ARGS...]
    llmitm check CONFIG
    llmitm schema
    llmitm traces [totals | show ID] [...]   (see addons/traces_cli.py)

`run` executes exactly `mitmdump -s addons/gateway.py --mode reverse:... --set
connection_strategy=lazy --set llmitm_config=CONFIG` (or mitmweb with `--web`), so
anything mitmproxy accepts can follow `--`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

GATEWAY = Path(__file__).resolve().parent / "gateway.py"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


def run_command(config: str, listen: str, web: bool, extra: list[str]) -> list[str]:
    """The mitmproxy command line `llmitm run` executes."""
    tool = "mitmweb" if web else "mitmdump"
    return [
        tool,
        "-s",
        str(GATEWAY),
        "--mode",
        f"reverse:http://127.0.0.1:9@{listen}",
        "--set",
        "connection_strategy=lazy",
        "--set",
        f"llmitm_config={config}",
        *extra,
    ]


def _run(args: argparse.Namespace) -> int:
    argv = run_command(args.config, args.listen, args.web, args.mitmproxy_args)
    exe = shutil.which(argv[0], path=str(Path(sys.executable).parent)) or shutil.which(argv[0])
    if exe is None:
        print(f"llmitm: {argv[0]} not found (is mitmproxy installed?)", file=sys.stderr)
        return 127
    os.execv(exe, [argv[0], *argv[1:]])
    return 0  # not reached


def _check(args: argparse.Namespace) -> int:
    from addons.config import ConfigError, load_file

    try:
        config = load_file(args.config)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"{args.config}: OK, {len(config.routes)} route(s)")
    for route in config.routes:
        plugins = ", ".join(route.plugins) or "no plugins"
        where = " ".join(route.paths or route.hosts or route.methods) or "(headers)"
        print(f"  {route.name}: {where} [{plugins}]")
    for consumer in config.consumers:
        keys = sum(1 for c in config.credentials.values() if c.consumer is consumer)
        own = {
            *consumer.plugins,
            *(n for group in consumer.service_plugins.values() for n in group),
            *(n for group in consumer.route_plugins.values() for n in group),
        }
        plugins = f" [{', '.join(sorted(own))}]" if own else ""
        print(f"  consumer {consumer.name}: {keys} key(s){plugins}")
    return 0


def _schema(args: argparse.Namespace) -> int:
    from addons.config.schema import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(
        prog="llmitm", description="llmitm, an LLM gateway on mitmproxy"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the gateway in reverse-proxy mode")
    run.add_argument(
        "config",
        nargs="?",
        default=str(DEFAULT_CONFIG),
        help="config file (default: the quickstart)",
    )
    run.add_argument(
        "--listen", default="127.0.0.1:8000", help="HOST:PORT to listen on (default 127.0.0.1:8000)"
    )
    run.add_argument("--web", action="store_true", help="run under mitmweb instead of mitmdump")
    run.set_defaults(func=_run)

    check = sub.add_parser("check", help="validate a config file")
    check.add_argument("config")
    check.set_defaults(func=_check)

    schema = sub.add_parser("schema", help="print the JSON Schema of the config format")
    schema.set_defaults(func=_schema)

    from addons import traces_cli

    traces_cli.add_parser(sub)

    args = parser.parse_args(argv)
    args.mitmproxy_args = extra
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
