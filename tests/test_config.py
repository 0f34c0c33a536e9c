"""Configuration is read as the Node original reads it; mistakes stop start-up, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from socketio_webservice.webservice.config import ConfigError, load_config
from testkit.processes import run_cli

CONFIG = """
production:
  port: 8080
  device_ttl: 60
  redis:
    url: redis://127.0.0.1:6390/2
  flakeid: {datacenter: 0, worker: 0}
  io:
    pingTimeout: 60000
    pingInterval: 25000
  winston:
    console: {level: warn}
    file: {level: info, filename: ./logs/log.txt, handleExceptions: true}
  servers: [deployer@server1.example.com]
development:
  port: 3000
"""
SITES = """
newsite:
  authUrl: http://newsite.example/socketrooms
  authScheme: Token
  apiKey: 54321
  userRoomPrefix: user_
  updateUserUrl: http://newsite.example/users/:id
"""


def write(tmp_path: Path, config: str = CONFIG, sites: str = SITES) -> tuple[str, str]:
    (tmp_path / "config.yml").write_text(config)
    (tmp_path / "sites.yml").write_text(sites)
    return str(tmp_path / "config.yml"), str(tmp_path / "sites.yml")


def test_files_in_the_originals_format(tmp_path: Path) -> None:
    config_file, sites_file = write(tmp_path)
    config = load_config({}, config_file, sites_file)
    assert (config.port, config.device_ttl, config.redis_url) == (
        8080,
        60,
        "redis://127.0.0.1:6390/2",
    )
    assert config.socketio_options == {"ping_timeout": 60.0, "ping_interval": 25.0}
    assert config.logging.console_level == "WARN" and config.logging.file_path == "./logs/log.txt"
    site = config.sites["newsite"]
    assert (site.api_key, site.auth_scheme, site.user_room_prefix) == ("54321", "Token", "user_")
    assert site.reliable and site.user_id("user_8") == "8"


def test_node_env_picks_the_section(tmp_path: Path) -> None:
    config_file, sites_file = write(tmp_path)
    assert load_config({"NODE_ENV": "development"}, config_file, sites_file).port == 3000
    assert load_config({"APP_ENV": "development"}, config_file, sites_file).port == 3000


def test_environment_alone_describes_one_site_and_overrides_files(tmp_path: Path) -> None:
    config_file, sites_file = write(tmp_path)
    env = {
        "PORT": "80",
        "DEVICE_TTL": "0",
        "REDIS_URL": "redis://r:1/0",
        "SITE_NAME": "goodcity",
        "AUTH_URL": "https://api.example/rooms",
        "AUTH_SCHEME": "Bearer",
        "API_KEY": "k",
        "USER_ROOM_PREFIX": "user_",
        "UPDATE_USER_URL": "https://api.example/users/:id",
        "PUBLIC_CHANNEL": "browse",
    }
    config = load_config(env, config_file, sites_file)
    assert (config.port, config.device_ttl, config.redis_url) == (80, 0, "redis://r:1/0")
    assert set(config.sites) == {"newsite", "goodcity"}
    assert config.sites["goodcity"].public_channel == "browse"


def test_defaults_use_sqlite(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no config.yml or sites.yml here
    config = load_config({"SITE_NAME": "s", "AUTH_URL": "http://a/x", "API_KEY": "k"})
    assert config.port == 1337 and config.device_ttl == 3600 and config.redis_url == ""
    assert config.sqlite_path == "data/webservice.sqlite3"


def test_redis_timeout_comes_from_config_then_environment(tmp_path: Path) -> None:
    config_file, sites_file = write(tmp_path, "production: {}\n")
    assert load_config({}, config_file, sites_file).redis_timeout == 5
    config_file, sites_file = write(tmp_path, "production:\n  redis_timeout: 2\n")
    assert load_config({}, config_file, sites_file).redis_timeout == 2
    assert load_config({"REDIS_TIMEOUT": "9"}, config_file, sites_file).redis_timeout == 9


def test_drain_times_come_from_config_then_environment(tmp_path: Path) -> None:
    config_file, sites_file = write(tmp_path, "production: {}\n")
    config = load_config({}, config_file, sites_file)
    assert (config.drain_grace, config.drain_spread) == (5, 10)
    config_file, sites_file = write(tmp_path, "production:\n  drain_grace: 0.5\n")
    config = load_config({"DRAIN_SPREAD": "0"}, config_file, sites_file)
    assert (config.drain_grace, config.drain_spread) == (0.5, 0)


@pytest.mark.parametrize(
    ("config", "sites", "env", "key"),
    [
        ("production:\n  port: abc\n", SITES, {}, "port"),
        ("production:\n  device_ttl: -1\n", SITES, {}, "device_ttl"),
        ("production:\n  max_queue: 0\n", SITES, {}, "max_queue"),
        ("production:\n  redis_timeout: 0\n", SITES, {}, "redis_timeout"),
        ("production:\n  drain_grace: -1\n", SITES, {}, "drain_grace must be from 0"),
        ("production:\n  internal_port: 1337\n", SITES, {}, "internal_port must differ"),
        ("production: {}\n", SITES, {"DRAIN_SPREAD": "nan"}, "drain_spread"),
        ("production: {}\n", SITES, {"DRAIN_SPREAD": "soon"}, "drain_spread"),
        ("production:\n  io:\n    pingTimout: 5\n", SITES, {}, "io.pingTimout"),
        ("production: {}\n", "s:\n  apiKey: k\n", {}, "s.authUrl"),
        ("production: {}\n", "s:\n  authUrl: http://a/b\n", {}, "s.apiKey"),
        (
            "production: {}\n",
            "s:\n  authUrl: http://a\n  apiKey: k\n  authURL: x\n",
            {},
            "s.authURL",
        ),
        ("production: {}\n", SITES, {"DEVICE_TTL": "soon"}, "device_ttl"),
        (
            "production:\n  winston:\n    console: {level: loud}\n",
            SITES,
            {},
            "winston.console.level",
        ),
        ("production: [\n", SITES, {}, "not valid YAML"),
        ("production:\n  port: 70000\n", SITES, {}, "port must be at most 65535"),
        ("production:\n  limits:\n    max_rooms: 5\n", SITES, {}, "limits.max_rooms"),
        ("production: {}\n", SITES, {"MAX_ROOM_LENGTH": "0"}, "limits.max_room_length"),
    ],
)
def test_mistakes_name_the_key(
    tmp_path: Path, config: str, sites: str, env: dict[str, str], key: str
) -> None:
    config_file, sites_file = write(tmp_path, config, sites)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(env, config_file, sites_file)


def test_a_config_error_stops_start_up_with_one_line(tmp_path: Path) -> None:
    write(tmp_path, "production:\n  port: abc\n")
    result = run_cli(cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "config error: port must be a whole number, not 'abc'"
    ]


def test_limits_come_from_config_and_environment(tmp_path: Path) -> None:
    config_file, sites_file = write(
        tmp_path, "production:\n  limits:\n    max_rooms_per_send: 5\n    write_timeout: 9\n"
    )
    config = load_config({"WRITE_TIMEOUT": "3"}, config_file, sites_file)
    assert config.limits.max_rooms_per_send == 5
    assert config.limits.write_timeout == 3  # the environment wins
    assert config.limits.max_room_length == 200  # the default


def yaml_bomb(levels: int, key: str = "port") -> str:
    """Nine-fold aliases, ``levels`` deep: under 500 bytes that stand for 9**levels values."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, levels + 1):
        refs = ",".join([f"*a{n - 1}"] * 9)
        lines.append(f"a{n}: &a{n} [{refs}]")
    body = "\n".join(f"  {line}" for line in lines)
    return f"production:\n{body}\n  {key}: *a{levels}\n"


