"""Settings from arguments and the environment, and the one-line start-up errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from proxy.ops.config import ConfigError, Settings, parse_settings, parse_size


def test_defaults_match_the_contract() -> None:
    settings = parse_settings([], {})
    assert settings == Settings()
    assert settings.upstream == "https://api.aitronos.com"
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.cache_max_bytes == 256 * 1024**2
    assert settings.cache_scope == "credential"


def test_environment_sets_every_option_and_the_command_line_wins() -> None:
    env = {
        "PROXY_UPSTREAM": "http://origin:9000/",
        "PROXY_PORT": "9090",
        "PROXY_CACHE_MAX_BYTES": "64MiB",
        "PROXY_CREDENTIAL_HEADERS": "Authorization, X-Tenant",
    }
    settings = parse_settings(["--port", "7070"], env)
    assert settings.upstream == "http://origin:9000"
    assert settings.port == 7070
    assert settings.cache_max_bytes == 64 * 1024**2
    assert settings.credential_headers == ("authorization", "x-tenant")


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        (["--port", "http"], {}, "--port"),
        (["--port", "70000"], {}, "--port"),
        ([], {"PROXY_PORT": "-1"}, "PROXY_PORT"),
        (["--upstream", "ftp://x"], {}, "--upstream"),
        (["--cache-scope", "everyone"], {}, "--cache-scope"),
        (["--cache-max-bytes", "lots"], {}, "--cache-max-bytes"),
        (["--upstream-timeout", "0"], {}, "--upstream-timeout"),
        (["--access-log", "maybe"], {}, "--access-log"),
    ],
)
def test_bad_values_name_the_option(argv: list[str], env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_settings(argv, env)
    message = str(raised.value)
    assert message.startswith(named + ":")
    assert "\n" not in message


@pytest.mark.parametrize(("argv", "named"), [(["--bogus"], "--bogus"), (["--port"], "--port")])
def test_unknown_or_incomplete_options_are_one_line_errors(argv: list[str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        parse_settings(argv, {})


def test_sizes() -> None:
    assert parse_size("4096") == 4096
    assert parse_size("64KiB") == 65536
    assert parse_size("1.5MB") == 1_500_000
    with pytest.raises(ValueError):
        parse_size("12 parsecs")


def test_bad_option_stops_the_process_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--port", "nope"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "aitronos-cache-proxy: error: --port: expected a number, got 'nope'"
    ]


@pytest.mark.parametrize(
    ("choice", "loop_module"),
    [("asyncio", "asyncio"), ("uvloop", "uvloop"), ("auto", "uvloop")],
)
def test_event_loop_choice_picks_the_loop_to_serve_on(choice: str, loop_module: str) -> None:
    pytest.importorskip("uvloop")
    from proxy.__main__ import event_loop_factory

    loop = event_loop_factory(parse_settings(["--event-loop", choice], {}).event_loop)()
    try:
        assert type(loop).__module__.split(".")[0] == loop_module
    finally:
        loop.close()


def test_the_removed_aiohttp_front_is_refused_at_start_up_with_one_line() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "proxy", "--front", "aiohttp"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "aitronos-cache-proxy: error: --front: aiohttp's server was removed; the proxy serves "
        "on its own front only (drop the option, or say own)"
    ]
    with pytest.raises(ConfigError, match=r"^PROXY_FRONT: aiohttp's server was removed"):
        parse_settings([], {"PROXY_FRONT": "aiohttp"})
    assert parse_settings(["--front", "own"], {}).front == "own"
    with pytest.raises(ConfigError, match=r"^--front: expected one of own, got 'h2o'"):
        parse_settings(["--front", "h2o"], {})


def test_an_unknown_event_loop_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match="--event-loop"):
        parse_settings(["--event-loop", "trio"], {})


def test_compress_types_and_min_bytes_come_from_flags_and_the_environment() -> None:
    settings = parse_settings(
        ["--compress-types", "text/*, Application/JSON"], {"PROXY_COMPRESS_MIN_BYTES": "2KiB"}
    )
    assert settings.compress_types == ("text/*", "application/json")
    assert settings.compress_min_bytes == 2048
    assert parse_settings(["--compress-types", ""], {}).compress_types == ()
    assert "application/json" in Settings().compress_types
    with pytest.raises(ConfigError, match="--compress-types"):
        parse_settings(["--compress-types", "json"], {})


def test_compress_codings_are_ordered_and_checked() -> None:
    assert parse_settings(["--compress-codings", "gzip, ZSTD"], {}).compress_codings == (
        "zstd",
        "gzip",
    )
    assert parse_settings([], {"PROXY_COMPRESS_CODINGS": ""}).compress_codings == ()
    with pytest.raises(ConfigError, match="--compress-codings"):
        parse_settings(["--compress-codings", "deflate"], {})
