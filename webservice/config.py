"""Configuration, read the way the Node original reads it.

``config.yml`` holds one section per environment (``NODE_ENV``, else ``APP_ENV``, else
``production``); ``sites.yml`` maps each site name to its settings. Environment variables
describe a single site and override the files. Any mistake stops start-up with one line that
names the key (:class:`ConfigError`).
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..sites import SiteConfig
from ..storage.redis_store import DEFAULT_NODE_DEAD_AFTER, DEFAULT_TIMEOUT
from ..storage.store import DEFAULT_IDEMPOTENCY_TTL, DEFAULT_MAX_QUEUE
from ..transport.limits import LIMIT_NAMES, Limits
from .redis_settings import (
    DEFAULT_KEY_PREFIX,
    RedisSettingError,
    check_key_prefix,
    check_url,
    mask,
    url_from_block,
)
from .yaml_file import YamlRefused, cut, load_yaml, shown

DEFAULT_PORT = 1337
DEFAULT_DEVICE_TTL = 3600
DEFAULT_SQLITE_PATH = "data/webservice.sqlite3"
DEFAULT_AUTH_TIMEOUT = 10.0
DEFAULT_NODE_TIMEOUT = DEFAULT_NODE_DEAD_AFTER  # Redis: a node silent this long is dead
DEFAULT_REDIS_TIMEOUT = DEFAULT_TIMEOUT  # Redis: commands this long without a reply: down
DEFAULT_DRAIN_GRACE = 5.0  # SIGTERM: seconds still serving, not ready, before the listener closes
DEFAULT_DRAIN_SPREAD = 10.0  # then the seconds over which the open sockets are closed
MAX_DRAIN_SECONDS = 3600
MAX_KEY_FILE = 4096  # characters read from an apiKeyFile
SITE_NAME = re.compile(r"^[A-Za-z0-9_.~-]+$")

# Socket.IO server options of the original (``io:``) and how python-socketio names them.
# Times are milliseconds there, seconds here.
IO_OPTIONS: dict[str, tuple[str, float | None]] = {
    "pingTimeout": ("ping_timeout", 1000),
    "pingInterval": ("ping_interval", 1000),
    "upgradeTimeout": ("upgrade_timeout", 1000),
    "maxHttpBufferSize": ("max_http_buffer_size", None),
    "transports": ("transports", None),
    "cookie": ("cookie", None),
    "allowUpgrades": ("allow_upgrades", None),
    "perMessageDeflate": ("websocket_compression", None),  # off unless set: see transport
    "httpCompression": ("http_compression", None),
    "cors": ("cors_allowed_origins", None),
    "origins": ("cors_allowed_origins", None),
}
IGNORED_IO_OPTIONS = {"path", "adapter", "parser", "connectTimeout", "wsEngine"}


class ConfigError(Exception):
    """A configuration mistake; its message names the key and is shown as-is."""


@dataclass(frozen=True, slots=True)
class LogConfig:
    console_level: str = "INFO"
    file_level: str = "INFO"
    file_path: str = ""
    format: str = "text"  # or "json": one JSON object per line (LOG_FORMAT)


@dataclass(frozen=True, slots=True)
class Config:
    sites: dict[str, SiteConfig]
    env: str = "production"
    port: int = DEFAULT_PORT
    internal_port: int = 0  # /metrics, /status*, /openapi.json here instead (0: off)
    node_name: str = ""  # the metrics' node label; default: the host name (a pod's name)
    host: str = "0.0.0.0"
    device_ttl: int = DEFAULT_DEVICE_TTL
    idempotency_ttl: int = DEFAULT_IDEMPOTENCY_TTL
    redis_url: str = ""
    redis_key_prefix: str = DEFAULT_KEY_PREFIX
    redis_min_replicas: int = 0
    sqlite_path: str = DEFAULT_SQLITE_PATH
    sqlite_synchronous: str = "NORMAL"
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT
    node_timeout: float = DEFAULT_NODE_TIMEOUT
    redis_timeout: float = DEFAULT_REDIS_TIMEOUT
    drain_grace: float = DEFAULT_DRAIN_GRACE
    drain_spread: float = DEFAULT_DRAIN_SPREAD
    max_queue: int = DEFAULT_MAX_QUEUE
    socketio_options: dict[str, Any] = field(default_factory=dict)
    logging: LogConfig = field(default_factory=LogConfig)
    limits: Limits = field(default_factory=Limits)
    serve_client: bool = True  # io.serveClient: GET /socket.io/socket.io.js
    admin_key: str = ""  # the /status page's key; no key, no page
    warnings: tuple[str, ...] = ()  # said once logging is set up (unknown keys)


def _read_yaml(path: Path, what: str) -> Any:
    try:
        return load_yaml(path)
    except YamlRefused as exc:
        raise ConfigError(f"{what} {path}: refused: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path}: not valid YAML: {exc}".splitlines()[0]) from exc
    except OSError as exc:
        raise ConfigError(f"{what} {path}: cannot be read: {exc.strerror}") from exc


def _int(value: Any, key: str, minimum: int = 0, maximum: int | None = None) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a whole number, not {shown(value)}")
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{key} must be a whole number, not {shown(value)}") from None
    if number < minimum:
        raise ConfigError(f"{key} must be at least {minimum}, not {number}")
    if maximum is not None and number > maximum:
        raise ConfigError(f"{key} must be at most {maximum}, not {number}")
    return number


def _seconds(value: Any, key: str) -> float:
    """A duration in seconds, fractions allowed, from 0 to ``MAX_DRAIN_SECONDS``."""
    if isinstance(value, bool):
        raise ConfigError(f"{key} must be a number of seconds, not {shown(value)}")
    try:
        number = float(str(value).strip())
    except ValueError:
        raise ConfigError(f"{key} must be a number of seconds, not {shown(value)}") from None
    if not 0 <= number <= MAX_DRAIN_SECONDS:  # also refuses nan
        raise ConfigError(f"{key} must be from 0 to {MAX_DRAIN_SECONDS} seconds, not {number}")
    return number


def _text(value: Any, key: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise ConfigError(f"{key} must be a string, not {type(value).__name__}")


def _mapping(value: Any, key: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping of keys to values")
    return value


def _key_from_file(path: str, key: str) -> str:
    """A key kept in a file (a mounted Kubernetes or Docker secret): its first line."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read(MAX_KEY_FILE)
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{key} {cut(path)}: cannot be read: {reason}") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise ConfigError(f"{key} {cut(path)}: the file is empty")
    return lines[0].strip()