@pytest.mark.parametrize("levels", [8, 9])
def test_a_yaml_bomb_is_refused_at_once_in_one_short_line(tmp_path: Path, levels: int) -> None:
    write(tmp_path, yaml_bomb(levels))
    assert (tmp_path / "config.yml").stat().st_size < 1_000
    result = run_cli("--check-config", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) < 300, lines
    assert "aliases expand to more than" in lines[0]


def test_a_value_shown_in_an_error_is_cut_short(tmp_path: Path) -> None:
    config_file, sites_file = write(tmp_path, f"production:\n  port: {'9' * 5000}x\n")
    with pytest.raises(ConfigError) as raised:
        load_config({}, config_file, sites_file)
    assert len(str(raised.value)) < 200 and "..." in str(raised.value)


@pytest.mark.parametrize(
    "sites",
    [SITES + SITES.replace("54321", "other"), "1:\n  authUrl: http://a/\n  apiKey: k\n" * 2],
    ids=["same-name", "same-number"],
)
def test_a_site_defined_twice_is_refused(tmp_path: Path, sites: str) -> None:
    config_file, sites_file = write(tmp_path, sites=sites)
    with pytest.raises(ConfigError, match="given twice"):
        load_config({}, config_file, sites_file)


def test_aliases_within_the_bound_are_read(tmp_path: Path) -> None:
    config_file, sites_file = write(
        tmp_path,
        "defaults: &defaults\n  port: 8081\n  device_ttl: 60\nproduction:\n  <<: *defaults\n",
    )
    config = load_config({}, config_file, sites_file)
    assert (config.port, config.device_ttl) == (8081, 60)


