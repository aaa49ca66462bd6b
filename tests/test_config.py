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
                                       ("RECALL_LSH_FAMILY", "nope")])
def test_bad_values_name_the_variable(var, value):
    with pytest.raises(SettingsError, match=var):
        Settings.from_env({var: value})


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
