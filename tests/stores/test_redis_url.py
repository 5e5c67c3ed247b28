"""``--redis-url`` for Sentinel and Cluster: what each form names, and what a bad one says."""

from __future__ import annotations

import pytest

from proxy.ops.config import ConfigError, parse_settings
from proxy.ops.redis_url import RedisNodes, parse_redis_nodes, redacted_url


def test_a_sentinel_url_names_the_sentinels_the_service_the_database_and_the_credentials() -> None:
    nodes = parse_redis_nodes(
        "redis+sentinel://app:p%40ss@s1,s2:26380,[::1]:26381/cache/2?sentinel_password=sp"
    )
    assert nodes == RedisNodes(
        "sentinel",
        (("s1", 26379), ("s2", 26380), ("::1", 26381)),
        service="cache",
        db=2,
        username="app",
        password="p@ss",
        sentinel_password="sp",
    )


def test_a_sentinel_url_without_a_database_uses_database_0_and_no_credentials() -> None:
    nodes = parse_redis_nodes("redis+sentinel://s1:26379/mymaster")
    assert nodes.db == 0
    assert nodes.username is nodes.password is nodes.sentinel_password is None


def test_a_cluster_url_names_its_seed_nodes_with_the_default_port() -> None:
    nodes = parse_redis_nodes("redis+cluster://:pw@n1:7000,n2")
    assert (nodes.kind, nodes.password) == ("cluster", "pw")
    assert nodes.nodes == (("n1", 7000), ("n2", 6379))


def test_credentials_stay_out_of_the_repr() -> None:
    nodes = parse_redis_nodes("redis+sentinel://app:s3cret@s1/m?sentinel_password=s3cret")
    assert "s3cret" not in repr(nodes)


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://:s3cret@s1:26379",  # no service
        "redis+sentinel://:s3cret@s1:26379/m/x",  # a database that is not a number
        "redis+sentinel://:s3cret@s1:26379/m/0/extra",
        "redis+sentinel://:s3cret@s1:99999/m",
        "redis+sentinel://:s3cret@s1:26379/m?password=s3cret",  # an option it does not know
        "redis+sentinel://:s3cret@s1,,s2/m",
        "redis+cluster://:s3cret@n1:7000/1",  # a cluster has only database 0
        "redis+cluster://:s3cret@",
        "redis+cluster://:s3cret@n1/#frag",
    ],
)
def test_a_bad_sentinel_or_cluster_url_is_a_config_error_that_does_not_repeat_it(url: str) -> None:
    with pytest.raises(ConfigError, match=r"^--redis-url: ") as error:
        parse_settings(["--redis-url", url], {})
    assert "s3cret" not in str(error.value)


def test_good_sentinel_and_cluster_urls_are_accepted_as_given() -> None:
    for url in ("redis+sentinel://s1,s2,s3/mymaster/0", "redis+cluster://n1:7000,n2:7001"):
        assert parse_settings(["--redis-url", url], {}).redis_url == url


def test_redacted_url_drops_credentials_and_option_values_of_every_form() -> None:
    assert (
        redacted_url("redis+sentinel://app:pw@s1,s2:26380/m/1?sentinel_password=sp")
        == "redis+sentinel://s1,s2:26380/m/1?sentinel_password=***"
    )
    assert redacted_url("redis+cluster://:pw@n1:7000,n2:7001") == "redis+cluster://n1:7000,n2:7001"
    assert redacted_url("redis://cache:6379/0?password=pw") == "redis://cache:6379/0?password=***"
