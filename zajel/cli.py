"""``zajel``: the command line (``zajel serve``)."""

from __future__ import annotations

import argparse
import os
import sys

import trio

from zajel import logs
from zajel.config import ENVIRONMENTS, Config, ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zajel", description="Zajel coordination server")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server (one process per node)")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port; 0 picks a free one (default 8080)")
    serve.add_argument("--env", choices=ENVIRONMENTS, help="environment (default development)")
    serve.add_argument("--data-dir", help="where the embedded store lives (default ./data)")
    serve.add_argument("--log-format", choices=("text", "json"), help="log line format")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return 2  # pragma: no cover - argparse requires a command


def _serve(args: argparse.Namespace) -> int:

    try:
        config = Config.from_env(
            os.environ,
            host=args.host,
            port=args.port,
            env=args.env,
            data_dir=args.data_dir,
            log_format=args.log_format,
        )
    except ConfigError as exc:
        print(f"zajel: configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(
            f"zajel: configuration error: ZAJEL_DATA_DIR: cannot create {config.data_dir}: "
            f"{exc.strerror}",
            file=sys.stderr,
        )
        return 2
    logs.configure(config.log_level, config.log_format)

    async def run() -> None:
        async with trio.open_nursery() as nursery:
            url = await nursery.start(_serve_and_report, config)
            print(f"zajel listening on {url}", flush=True)

    try:
        trio.run(run)
    except (OSError, BaseExceptionGroup) as exc:
        failure = _os_error(exc)
        if failure is None:
            raise
        # Binding is the one start-up step that fails on the machine, not in the settings.
        print(
            f"zajel: cannot listen on {config.host}:{config.port} (ZAJEL_HOST/ZAJEL_PORT): "
            f"{failure.strerror or failure}",
            file=sys.stderr,
        )
        return 2
    return 0


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` when that is all it holds (trio wraps errors in groups)."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        errors = [_os_error(inner) for inner in exc.exceptions]
        if errors and all(error is not None for error in errors):
            return errors[0]
    return None


async def _serve_and_report(config: Config, *, task_status: trio.TaskStatus[str]) -> None:
    from zajel.server import serve

    await serve(config, task_status=task_status)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