def parse_site(name: str, raw: Any, where: str) -> SiteConfig:
    if not SITE_NAME.match(name):
        raise ConfigError(f"{where}{cut(name)}: a site name may hold only letters, digits and _.~-")
    values = _mapping(raw, f"{where}{name}")
    known = {
        "authUrl",
        "authScheme",
        "apiKey",
        "apiKeyFile",
        "userRoomPrefix",
        "updateUserUrl",
        "publicChannel",
    }
    for key in values:
        if key not in known:
            raise ConfigError(
                f"{where}{name}.{cut(str(key))}: unknown site key "
                f"(known: {', '.join(sorted(known))})"
            )
    auth_url = _text(values.get("authUrl"), f"{where}{name}.authUrl")
    api_key = _text(values.get("apiKey"), f"{where}{name}.apiKey")
    key_file = _text(values.get("apiKeyFile"), f"{where}{name}.apiKeyFile")
    if not auth_url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}{name}.authUrl: must be an http(s) URL, not {shown(auth_url)}")
    if api_key and key_file:
        raise ConfigError(f"{where}{name}: apiKey and apiKeyFile both set: keep one")
    if key_file:
        api_key = _key_from_file(key_file, f"{where}{name}.apiKeyFile")
    if not api_key:
        raise ConfigError(f"{where}{name}.apiKey: is required (or apiKeyFile)")
    update_url = _text(values.get("updateUserUrl"), f"{where}{name}.updateUserUrl")
    if update_url and not update_url.startswith(("http://", "https://")):
        raise ConfigError(
            f"{where}{name}.updateUserUrl: must be an http(s) URL, not {shown(update_url)}"
        )
    return SiteConfig(
        name=name,
        auth_url=auth_url,
        api_key=api_key,
        auth_scheme=_text(values.get("authScheme"), f"{where}{name}.authScheme") or "Bearer",
        user_room_prefix=_text(values.get("userRoomPrefix"), f"{where}{name}.userRoomPrefix"),
        update_user_url=update_url,
        public_channel=_text(values.get("publicChannel"), f"{where}{name}.publicChannel"),
    )


