"""Configuration (docs/operations.md, "Configuration"): ``ZAJEL_*`` variables, flags, clear
errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from zajel.config import Config, ConfigError

SECRETS = {
    "ZAJEL_BOOTSTRAP_SIGNING_KEY": "b" * 64,
    "ZAJEL_ATTESTATION_SIGNING_KEY": "a" * 64,
    "ZAJEL_BUILD_TOKEN_VERIFY_KEY": "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=",
    "ZAJEL_SERVER_REGISTRY_SECRET": "registry-secret-value",
    "ZAJEL_CI_UPLOAD_SECRET": "ci-upload-secret-value",
}


# Production and qa refuse to start without their signing keys (docs/operations.md, "Environments").
KEY = {"ZAJEL_BOOTSTRAP_SIGNING_KEY": "c" * 64, "ZAJEL_ATTESTATION_SIGNING_KEY": "d" * 64}


def test_defaults():
    config = Config.from_env({})
    assert config == Config()
    assert config.env == "development"
    assert config.host == "127.0.0.1"
    assert config.port == 8080
    assert config.data_dir == Path("data")
    assert config.log_level == "DEBUG"
    assert config.log_format == "text"
    assert config.metrics is True
    assert config.allowed_origins == ()
    assert config.trust_proxy is None
    assert config.bootstrap_signing_key is None
    assert config.server_registry_secret is None
    # docs/cluster.md, "Settings": a single node unless a cluster URL is given.
    assert (config.cluster_url, config.node_id, config.reuse_port) == (None, None, False)
    assert (config.cluster_lease_ms, config.cluster_call_timeout_ms) == (10_000, 5_000)
    assert config.cluster_linger_ms == 5
    assert (config.ws_max_message_bytes, config.chunk_max_bytes) == (262_144, 65_536)
    assert (config.ws_message_rate, config.ws_message_burst) == (100.0, 200)
    assert (config.pair_requests_per_minute, config.pair_pending_per_target) == (10, 10)
    assert (config.rendezvous_max_items, config.chunk_announce_max) == (50, 100)
    assert (config.ws_max_connections, config.ws_max_connections_per_ip) == (10_000, 100)
    assert config.http_rate_per_minute == 100
    assert config.ws_outbound_queue == 256
    assert (config.ws_ping_interval, config.ws_idle_timeout) == (30.0, 120.0)
    assert config.trusted_proxies == ()
    assert (config.ws_outbound_bytes, config.ws_slow_consumer_ms) == (4 << 20, 2000)
    assert config.http_max_connections_per_ip == 50
    assert config.pair_requests_per_minute_per_ip == 30
    assert config.chunk_cache_bytes == 64 << 20
    assert (config.chunk_sources_per_ip, config.chunk_pending_per_ip) == (20_000, 2_000)
    assert config.rendezvous_drops_per_point == 20
    assert config.rendezvous_reply_bytes == 128 << 10
    assert config.rendezvous_entries_per_ip == 2_000
    assert config.attest_registrations_per_ip_per_hour == 30
    assert config.attest_web_devices_max == 10_000
    assert config.redacts_codes is False


def test_every_setting_from_the_environment():
    environ = {
        "ZAJEL_ENV": "production",
        "ZAJEL_HOST": "0.0.0.0",
        "ZAJEL_PORT": "9000",
        "ZAJEL_DATA_DIR": "/var/lib/zajel",
        "ZAJEL_LOG_LEVEL": "ERROR",
        "ZAJEL_LOG_FORMAT": "json",
        "ZAJEL_METRICS": "off",
        "ZAJEL_ALLOWED_ORIGINS": " https://a.example , http://localhost:*,, ",
        "ZAJEL_TRUST_PROXY": "x-forwarded-for",
        "ZAJEL_TRUSTED_PROXIES": " 10.0.0.0/8, ::1 ,,192.0.2.7",
        "ZAJEL_WS_OUTBOUND_BYTES": "65536",
        "ZAJEL_WS_SLOW_CONSUMER_MS": "500",
        "ZAJEL_HTTP_MAX_CONNECTIONS_PER_IP": "13",
        "ZAJEL_PAIR_REQUESTS_PER_MINUTE_PER_IP": "14",
        "ZAJEL_CHUNK_CACHE_BYTES": "1048576",
        "ZAJEL_CHUNK_SOURCES_PER_IP": "16",
        "ZAJEL_CHUNK_PENDING_PER_IP": "17",
        "ZAJEL_RENDEZVOUS_DROPS_PER_POINT": "18",
        "ZAJEL_RENDEZVOUS_REPLY_BYTES": "8192",
        "ZAJEL_RENDEZVOUS_ENTRIES_PER_IP": "19",
        "ZAJEL_ATTEST_REGISTRATIONS_PER_IP_PER_HOUR": "21",
        "ZAJEL_ATTEST_WEB_DEVICES_MAX": "22",
        "ZAJEL_WS_MAX_MESSAGE_BYTES": "4096",
        "ZAJEL_CHUNK_MAX_BYTES": "2048",
        "ZAJEL_WS_MESSAGE_RATE": "2.5",
        "ZAJEL_WS_MESSAGE_BURST": "5",
        "ZAJEL_PAIR_REQUESTS_PER_MINUTE": "3",
        "ZAJEL_PAIR_PENDING_PER_TARGET": "4",
        "ZAJEL_RENDEZVOUS_MAX_ITEMS": "6",
        "ZAJEL_CHUNK_ANNOUNCE_MAX": "7",
        "ZAJEL_WS_MAX_CONNECTIONS": "8",
        "ZAJEL_WS_MAX_CONNECTIONS_PER_IP": "9",
        "ZAJEL_HTTP_RATE_PER_MINUTE": "11",
        "ZAJEL_WS_OUTBOUND_QUEUE": "12",
        "ZAJEL_WS_PING_INTERVAL": "15",
        "ZAJEL_WS_IDLE_TIMEOUT": "60.5",
        "ZAJEL_WS_TRANSPORT": "fast",
        "ZAJEL_CHANNEL_CHUNK_MAX_BYTES": "262144",
        "ZAJEL_CHANNEL_OWNER_GRACE_S": "600",
        **SECRETS,
    }
    config = Config.from_env(environ)
    assert config.env == "production"
    assert config.redacts_codes is True
    assert config.host == "0.0.0.0"
    assert config.port == 9000
    assert config.data_dir == Path("/var/lib/zajel")
    assert config.log_level == "ERROR"
    assert config.log_format == "json"
    assert config.metrics is False
    assert config.allowed_origins == ("https://a.example", "http://localhost:*")
    assert config.trust_proxy == "X-Forwarded-For"
    assert [str(network) for network in config.trusted_proxies] == [
        "10.0.0.0/8",
        "::1/128",
        "192.0.2.7/32",
    ]
    assert (config.ws_outbound_bytes, config.ws_slow_consumer_ms) == (65_536, 500)
    assert config.http_max_connections_per_ip == 13
    assert config.pair_requests_per_minute_per_ip == 14
    assert config.chunk_cache_bytes == 1_048_576
    assert (config.chunk_sources_per_ip, config.chunk_pending_per_ip) == (16, 17)
    assert config.rendezvous_drops_per_point == 18
    assert config.rendezvous_reply_bytes == 8192
    assert config.rendezvous_entries_per_ip == 19
    assert config.attest_registrations_per_ip_per_hour == 21
    assert config.attest_web_devices_max == 22
    assert config.ws_max_message_bytes == 4096
    assert config.chunk_max_bytes == 2048
    assert config.ws_message_rate == 2.5
    assert config.ws_message_burst == 5
    assert config.pair_requests_per_minute == 3
    assert config.pair_pending_per_target == 4
    assert config.rendezvous_max_items == 6
    assert config.chunk_announce_max == 7
    assert config.ws_max_connections == 8
    assert config.ws_max_connections_per_ip == 9
    assert config.http_rate_per_minute == 11
    assert config.ws_outbound_queue == 12
    assert config.ws_ping_interval == 15.0
    assert config.ws_idle_timeout == 60.5
    assert config.ws_transport == "fast"
    assert config.channel_chunk_max_bytes == 262_144
    assert config.channel_owner_grace_s == 600.0
    assert config.bootstrap_signing_key == "b" * 64
    assert config.attestation_signing_key == "a" * 64
    assert config.build_token_verify_key == SECRETS["ZAJEL_BUILD_TOKEN_VERIFY_KEY"]
    assert config.server_registry_secret == "registry-secret-value"
    assert config.ci_upload_secret == "ci-upload-secret-value"


def test_flags_override_the_environment():
    environ = {"ZAJEL_PORT": "9000", "ZAJEL_HOST": "0.0.0.0", "ZAJEL_ENV": "qa", **KEY}
    config = Config.from_env(
        environ, port=7000, env="production", data_dir="/srv/zajel", log_format="json"
    )
    assert config.port == 7000
    assert config.env == "production"
    assert config.data_dir == Path("/srv/zajel")
    assert config.log_format == "json"
    assert config.host == "0.0.0.0"  # no flag: the environment still counts


def test_unset_flags_fall_back_to_the_environment():
    config = Config.from_env({"ZAJEL_PORT": "9000", "ZAJEL_ENV": "qa", **KEY}, port=None, env=None)
    assert config.port == 9000
    assert config.env == "qa"


def test_port_zero_picks_a_free_port():
    assert Config.from_env({"ZAJEL_PORT": "0"}).port == 0


@pytest.mark.parametrize(
    ("environ", "env"),
    [
        ({"ENVIRONMENT": "production"}, "production"),
        ({"NODE_ENV": "qa"}, "qa"),
        ({"ENVIRONMENT": "QA", "NODE_ENV": "production"}, "qa"),
        ({"ENVIRONMENT": "", "NODE_ENV": "production"}, "production"),
        ({"ZAJEL_ENV": "development", "ENVIRONMENT": "production"}, "development"),
        ({"ZAJEL_ENV": " ", "NODE_ENV": "production"}, "production"),
        ({"ZAJEL_ENV": "Production"}, "production"),
    ],
)
def test_environment_fallbacks(environ, env):
    assert Config.from_env({**environ, **KEY}).env == env


@pytest.mark.parametrize(
    ("environ", "level"),
    [
        ({}, "DEBUG"),
        ({"ZAJEL_ENV": "production"}, "INFO"),
        ({"ZAJEL_ENV": "qa"}, "INFO"),
        ({"ZAJEL_ENV": "production", "ZAJEL_LOG_LEVEL": "debug"}, "DEBUG"),
        ({"ZAJEL_LOG_LEVEL": "warning"}, "WARNING"),
        ({"ZAJEL_LOG_LEVEL": "warn"}, "WARNING"),
        ({"ZAJEL_LOG_LEVEL": "WARN"}, "WARNING"),
        ({"ZAJEL_LOG_LEVEL": "info"}, "INFO"),
        ({"ZAJEL_LOG_LEVEL": "error"}, "ERROR"),
    ],
)
def test_log_levels(environ, level):
    assert Config.from_env({**environ, **KEY}).log_level == level


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "65536"),
        ("PORT", "-1"),
        ("PORT", "http"),
        ("PORT", "80.5"),
        ("PORT", "1e3"),
        ("ENV", "staging"),
        ("LOG_LEVEL", "verbose"),
        ("LOG_LEVEL", "critical"),
        ("LOG_FORMAT", "xml"),
        ("METRICS", "yes"),
        ("WS_TRANSPORT", "asgi"),
        ("CHANNEL_CHUNK_MAX_BYTES", "100"),
        ("CHANNEL_OWNER_GRACE_S", "-1"),
        ("TRUST_PROXY", "X-Real-IP"),
        ("WS_MESSAGE_RATE", "NaN"),
        ("WS_MESSAGE_RATE", "nan"),
        ("WS_MESSAGE_RATE", "inf"),
        ("WS_MESSAGE_RATE", "0"),
        ("WS_MESSAGE_RATE", "fast"),
        ("WS_MESSAGE_BURST", "0"),
        ("WS_MESSAGE_BURST", "2.5"),
        ("WS_MAX_MESSAGE_BYTES", "10"),
        ("CHUNK_MAX_BYTES", "999999999"),
        ("PAIR_REQUESTS_PER_MINUTE", "0"),
        ("PAIR_PENDING_PER_TARGET", "-3"),
        ("RENDEZVOUS_MAX_ITEMS", "ten"),
        ("CHUNK_ANNOUNCE_MAX", "0"),
        ("WS_MAX_CONNECTIONS", "0"),
        ("WS_MAX_CONNECTIONS_PER_IP", "many"),
        ("HTTP_RATE_PER_MINUTE", "0"),
        ("WS_OUTBOUND_QUEUE", "0"),
        ("WS_PING_INTERVAL", "NaN"),
        ("WS_PING_INTERVAL", "0"),
        ("WS_IDLE_TIMEOUT", "-5"),
        ("WS_IDLE_TIMEOUT", "forever"),
        ("TRUSTED_PROXIES", "10.0.0.0/33"),
        ("TRUSTED_PROXIES", "proxy.example"),
        ("TRUSTED_PROXIES", "10.0.0.1,,nope"),
        ("WS_OUTBOUND_BYTES", "1024"),
        ("WS_SLOW_CONSUMER_MS", "0"),
        ("HTTP_MAX_CONNECTIONS_PER_IP", "0"),
        ("PAIR_REQUESTS_PER_MINUTE_PER_IP", "none"),
        ("CHUNK_CACHE_BYTES", "10"),
        ("CHUNK_SOURCES_PER_IP", "0"),
        ("CHUNK_PENDING_PER_IP", "-1"),
        ("RENDEZVOUS_DROPS_PER_POINT", "0"),
        ("RENDEZVOUS_REPLY_BYTES", "100"),
        ("RENDEZVOUS_ENTRIES_PER_IP", "0"),
        ("ATTEST_REGISTRATIONS_PER_IP_PER_HOUR", "0"),
        ("ATTEST_WEB_DEVICES_MAX", "0"),
        ("CLUSTER_URL", "http://127.0.0.1:6379/0"),
        ("CLUSTER_URL", "redis:///0"),
        ("CLUSTER_URL", "redis://127.0.0.1:port/0"),
        ("CLUSTER_URL", "redis://127.0.0.1:6379/zero"),
        ("NODE_ID", "a b"),
        ("NODE_ID", "n" * 65),
        ("NODE_ID", "node/1"),
        ("REUSE_PORT", "yes"),
        ("CLUSTER_LEASE_MS", "999"),
        ("CLUSTER_CALL_TIMEOUT_MS", "0"),
        ("CLUSTER_LINGER_MS", "101"),
    ],
)
def test_invalid_values_name_the_setting(name, value):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({f"ZAJEL_{name}": value})
    message = str(caught.value)
    assert message.startswith(f"ZAJEL_{name}: ")
    assert "\n" not in message


@pytest.mark.parametrize(
    ("flags", "name"),
    [
        ({"port": 70_000}, "PORT"),
        ({"port": "abc"}, "PORT"),
        ({"env": "live"}, "ENV"),
        ({"log_format": "yaml"}, "LOG_FORMAT"),
    ],
)
def test_invalid_flags_name_the_setting(flags, name):
    with pytest.raises(ConfigError, match=rf"^ZAJEL_{name}: "):
        Config.from_env({}, **flags)


def test_invalid_environment_fallback_names_zajel_env_and_the_variable_it_came_from():
    with pytest.raises(ConfigError, match=r"^ZAJEL_ENV is unset and NODE_ENV='test'"):
        Config.from_env({"NODE_ENV": "test"})


def test_zajel_env_wins_over_an_unusable_fallback():
    assert Config.from_env({"ZAJEL_ENV": "qa", "NODE_ENV": "test", **KEY}).env == "qa"
    assert Config.from_env({"NODE_ENV": "test", **KEY}, env="production").env == "production"


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_empty_values_count_as_unset():
    config = Config.from_env(
        {"ZAJEL_PORT": "", "ZAJEL_HOST": "  ", "ZAJEL_SERVER_REGISTRY_SECRET": " "}
    )
    assert config.port == 8080
    assert config.host == "127.0.0.1"
    assert config.server_registry_secret is None


def test_trust_proxy_names_are_normalised():
    proxies = {"ZAJEL_TRUSTED_PROXIES": "127.0.0.1"}
    config = Config.from_env({"ZAJEL_TRUST_PROXY": "cf-connecting-ip", **proxies})
    assert config.trust_proxy == "CF-Connecting-IP"
    config = Config.from_env({"ZAJEL_TRUST_PROXY": "X-Forwarded-For", **proxies})
    assert config.trust_proxy == "X-Forwarded-For"


def test_a_trusted_header_needs_the_proxies_it_is_trusted_from():
    # A header believed from anyone lets every client choose its own IP (and per-IP caps).
    with pytest.raises(ConfigError, match=r"^ZAJEL_TRUSTED_PROXIES: required with "):
        Config.from_env({"ZAJEL_TRUST_PROXY": "X-Forwarded-For"})
    # Proxies without a header are harmless: nothing is read from them.
    config = Config.from_env({"ZAJEL_TRUSTED_PROXIES": "10.0.0.1"})
    assert (config.trust_proxy, len(config.trusted_proxies)) == (None, 1)


def test_secrets_are_not_in_repr():
    config = Config.from_env(SECRETS)
    text = repr(config)
    for secret in SECRETS.values():
        assert secret not in text
    assert "port=8080" in text  # the rest is still shown
    assert "server_registry_secret" not in text


def test_config_is_frozen():
    config = Config()
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


@pytest.mark.parametrize("env", ["production", "qa"])
def test_production_and_qa_refuse_to_start_without_a_bootstrap_signing_key(env):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"ZAJEL_ENV": env, "ZAJEL_ATTESTATION_SIGNING_KEY": "d" * 64})
    assert str(caught.value) == (
        f"ZAJEL_BOOTSTRAP_SIGNING_KEY: required in {env}; make one with `zajel keygen`"
    )


def test_development_runs_without_signing_keys():
    config = Config.from_env({"ZAJEL_ENV": "development"})
    assert config.bootstrap_signing_key is None
    assert config.attestation_signing_key is None


def test_signing_keys_are_read_from_hex_or_a_file(tmp_path):
    seed = "0123456789ABCDEF" * 4
    (tmp_path / "bootstrap.key").write_text(seed + "\n")
    config = Config.from_env(
        {
            "ZAJEL_BOOTSTRAP_SIGNING_KEY": f"@{tmp_path / 'bootstrap.key'}",
            "ZAJEL_ATTESTATION_SIGNING_KEY": f"  {seed}  ",
        }
    )
    assert config.bootstrap_signing_key == seed.lower()
    assert config.attestation_signing_key == seed.lower()


@pytest.mark.parametrize("name", ["BOOTSTRAP_SIGNING_KEY", "ATTESTATION_SIGNING_KEY"])
@pytest.mark.parametrize(
    "value", ["abc", "g" * 64, "a" * 63, "a" * 66, "@/nonexistent/zajel/seed.key"]
)
def test_malformed_signing_keys_name_the_setting_and_never_echo_the_value(name, value):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({f"ZAJEL_{name}": value})
    message = str(caught.value)
    assert message.startswith(f"ZAJEL_{name}: ")
    assert "\n" not in message
    if not value.startswith("@"):
        assert value not in message


@pytest.mark.parametrize("env", ["production", "qa"])
def test_production_and_qa_refuse_to_start_without_an_attestation_signing_key(env):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"ZAJEL_ENV": env, "ZAJEL_BOOTSTRAP_SIGNING_KEY": "c" * 64})
    assert str(caught.value) == (
        f"ZAJEL_ATTESTATION_SIGNING_KEY: required in {env}; make one with `zajel keygen`"
    )


@pytest.mark.parametrize(
    "value", ["abc", "dmVyaWZ5LWtleS1zZWNyZXQ=", "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg"]
)
def test_a_build_token_key_that_is_not_a_32_byte_public_key_is_refused(value):
    with pytest.raises(ConfigError, match=r"^ZAJEL_BUILD_TOKEN_VERIFY_KEY: "):
        Config.from_env({"ZAJEL_BUILD_TOKEN_VERIFY_KEY": value})


def test_the_attestation_key_must_differ_from_the_build_token_key():
    seed = "a" * 64
    own_public_key = "5zTqbCtiV95yNV5HKqBaTEh+a0Y8Ap7TBt8vAbVja1g="
    with pytest.raises(ConfigError, match=r"^ZAJEL_ATTESTATION_SIGNING_KEY: must differ"):
        Config.from_env(
            {
                "ZAJEL_ATTESTATION_SIGNING_KEY": seed,
                "ZAJEL_BUILD_TOKEN_VERIFY_KEY": own_public_key,
            }
        )


def test_cluster_settings():
    config = Config.from_env(
        {
            "ZAJEL_CLUSTER_URL": "redis://user:p%40ss@redis.internal:6380/2",
            "ZAJEL_NODE_ID": "edge-1.eu_west",
            "ZAJEL_REUSE_PORT": "on",
            "ZAJEL_CLUSTER_LEASE_MS": "5000",
            "ZAJEL_CLUSTER_CALL_TIMEOUT_MS": "250",
            "ZAJEL_CLUSTER_LINGER_MS": "0",
        }
    )
    assert config.cluster_url == "redis://user:p%40ss@redis.internal:6380/2"
    assert (config.node_id, config.reuse_port) == ("edge-1.eu_west", True)
    assert (config.cluster_lease_ms, config.cluster_call_timeout_ms) == (5000, 250)
    assert config.cluster_linger_ms == 0
    # docs/cluster.md, "Settings": the URL may hold a password, so it is kept out of repr.
    assert "p%40ss" not in repr(config)


def test_a_bad_cluster_url_is_refused_without_repeating_it():
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"ZAJEL_CLUSTER_URL": "ftp://user:secret@host/0"})
    assert "secret" not in str(caught.value)


# -- every error at once, unknown variables (docs/operations.md, "Configuration") ----------


def test_every_invalid_setting_is_reported_in_one_error():
    secret = "not-a-seed-but-secret"
    with pytest.raises(ConfigError) as caught:
        Config.from_env(
            {
                "ZAJEL_ENV": "production",
                "ZAJEL_PORT": "http",
                "ZAJEL_WS_MESSAGE_RATE": "NaN",
                "ZAJEL_ATTESTATION_SIGNING_KEY": secret,
                "ZAJEL_TRUST_PROXY": "X-Forwarded-For",
            },
            log_format="yaml",
        )
    errors = caught.value.errors
    assert [error.split(":")[0] for error in errors] == [
        "ZAJEL_BOOTSTRAP_SIGNING_KEY",
        "ZAJEL_ATTESTATION_SIGNING_KEY",
        "ZAJEL_TRUSTED_PROXIES",
        "ZAJEL_PORT",
        "ZAJEL_LOG_FORMAT",
        "ZAJEL_WS_MESSAGE_RATE",
    ]
    assert (
        errors[0]
        == "ZAJEL_BOOTSTRAP_SIGNING_KEY: required in production; make one with `zajel keygen`"
    )
    assert str(caught.value) == "; ".join(errors)
    assert secret not in str(caught.value)


def test_an_unknown_zajel_variable_is_a_warning_naming_it_and_the_close_setting():
    environ = {
        "ZAJEL_WS_MAX_CONECTIONS": "5",
        "ZAJEL_FROBNICATE": "secret-value",
        "ZAJEL_PORT": "9000",
        "OTHER_PORT": "1",
    }
    config = Config.from_env(environ)
    assert config.port == 9000
    assert config.ws_max_connections == 10_000
    assert config.warnings == (
        "unknown setting ZAJEL_FROBNICATE is ignored",
        "unknown setting ZAJEL_WS_MAX_CONECTIONS is ignored; "
        "did you mean ZAJEL_WS_MAX_CONNECTIONS?",
    )
    assert "secret-value" not in repr(config)
    assert config == Config.from_env({"ZAJEL_PORT": "9000"})  # warnings are not settings
    assert Config.from_env({"ZAJEL_PORT": "9000"}).warnings == ()


# -- METRICS_BIND (docs/operations.md, "Metrics") -------------------------------------------


@pytest.mark.parametrize(
    ("value", "bind"),
    [
        ("", None),
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("localhost:9464", ("127.0.0.1", 9464)),
        ("[::1]:9464", ("::1", 9464)),
        ("10.1.2.3:0", ("10.1.2.3", 0)),
    ],
)
def test_metrics_bind_takes_one_address_and_port(value, bind):
    assert Config.from_env({"ZAJEL_METRICS_BIND": value}).metrics_bind == bind
    assert Config.from_env({}).metrics_bind is None


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("9464", "must be HOST:PORT"),
        ("127.0.0.1", "must be HOST:PORT"),
        ("127.0.0.1:", "must be HOST:PORT"),
        (":9464", "must be HOST:PORT"),
        ("127.0.0.1:65536", "must be HOST:PORT"),
        ("127.0.0.1:http", "must be HOST:PORT"),
        ("::1:9464", "must be HOST:PORT"),
        ("metrics.example.com:9464", "HOST must be an IP address or localhost"),
        ("0.0.0.0:9464", "0.0.0.0 listens on every interface"),
        ("[::]:9464", ":: listens on every interface"),
    ],
)
def test_a_bad_metrics_bind_is_a_clear_config_error(value, says):
    with pytest.raises(ConfigError) as caught:
        Config.from_env({"ZAJEL_METRICS_BIND": value})
    message = str(caught.value)
    assert message.startswith("ZAJEL_METRICS_BIND: ")
    assert says in message
    assert "\n" not in message


def test_metrics_bind_with_metrics_off_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^ZAJEL_METRICS_BIND: set while ZAJEL_METRICS=off"):
        Config.from_env({"ZAJEL_METRICS_BIND": "127.0.0.1:9464", "ZAJEL_METRICS": "off"})
