"""Node timing settings: validated up front with a clear ConfigError."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

import flowpro
from flowpro._runtime.node import NodeConfig, node_name


def test_the_defaults_suit_production():
    config = NodeConfig()

    assert config.poll_interval is None
    assert config.heartbeat_interval == 1.0
    assert config.rescue_after == 10.0
    assert config.leader_ttl == 5.0
    assert config.retention == timedelta(days=7)
    assert config.shutdown_grace == 15.0


def test_retention_takes_a_timedelta_or_seconds():
    assert NodeConfig(retention=3600).retention == timedelta(hours=1)
    assert NodeConfig(retention=timedelta(days=1)).retention == timedelta(days=1)


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        (dict(poll_interval=0), "poll_interval"),
        (dict(heartbeat_interval=-1), "heartbeat_interval"),
        (dict(rescue_after=0), "rescue_after"),
        (dict(leader_ttl=-5), "leader_ttl"),
        (dict(stage_interval=0), "stage_interval"),
        (dict(shutdown_grace=-1), "shutdown_grace"),
        (dict(idle_check_interval=0), "idle_check_interval"),
        (dict(heartbeat_interval=float("inf")), "heartbeat_interval"),
        (dict(rescue_interval=float("nan")), "rescue_interval"),
        (dict(retention=timedelta(days=-1)), "retention"),
        (dict(retention=0), "retention"),
        (dict(rescue_after=0.5, heartbeat_interval=1.0), "rescue_after"),
        (dict(leader_ttl=1.0, heartbeat_interval=1.0), "leader_ttl"),
        (dict(heartbeat_intervall=1.0), "heartbeat_intervall"),
    ],
)
def test_bad_settings_are_refused_naming_the_setting(settings, problem):
    with pytest.raises(ValidationError, match=problem):
        NodeConfig(**settings)
    with pytest.raises(flowpro.ConfigError, match=problem):
        flowpro.FlowPro("sqlite:///unused.db", **settings)


def test_the_config_is_frozen():
    config = NodeConfig()

    with pytest.raises(ValidationError):
        config.rescue_after = 1.0  # type: ignore[misc]


def test_flowpro_merges_keyword_settings_over_a_config():
    base = NodeConfig(rescue_after=30.0, heartbeat_interval=2.0)

    app = flowpro.FlowPro("sqlite:///unused.db", config=base, heartbeat_interval=3.0)
    from_dict = flowpro.FlowPro("sqlite:///unused.db", config={"shutdown_grace": 1})

    assert app.config.rescue_after == 30.0
    assert app.config.heartbeat_interval == 3.0
    assert from_dict.config.shutdown_grace == 1.0


def test_flowpro_opens_no_database_until_it_is_used(tmp_path):
    url = f"sqlite:///{tmp_path}/never.db"

    app = flowpro.FlowPro(url)

    assert app.url == url
    assert not (tmp_path / "never.db").exists()


def test_node_names_are_unique_per_call_and_carry_the_prefix():
    names = {node_name("web") for _ in range(100)}

    assert len(names) == 100
    assert all(n.startswith("web.") for n in names)
