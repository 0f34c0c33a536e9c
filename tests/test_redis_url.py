"""The Redis URLs an operator writes: Redis Cluster's, read as the store, the node bus and
python-socketio's manager use them, and refused with a reason when they cannot work."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from socketio_webservice.storage.redis_url import parse
from socketio_webservice.webservice.config import ConfigError, load_config
from tests.test_config import write


def test_a_cluster_url_names_its_nodes_credentials_and_tls() -> None:
    address = parse("rediss+cluster://app:s%40cret@10.0.0.1:7000,10.0.0.2")
    assert address.is_cluster and not address.is_sentinel
    assert address.cluster_nodes == (("10.0.0.1", 7000), ("10.0.0.2", 6379))
    assert (address.username, address.password, address.tls) == ("app", "s@cret", True)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+cluster://h1:7000/3", "Redis Cluster has one database"),
        ("redis+cluster://h1:70000", "has no valid port"),
        ("redis+cluster://:7000", "no host"),
        ("redis+clustr://h1", "unknown scheme 'redis+clustr'"),
    ],
)
def test_a_cluster_url_that_cannot_work_is_refused_with_the_reason(
    url: str, reason: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        parse(url)
    with pytest.raises(ConfigError, match=re.escape(reason)):
        load_config({"REDIS_URL": url}, *write(tmp_path))


def test_config_takes_a_cluster_url(tmp_path: Path) -> None:
    config = load_config({"REDIS_URL": "redis+cluster://h1:7000,h2:7001"}, *write(tmp_path))
    assert config.redis_url == "redis+cluster://h1:7000,h2:7001"