@pytest.mark.parametrize(
    ("block", "url"),
    [
        ("url: redis://h:1/2", "redis://h:1/2"),
        ("host: h\n    port: 7000\n    db: 3", "redis://h:7000/3"),
        ("host: h\n    password: 's3cr:t@'", "redis://:s3cr%3At%40@h:6379/0"),
        ("host: h\n    username: app\n    password: pw\n    tls: true", "rediss://app:pw@h:6379/0"),
        ("host: h\n    tls: {ca: /etc/ca.pem}", "rediss://h:6379/0"),
    ],
)
def test_the_originals_redis_block_is_read_whole(tmp_path: Path, block: str, url: str) -> None:
    config_file, sites_file = write(tmp_path, f"production:\n  redis:\n    {block}\n")
    assert load_config({}, config_file, sites_file).redis_url == url


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("localhost:6379", "not a Redis URL"),
        ("redis://h:notaport", "the port is not a number"),
        ("redis://:secret-pw@h:99999/0", "the port is not a number"),
        ("redis://h:6379/x", "the database 'x' is not a number"),
        ("http://h:6379", "unknown scheme 'http'"),
        ("unix://", "needs the socket's path"),
    ],
)
def test_a_redis_url_that_cannot_work_is_one_line_with_the_password_masked(
    tmp_path: Path, url: str, says: str
) -> None:
    write(tmp_path, "production: {}\n")
    result = run_cli("--check-config", cwd=tmp_path, REDIS_URL=url)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: REDIS_URL: ") and says in lines[0]
    assert "secret-pw" not in result.stderr


def test_the_key_prefix_comes_from_config_then_environment(tmp_path: Path) -> None:
    config_file, sites_file = write(tmp_path, "production:\n  redis:\n    key_prefix: 'stg:'\n")
    assert load_config({}, config_file, sites_file).redis_key_prefix == "stg:"
    assert load_config({"REDIS_KEY_PREFIX": "p1:"}, config_file, sites_file).redis_key_prefix == (
        "p1:"
    )
    assert load_config({}, *write(tmp_path, "production: {}\n")).redis_key_prefix == "sws:"
    with pytest.raises(ConfigError, match="not a key prefix"):
        load_config({"REDIS_KEY_PREFIX": "a*"}, config_file, sites_file)


def test_an_api_key_can_come_from_a_file_as_a_mounted_secret(tmp_path: Path) -> None:
    key_file = tmp_path / "shop-api-key"
    key_file.write_text("s3cret-from-a-file\n")
    site = f"shop:\n  authUrl: http://shop.example/rooms\n  apiKeyFile: {key_file}\n"
    config_file, sites_file = write(tmp_path, "production: {}\n", site)
    assert load_config({}, config_file, sites_file).sites["shop"].api_key == "s3cret-from-a-file"

    both = site + "  apiKey: another\n"
    config_file, sites_file = write(tmp_path, "production: {}\n", both)
    with pytest.raises(ConfigError, match="apiKey and apiKeyFile both set"):
        load_config({}, config_file, sites_file)

    missing = site.replace(str(key_file), str(tmp_path / "nowhere"))
    config_file, sites_file = write(tmp_path, "production: {}\n", missing)
    with pytest.raises(ConfigError, match=r"shop\.apiKeyFile .*nowhere: cannot be read"):
        load_config({}, config_file, sites_file)

    key_file.write_text("\n")
    config_file, sites_file = write(tmp_path, "production: {}\n", site)
    with pytest.raises(ConfigError, match="the file is empty"):
        load_config({}, config_file, sites_file)