def _socketio_options(raw: Mapping[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for key, value in raw.items():
        if key in IGNORED_IO_OPTIONS or key == "serveClient":
            continue
        if key not in IO_OPTIONS:
            raise ConfigError(
                f"io.{key}: not a supported Socket.IO option "
                f"(supported: {', '.join(sorted(IO_OPTIONS))})"
            )
        name, scale = IO_OPTIONS[key]
        if key in ("cors", "origins"):
            origin = value.get("origin") if isinstance(value, Mapping) else value
            options[name] = origin if origin not in (None, True) else "*"
        elif scale is not None:
            options[name] = _int(value, f"io.{key}", minimum=1) / scale
        else:
            options[name] = value
    return options


def _logging(section: Mapping[str, Any], env: Mapping[str, str]) -> LogConfig:
    winston = _mapping(section.get("winston"), "winston")
    console = _mapping(winston.get("console"), "winston.console")
    file = _mapping(winston.get("file"), "winston.file")
    log = LogConfig(
        console_level=_text(console.get("level"), "winston.console.level").upper() or "INFO",
        file_level=_text(file.get("level"), "winston.file.level").upper() or "INFO",
        file_path=_text(file.get("filename"), "winston.file.filename"),
        format=(
            env.get("LOG_FORMAT") or _text(section.get("log_format"), "log_format") or "text"
        ).lower(),
    )
    if log.format not in ("text", "json"):
        raise ConfigError(f"log_format: must be text or json, not {shown(log.format)}")
    levels = {"TRACE", "DEBUG", "VERBOSE", "INFO", "WARN", "WARNING", "ERROR", "SILLY"}
    for key, level in (("console", log.console_level), ("file", log.file_level)):
        if level not in levels:
            raise ConfigError(f"winston.{key}.level: unknown level {shown(level)}")
    return log


TOP_LEVEL_KEYS = frozenset(
    {
        "port",
        "internal_port",
        "node_name",
        "host",
        "device_ttl",
        "idempotency_ttl",
        "redis",
        "sqlite",
        "io",
        "winston",
        "limits",
        "auth_timeout",
        "node_timeout",
        "redis_timeout",
        "drain_grace",
        "drain_spread",
        "max_queue",
        "admin_key",
        "log_format",
        # the original's, accepted and unused: its cluster list, its message-id generator
        "servers",
        "flakeid",
    }
)


def _unknown_keys(section: Mapping[str, Any], where: str) -> tuple[str, ...]:
    """A misspelt key would silently keep its default: say so (a warning, as the original
    ignored unknown keys and a config written for it must still start)."""
    return tuple(
        f"{where}.{cut(str(key))}: unknown key, ignored "
        f"(known: {', '.join(sorted(TOP_LEVEL_KEYS))})"
        for key in section
        if key not in TOP_LEVEL_KEYS
    )


ZERO_MEANS_OFF = {"auth_failure_cache", "max_connections"}


def _limits(section: Mapping[str, Any], env: Mapping[str, str]) -> Limits:
    raw = _mapping(section.get("limits"), "limits")
    for key in raw:
        if key not in LIMIT_NAMES:
            raise ConfigError(
                f"limits.{cut(str(key))}: unknown limit (known: {', '.join(LIMIT_NAMES)})"
            )
    values = {}
    for name in LIMIT_NAMES:
        value = env.get(name.upper()) or raw.get(name)
        if value is not None:
            values[name] = _int(value, f"limits.{name}", minimum=0 if name in ZERO_MEANS_OFF else 1)
    return Limits(**values)


def _redis(section: Mapping[str, Any], env: Mapping[str, str]) -> tuple[str, str, int]:
    """The Redis URL (REDIS_URL, or the ``redis:`` block), the key prefix and the replicas a
    send waits for, checked."""
    block = _mapping(section.get("redis"), "redis")
    url = env.get("REDIS_URL") or url_from_block(block)
    prefix = env.get("REDIS_KEY_PREFIX") or str(block.get("key_prefix", DEFAULT_KEY_PREFIX))
    where = "REDIS_URL" if env.get("REDIS_URL") else "redis"
    try:
        if url:
            check_url(url)
        check_key_prefix(prefix)
    except RedisSettingError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    replicas = _int(
        env.get("REDIS_MIN_REPLICAS") or block.get("min_replicas", 0), "redis.min_replicas"
    )
    return url, prefix, replicas


def load_config(
    environ: Mapping[str, str] | None = None,
    config_file: str | None = None,
    sites_file: str | None = None,
) -> Config:
    """Build the configuration from files and environment; docs/configuration.md has every key."""
    env = os.environ if environ is None else environ
    env_name = env.get("NODE_ENV") or env.get("APP_ENV") or "production"

    config_path = Path(config_file or env.get("CONFIG_FILE") or "config.yml")
    sites_path = Path(sites_file or env.get("SITES_FILE") or "sites.yml")
    explicit_config = bool(config_file or env.get("CONFIG_FILE"))
    explicit_sites = bool(sites_file or env.get("SITES_FILE"))

    section: Mapping[str, Any] = {}
    if config_path.exists() or explicit_config:
        document = _mapping(_read_yaml(config_path, "config file"), str(config_path))
        if env_name not in document and explicit_config:
            raise ConfigError(f"{config_path}: has no section for environment {shown(env_name)}")
        section = _mapping(document.get(env_name), f"{config_path}: {env_name}")

    sites: dict[str, SiteConfig] = {}
    if sites_path.exists() or explicit_sites:
        raw_sites = _mapping(_read_yaml(sites_path, "sites file"), str(sites_path))
        for name, raw in raw_sites.items():
            if str(name) in sites:
                raise ConfigError(f"{sites_path}: site {str(name)!r} is defined twice")
            sites[str(name)] = parse_site(str(name), raw, f"{sites_path}: ")

    if env.get("SITE_NAME"):
        name = env["SITE_NAME"]
        sites[name] = parse_site(
            name,
            {
                key: env[var]
                for key, var in (
                    ("authUrl", "AUTH_URL"),
                    ("authScheme", "AUTH_SCHEME"),
                    ("apiKey", "API_KEY"),
                    ("userRoomPrefix", "USER_ROOM_PREFIX"),
                    ("updateUserUrl", "UPDATE_USER_URL"),
                    ("publicChannel", "PUBLIC_CHANNEL"),
                )
                if env.get(var)
            },
            "SITE_NAME=",
        )

    sqlite = _mapping(section.get("sqlite"), "sqlite")
    synchronous = (
        env.get("SQLITE_SYNCHRONOUS")
        or _text(sqlite.get("synchronous"), "sqlite.synchronous")
        or "NORMAL"
    ).upper()
    if synchronous not in {"FULL", "NORMAL", "EXTRA"}:
        raise ConfigError(
            f"sqlite.synchronous: must be FULL, EXTRA or NORMAL, not {shown(synchronous)}"
        )
    _mapping(section.get("flakeid"), "flakeid")  # accepted for compatibility; seqs replace it
    io = _mapping(section.get("io"), "io")
    redis_url, redis_key_prefix, redis_min_replicas = _redis(section, env)

    config = Config(
        sites=sites,
        env=env_name,
        port=_int(
            env.get("PORT") or section.get("port", DEFAULT_PORT), "port", minimum=1, maximum=65535
        ),
        internal_port=_int(
            env.get("INTERNAL_PORT") or section.get("internal_port", 0),
            "internal_port",
            maximum=65535,
        ),
        host=env.get("HOST") or _text(section.get("host"), "host") or "0.0.0.0",
        node_name=env.get("NODE_NAME")
        or _text(section.get("node_name"), "node_name")
        or socket.gethostname(),
        idempotency_ttl=_int(
            env.get("IDEMPOTENCY_TTL") or section.get("idempotency_ttl", DEFAULT_IDEMPOTENCY_TTL),
            "idempotency_ttl",
            minimum=1,
        ),
        device_ttl=_int(
            env.get("DEVICE_TTL") or section.get("device_ttl", DEFAULT_DEVICE_TTL), "device_ttl"
        ),
        redis_url=redis_url,
        redis_key_prefix=redis_key_prefix,
        redis_min_replicas=redis_min_replicas,
        sqlite_path=env.get("SQLITE_PATH")
        or _text(sqlite.get("path"), "sqlite.path")
        or DEFAULT_SQLITE_PATH,
        sqlite_synchronous=synchronous,
        auth_timeout=float(
            _int(
                env.get("AUTH_TIMEOUT") or section.get("auth_timeout", int(DEFAULT_AUTH_TIMEOUT)),
                "auth_timeout",
                minimum=1,
            )
        ),
        max_queue=_int(
            env.get("MAX_QUEUE") or section.get("max_queue", DEFAULT_MAX_QUEUE),
            "max_queue",
            minimum=1,
        ),
        node_timeout=float(
            _int(
                env.get("NODE_TIMEOUT") or section.get("node_timeout", int(DEFAULT_NODE_TIMEOUT)),
                "node_timeout",
                minimum=1,
            )
        ),
        redis_timeout=float(
            _int(
                env.get("REDIS_TIMEOUT")
                or section.get("redis_timeout", int(DEFAULT_REDIS_TIMEOUT)),
                "redis_timeout",
                minimum=1,
            )
        ),
        drain_grace=_seconds(
            env.get("DRAIN_GRACE") or section.get("drain_grace", DEFAULT_DRAIN_GRACE),
            "drain_grace",
        ),
        drain_spread=_seconds(
            env.get("DRAIN_SPREAD") or section.get("drain_spread", DEFAULT_DRAIN_SPREAD),
            "drain_spread",
        ),
        socketio_options=_socketio_options(io),
        serve_client=io.get("serveClient", True) is not False,
        logging=_logging(section, env),
        admin_key=env.get("ADMIN_KEY") or _text(section.get("admin_key"), "admin_key"),
        warnings=_unknown_keys(section, f"{config_path}: {env_name}"),
        limits=_limits(section, env),
    )
    if config.internal_port == config.port:
        raise ConfigError(f"internal_port must differ from port ({config.port})")
    return config


def add_file_options(parser: argparse.ArgumentParser) -> None:
    """--config and --sites: for the service, and for the commands that run beside it
    (import-original, backup), which read the service's own configuration."""
    parser.add_argument("--config", help="config.yml path (default ./config.yml, or CONFIG_FILE)")
    parser.add_argument("--sites", help="sites.yml path (default ./sites.yml, or SITES_FILE)")


def load_for_command(args: argparse.Namespace) -> Config | None:
    """The configuration ``add_file_options`` names; None, with the mistake on stderr."""
    try:
        return load_config(config_file=args.config, sites_file=args.sites)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return None


def describe(config: Config) -> str:
    """The configuration as the service would run it, as YAML, with every secret masked:
    what ``--check-config`` prints."""
    masked = "***"
    effective: dict[str, Any] = {
        "environment": config.env,
        "host": config.host,
        "port": config.port,
        "internal_port": config.internal_port or None,
        "node_name": config.node_name,
        "store": (
            {
                "redis": {
                    "url": mask(config.redis_url),
                    "key_prefix": config.redis_key_prefix,
                    "min_replicas": config.redis_min_replicas,
                }
            }
            if config.redis_url
            else {"sqlite": {"path": config.sqlite_path, "synchronous": config.sqlite_synchronous}}
        ),
        "device_ttl": config.device_ttl,
        "idempotency_ttl": config.idempotency_ttl,
        "max_queue": config.max_queue,
        "auth_timeout": config.auth_timeout,
        "node_timeout": config.node_timeout,
        "redis_timeout": config.redis_timeout,
        "drain_grace": config.drain_grace,
        "drain_spread": config.drain_spread,
        "admin_key": masked if config.admin_key else "(none: no /status page)",
        "log": {
            "format": config.logging.format,
            "console_level": config.logging.console_level,
            "file": config.logging.file_path or None,
            "file_level": config.logging.file_level,
        },
        "io": {**config.socketio_options, "serveClient": config.serve_client},
        "limits": {name: getattr(config.limits, name) for name in LIMIT_NAMES},
        "sites": {
            site.name: {
                "authUrl": site.auth_url,
                "authScheme": site.auth_scheme,
                "apiKey": masked,
                "userRoomPrefix": site.user_room_prefix or None,
                "updateUserUrl": site.update_user_url or None,
                "publicChannel": site.public_channel or None,
            }
            for site in config.sites.values()
        },
    }
    return yaml.safe_dump(effective, sort_keys=False, allow_unicode=True).rstrip()
