"""``python -m webservice`` (or ``socketio-webservice``): run the push service."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from loguru import logger

from . import backup, import_original
from .config import Config, ConfigError, add_file_options, describe, load_config
from .demo import add_demo_site, install_demo_routes
from .gc_policy import collect_after_churn, tune_gc
from .log_setup import setup_logging
from .service import Service, StartupError
from .version import version

DESCRIPTION = "Run the socketio-webservice push service."
ENVIRONMENT = """\
environment variables (they override config.yml; see docs/configuration.md):
  NODE_ENV / APP_ENV       section of config.yml to read (default: production)
  CONFIG_FILE, SITES_FILE  config.yml and sites.yml paths
  SITE_NAME, AUTH_URL, API_KEY, AUTH_SCHEME, USER_ROOM_PREFIX, UPDATE_USER_URL,
  PUBLIC_CHANNEL           one site, without a sites.yml
  PORT, HOST               where to listen (default 0.0.0.0:1337)
  INTERNAL_PORT            /metrics, /status*, /openapi.json on this port instead (default off)
  NODE_NAME                the metrics' node label (default: the host name)
  REDIS_URL                use Redis (several nodes) instead of SQLite
  SQLITE_PATH, SQLITE_SYNCHRONOUS
  DEVICE_TTL, MAX_QUEUE, AUTH_TIMEOUT, NODE_TIMEOUT, REDIS_TIMEOUT
  DRAIN_GRACE, DRAIN_SPREAD  SIGTERM: seconds still serving (default 5), then seconds over
                           which the sockets are closed (default 10)
  ADMIN_KEY                key of the /status page (no key: no page)
  LOG_FORMAT               text (default) or json: one JSON object per line
  MAX_SEND_BODY, ...       every limit, by its name in upper case (docs/limits.md)

signals: SIGTERM/SIGINT drain and stop (a second one: at once); SIGHUP reloads the sites
and reopens the log file.

import-original --from <Redis URL of the Node original> [--site S] [--dry-run]
  carries over what the original had queued for offline devices (docs/switching.md)
backup FILE
  writes a consistent copy of the SQLite store to FILE while the service runs
"""


MAX_ERROR_LINE = 500  # characters of a configuration error shown


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="socketio-webservice",
        description=DESCRIPTION,
        epilog=ENVIRONMENT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_file_options(parser)
    parser.add_argument(
        "--demo",
        action="store_true",
        help="add the demo site, with its own auth endpoint and a page at /demo",
    )
    parser.add_argument(
        "--check-config",
        action="store_true",
        help="check the configuration, print it as it would run (secrets masked), and exit",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    return parser.parse_args(argv)


def read_config(args: argparse.Namespace) -> Config:
    """The configuration the arguments and environment describe; raises ConfigError."""
    config = load_config(config_file=args.config, sites_file=args.sites)
    if args.demo:
        config = add_demo_site(config)
    if not config.sites:
        raise ConfigError("no site configured: give SITE_NAME and AUTH_URL, a sites.yml, or --demo")
    return config


RELOAD_TIMEOUT = 30.0  # seconds a SIGHUP may spend reading the configuration


async def serve(service: Service, reload: Callable[[], Config | None]) -> int:
    """Run until SIGTERM or SIGINT; the exit status: 1 if the service could not start, or if
    it failed while running (never a process left alive that no longer serves).

    SIGHUP (logrotate, or a new sites.yml): ``reload`` reads the configuration again, in a
    thread (the event loop keeps serving) and within ``RELOAD_TIMEOUT``; its sites replace
    the running ones (see ``Service.reload_sites``) and the log file is reopened. A
    configuration with a mistake is refused with one line, and nothing changes.
    """
    stop = asyncio.Event()
    hangups: asyncio.Queue[None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    hurry = asyncio.Event()  # a second SIGTERM/SIGINT: drain without waiting

    def on_stop_signal() -> None:
        if stop.is_set():
            hurry.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop_signal)
    loop.add_signal_handler(signal.SIGHUP, hangups.put_nowait, None)
    try:
        await service.start()
    except StartupError as exc:
        logger.error("cannot start: {}", exc)
        await service.stop()
        return 1
    tune_gc()
    collector = asyncio.create_task(
        collect_after_churn(service.sio.closed_session_count, service.sio.session_count)
    )
    status = 0
    stopping = asyncio.create_task(stop.wait())
    try:
        while not stop.is_set():
            hangup = asyncio.create_task(hangups.get())
            await asyncio.wait({stopping, hangup}, return_when=asyncio.FIRST_COMPLETED)
            if hangup.done():
                await _reload(service, reload)
            else:
                hangup.cancel()
    except Exception:
        logger.exception("the service failed; stopping")
        status = 1
    collector.cancel()
    logger.info("stopping: draining sends and closing sockets")
    config = service.config
    await service.stop(config.drain_grace, config.drain_spread, hurry)
    logger.info("stopped")
    return status


async def _reload(service: Service, reload: Callable[[], Config | None]) -> None:
    try:
        config = await asyncio.wait_for(asyncio.to_thread(reload), RELOAD_TIMEOUT)
    except TimeoutError:
        logger.error(
            "SIGHUP: the configuration was not read within {}s; the running one stays",
            RELOAD_TIMEOUT,
        )
        return
    except (MemoryError, RecursionError) as exc:
        logger.error("SIGHUP: configuration not reloaded ({}); the running one stays", exc)
        return
    if config is not None:
        await service.reload_sites(config.sites)
        logger.info("reloaded: {} sites", len(config.sites))


def main(argv: list[str] | None = None) -> None:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["import-original"]:
        sys.exit(import_original.main(arguments[1:]))
    if arguments[:1] == ["backup"]:
        sys.exit(backup.main(arguments[1:]))
    args = parse_args(arguments)
    try:
        config = read_config(args)
    except ConfigError as exc:
        print(f"config error: {str(exc)[:MAX_ERROR_LINE]}", file=sys.stderr)
        sys.exit(2)
    if args.check_config:
        for warning in config.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(describe(config))
        sys.exit(0)
    secrets = {site.api_key for site in config.sites.values()} | {config.admin_key}
    try:
        setup_logging(config.logging, secrets)
    except OSError as exc:
        print(f"cannot start: log file {config.logging.file_path}: {exc.strerror}", file=sys.stderr)
        sys.exit(1)
    for warning in config.warnings:
        logger.warning(warning)
    service = Service(config)
    if args.demo:
        install_demo_routes(service.app)

    def reload() -> Config | None:
        try:
            new = read_config(args)
        except ConfigError as exc:
            logger.error(
                "SIGHUP: configuration not reloaded, the running one stays: {}",
                str(exc)[:MAX_ERROR_LINE],
            )
            return None
        secrets.update(site.api_key for site in new.sites.values())
        setup_logging(config.logging, secrets)  # reopens the log file logrotate moved
        return new

    sys.exit(run(serve(service, reload)))


def run(main: Coroutine[Any, Any, int]) -> int:
    """On uvloop where it is installed (Linux and macOS): its event loop, written on libuv,
    takes a fifth off the CPU of every delivery (bench: 0.083 s -> 0.065 s per 1000)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


if __name__ == "__main__":
    main()
