import pytest

from recall.config import Settings, SettingsError


def test_defaults_follow_the_contract():
    s = Settings.from_env({})
    assert s.kafka_bootstrap == "localhost:9092"
    assert s.redis_url == "redis://localhost:6379/0"
    assert s.dim == 64 and s.metrics_port == 9108 and s.user_window == 50
    assert s.topics == {
        "clicks": "clicks", "items": "items", "requests": "recall-requests",
        "responses": "recall-responses", "dlq": "recall-dlq",
    }


def test_env_overrides_and_round_trip():
    s = Settings.from_env({"RECALL_DIM": "32", "RECALL_TOPIC_ITEMS": "things"})
    assert s.dim == 32 and s.topic_items == "things"
    assert Settings.from_env(s.environ()) == s


@pytest.mark.parametrize("var,value", [("RECALL_DIM", "abc"), ("RECALL_DIM", "0"),
                                       ("RECALL_LSH_FAMILY", "nope"),
                                       ("RECALL_USER_STATE_FORMAT", "binary")])
def test_bad_values_name_the_variable(var, value):
    with pytest.raises(SettingsError, match=var):
        Settings.from_env({var: value})


def test_every_user_state_format_setting_names_a_format_states_are_written_in():
    """RECALL_USER_STATE_FORMAT: packed (format 4) by default; columns and json for
    rolling upgrades from workers that read only the older formats."""
    from recall.userstate import FORMATS, UserState

    assert Settings().user_state_format == "packed"
    for name, version in (("packed", 4), ("columns", 3), ("json", 1)):
        s = Settings.from_env({"RECALL_USER_STATE_FORMAT": name})
        assert UserState(8).to_bytes(FORMATS[s.user_state_format])[0] == version


def test_the_metrics_endpoint_binds_the_configured_address():
    """RECALL_METRICS_HOST: loopback keeps /metrics off other interfaces (local stack);
    the default stays all interfaces, which a scraper in another container needs."""
    from devtools.localstack import free_port
    from stream.metrics import Metrics

    assert Settings.from_env({}).metrics_host == "0.0.0.0"
    s = Settings.from_env({"RECALL_METRICS_HOST": "127.0.0.1"})
    assert Metrics().serve(free_port(), s.metrics_host)[0] == "127.0.0.1"


@pytest.mark.parametrize("var,value", [("RECALL_USER_INTERESTS", "0"),
                                       ("RECALL_USER_INTERESTS", "2.5"),
                                       ("RECALL_USER_SESSION_GAP", "-1")])
def test_bad_interest_settings_name_the_variable(var, value):
    with pytest.raises(SettingsError, match=var):
        Settings.from_env({var: value})
    assert Settings.from_env({}).user_interests == 1  # default: one vector, as before


def test_every_kafka_client_gets_the_same_security_settings(monkeypatch):
    """One builder (recall.config.kafka_client_kwargs): the offline loader's producer too
    connects with TLS verification and SASL, as the worker does."""
    import asyncio
    import ssl

    import aiokafka
    import numpy as np

    from offline.load import publish_items
    from recall.config import kafka_client_kwargs

    s = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                           "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
                           "KAFKA_SASL_USERNAME": "u", "KAFKA_SASL_PASSWORD": "p"})
    want = kafka_client_kwargs(s)
    assert isinstance(want["ssl_context"], ssl.SSLContext)
    assert want["sasl_mechanism"] == "SCRAM-SHA-256" and want["sasl_plain_username"] == "u"
    assert kafka_client_kwargs(Settings.from_env({})) == {}
    seen = {}

    class Producer:
        def __init__(self, **kwargs):
            seen.update(kwargs)

        async def start(self):
            raise ConnectionError("no broker in a unit test")

        async def stop(self):
            pass

    monkeypatch.setattr(aiokafka, "AIOKafkaProducer", Producer)
    with pytest.raises(ConnectionError):
        asyncio.run(publish_items(s, ["a"], np.zeros((1, s.dim), np.float32), progress=False))
    assert isinstance(seen.get("ssl_context"), ssl.SSLContext)
    assert {k: seen[k] for k in want if k != "ssl_context"} == {
        k: v for k, v in want.items() if k != "ssl_context"}


def test_urls_in_messages_hide_the_password():
    from recall.config import redacted_url

    assert redacted_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert redacted_url("redis://user:pw@host/0") == "redis://user:***@host/0"
    assert redacted_url("redis://host:6379/0") == "redis://host:6379/0"
