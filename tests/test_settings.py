"""Settings: read once from the environment; a bad value names its variable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from activator.config import ActivatorSettings
from token_api.config import TokenApiSettings
from waiting_core.settings import DEFAULT_DATABASE_URL, ConfigError, describe, load


def test_defaults_need_no_environment() -> None:
    settings = load(TokenApiSettings, {})

    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.port == 50051
    assert load(ActivatorSettings, {}).port == 50052
    assert load(ActivatorSettings, {}).group_id == "token-activate"


def test_values_are_parsed_to_their_types() -> None:
    settings = load(
        ActivatorSettings,
        {"ACTIVATOR_PORT": "6000", "SHUTDOWN_GRACE_SECONDS": "2.5", "TOPIC_PARTITIONS": "12"},
    )

    assert (settings.port, settings.shutdown_grace_seconds, settings.topic_partitions) == (
        6000,
        2.5,
        12,
    )


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TOKEN_API_PORT", "http"),
        ("TOKEN_API_PORT", "70000"),
        ("TOKEN_API_PORT", "-1"),
        ("DATABASE_URL", "mysql://db/x"),
        ("DATABASE_POOL_SIZE", "0"),
        ("TOPIC_PARTITIONS", "0"),
        ("SHUTDOWN_GRACE_SECONDS", "-1"),
        ("SHUTDOWN_GRACE_SECONDS", "soon"),
        ("LOG_LEVEL", "LOUD"),
        ("LOG_FORMAT", "xml"),
        ("EVENT_LOOP", "tokio"),
        ("OUTBOX_POLL_SECONDS", "0"),
        ("PRODUCER_LINGER_MS", "-5"),
    ],
)
def test_invalid_token_api_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load(TokenApiSettings, {variable: value})


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ACTIVATOR_PORT", "x"),
        ("FETCH_MAX_WAIT_MS", "0"),
        ("MAX_BATCH_RECORDS", "-1"),
        ("RETRY_MAX_SECONDS", "0"),
    ],
)
def test_invalid_activator_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load(ActivatorSettings, {variable: value})


@pytest.mark.parametrize(
    ("module", "settings_class"),
    [("token_api", TokenApiSettings), ("activator", ActivatorSettings)],
)
def test_help_lists_every_setting(module: str, settings_class: type) -> None:
    result = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, check=True
    )

    for line in describe(settings_class).splitlines():
        assert line.split()[0] in result.stdout


def test_a_bad_value_stops_the_service_at_start_naming_the_variable() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "token_api"],
        env={"TOKEN_API_PORT": "not-a-port", "PATH": ""},
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 2
    assert "TOKEN_API_PORT" in result.stderr


def test_json_logs_carry_the_request_id() -> None:
    import io
    import json
    import logging

    from waiting_core import logs

    stream = io.StringIO()
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        logs.configure("INFO", json_lines=True)
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        logs.REQUEST_ID.set("req-42")
        logging.getLogger("t").info("hello", extra={"token_id": "tok", "schedule_id": 7})
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])

    entry = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert entry["message"] == "hello"
    assert (entry["request_id"], entry["token_id"], entry["schedule_id"]) == ("req-42", "tok", 7)


@pytest.mark.parametrize(("event_loop", "expected"), [("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_services_run_on_the_chosen_event_loop(event_loop: str, expected: str) -> None:
    import asyncio

    from waiting_core.cli import run_loop

    seen: list[str] = []

    async def main() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__.split(".")[0])

    run_loop(main(), event_loop)

    assert seen == [expected]
    assert load(TokenApiSettings, {}).event_loop == "uvloop"
