"""One settings declaration: what load_settings() reads, how invalid values fail, and the docs generated from it."""

from __future__ import annotations

import dataclasses
import json
import pickle
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from babychain import config, observability
from babychain.client._core import CLIENT_VARIABLES
from babychain.config import BY_ENV, VARIABLES, Settings, load_settings
from babychain.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "configuration.md"
DOC_COMMAND = "python -m babychain.config --markdown > docs/configuration.md"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """An environment without any declared variable, to set the ones a test needs."""
    for variable in VARIABLES:
        monkeypatch.delenv(variable.env, raising=False)
    yield monkeypatch


def test_every_field_is_declared_once_with_a_meaning() -> None:
    assert [v.field for v in VARIABLES] == [f.name for f in dataclasses.fields(Settings)]
    assert len(BY_ENV) == len(VARIABLES), "two fields share an environment variable"
    for variable in VARIABLES:
        assert variable.meaning.endswith("."), variable.env
        assert variable.section in config.SECTIONS, variable.env
        assert re.fullmatch(r"[A-Z][A-Z0-9_]+", variable.env), variable.env
    assert not {p.env for p in config.POWERTOOLS_VARIABLES} & set(BY_ENV), "Powertools reads its own variables"


def test_without_the_environment_every_setting_is_its_default(env: pytest.MonkeyPatch) -> None:
    assert load_settings() == Settings()
    env.setenv("BABYCHAIN_POLL_INTERVAL_SECONDS", "  ")  # empty counts as unset
    assert load_settings() == Settings()


def test_values_are_read_by_their_declared_type(env: pytest.MonkeyPatch) -> None:
    for name, value in {
        "BABYCHAIN_PROVIDER_MODE": " BYOK ",
        "BABYCHAIN_API_KEY": "bc_one_0001,\nbc_two_0002 ,",
        "BABYCHAIN_POLL_INTERVAL_SECONDS": "0.25",
        "BABYCHAIN_MAX_SUBMIT_ATTEMPTS": "7",
        "BABYCHAIN_MAX_OUTPUT_BYTES": "2e8",
        "BABYCHAIN_CALLBACK_SCHEDULE_SECONDS": "1, 2.5,60",
        "BABYCHAIN_DEV_ALLOW_LOOPBACK_HTTP": "Yes",
        "BABYCHAIN_PUBLIC_URL": "https://chains.example.com/",
        "BABYCHAIN_MODEL_ROUTES": '{"bytedance/seedream-4.5": ["byteplus", "babysea"]}',
        "BABYCHAIN_STORE": "supabase",
        "BABYCHAIN_ARTIFACT_URL_TTL_SECONDS": "900",
        "BFL_REGION": "eu",
        "BABYSEA_REGION": "jp",
        "BABYCHAIN_ENVIRONMENT": "staging",
        "BABYCHAIN_RETENTION_DAYS": "0",
    }.items():
        env.setenv(name, value)
    s = load_settings()
    assert s.provider_mode == "byok"
    assert s.api_keys == ("bc_one_0001", "bc_two_0002")
    assert s.poll_interval_seconds == 0.25
    assert s.max_submit_attempts == 7 and isinstance(s.max_submit_attempts, int)
    assert s.max_output_bytes == 200_000_000 and isinstance(s.max_output_bytes, int)
    assert s.callback_schedule_seconds == (1.0, 2.5, 60.0)
    assert s.allow_loopback_http is True
    assert s.public_base_url == "https://chains.example.com"
    assert s.model_routes == {"bytedance/seedream-4.5": ["byteplus", "babysea"]}
    assert s.store_kind == "supabase"
    assert s.artifact_url_ttl_seconds == 900
    # A region picks its base URL; an explicit base URL wins.
    assert s.bfl_api_base_url == "https://api.eu.bfl.ai/v1"
    assert s.babysea_api_base_url == "https://api.jp.babysea.ai"
    assert s.environment == "staging"
    assert s.retention_days == 0 and Settings().retention_days == 30  # 0 keeps everything; 30 days by default
    env.setenv("BFL_API_BASE_URL", "http://127.0.0.1:9999/v1")
    assert load_settings().bfl_api_base_url == "http://127.0.0.1:9999/v1"
    for word in ("0", "false", "NO", "off"):
        env.setenv("BABYCHAIN_DEV_ALLOW_LOOPBACK_HTTP", word)
        assert load_settings().allow_loopback_http is False


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("BABYCHAIN_POLL_INTERVAL_SECONDS", "soon", "must be a number"),
        ("BABYCHAIN_RUN_TIMEOUT_SECONDS", "nan", "must be a number"),
        ("BABYCHAIN_MAX_SUBMIT_ATTEMPTS", "2.5", "must be a whole number"),
        ("BABYCHAIN_MAX_SUBMIT_ATTEMPTS", "0", "must be at least 1"),
        # These two raised ValueError from services.py before (int() on the raw text).
        ("BABYCHAIN_ARTIFACT_URL_TTL_SECONDS", "1h", "must be a whole number"),
        ("BABYCHAIN_ARTIFACT_URL_TTL_SECONDS", "0", "must be at least 1"),
        ("BABYCHAIN_ARTIFACT_URL_TTL_SECONDS", "864000", "must be at most 604800"),
        # And this one from config.py (float() on each item).
        ("BABYCHAIN_CALLBACK_SCHEDULE_SECONDS", "5,later", "must be comma-separated numbers"),
        ("BABYCHAIN_RETENTION_DAYS", "-1", "must be at least 0"),
        ("BABYCHAIN_RETENTION_DAYS", "7.5", "must be a whole number"),
        ("BABYCHAIN_RETENTION_DAYS", "1000000", "must be at most 36500"),
        ("BABYCHAIN_DEV_ALLOW_LOOPBACK_HTTP", "maybe", "must be a boolean"),
        ("BABYCHAIN_PROVIDER_MODE", "cloud", "must be one of local, byok, babysea"),
        ("BABYCHAIN_STORE", "mysql", "must be one of postgres, supabase"),
        ("BFL_REGION", "mars", "must be one of global, eu, us"),
        ("BABYSEA_REGION", "ap", "must be one of us, eu, jp"),
        ("BABYCHAIN_MODEL_ROUTES", "{", "is not JSON"),
        ("BABYCHAIN_MODEL_ROUTES", '{"m": "byteplus"}', "must look like"),
    ],
)
def test_an_invalid_value_is_a_configuration_error_that_names_the_variable(
    env: pytest.MonkeyPatch, name: str, value: str, expected: str
) -> None:
    env.setenv(name, value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert str(raised.value).startswith(name), raised.value
    assert expected in str(raised.value)


def test_the_aws_entry_point_reports_a_bad_number_as_a_configuration_error(env: pytest.MonkeyPatch) -> None:
    # services.py used to read this one itself, and int("1h") raised ValueError.
    from babychain.services import from_environment

    env.setenv("BABYCHAIN_ARTIFACT_URL_TTL_SECONDS", "1h")
    with pytest.raises(ConfigurationError, match="BABYCHAIN_ARTIFACT_URL_TTL_SECONDS"):
        from_environment()


def test_one_setting_can_be_read_alone(env: pytest.MonkeyPatch) -> None:
    env.setenv("SENTRY_DSN", "http://public@127.0.0.1:9/1")
    env.setenv("BABYSEA_REGION", "EU")
    env.setenv("BABYCHAIN_POLL_INTERVAL_SECONDS", "not read here")
    assert config.read("sentry_dsn") == "http://public@127.0.0.1:9/1"
    assert config.read("environment") == "production"
    assert config.read("babysea_api_base_url") == "https://api.eu.babysea.ai"
    assert config.is_set("SENTRY_DSN") and not config.is_set("BABYCHAIN_SECRETS_ID")
    with pytest.raises(KeyError):
        config.raw("NOT_A_BABYCHAIN_VARIABLE")


def test_settings_stay_a_frozen_dataclass_that_pickles_and_hides_secrets_from_repr(env: pytest.MonkeyPatch) -> None:
    env.setenv("BFL_API_KEY", "bfl_live_5f0c1d2e3a4b5c6d7e8f")
    s = load_settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.poll_interval_seconds = 1.0  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(s)) == s
    assert dataclasses.replace(s, poll_interval_seconds=0.1).poll_interval_seconds == 0.1
    assert "bfl_live" not in repr(s)
    assert Settings().model_routes is not Settings().model_routes


def test_the_secret_list_is_the_declaration_and_the_deploy_guide_agrees() -> None:
    declared = {v.env for v in VARIABLES if v.secret}
    assert set(config.SECRET_VARIABLES) == declared
    assert observability.SECRET_VARIABLES == config.SECRET_VARIABLES
    guide = (ROOT / "docs" / "deploy.md").read_text()
    (secret_template,) = [
        json.loads(block)
        for block in re.findall(r"```json\n(.*?)```", guide, re.DOTALL)
        if "BABYCHAIN_CALLBACK_SECRET" in block
    ]
    assert set(secret_template) == declared


def test_configuration_doc_is_generated_from_the_declaration() -> None:
    assert DOC.exists(), f"docs/configuration.md is missing; run: {DOC_COMMAND}"
    assert DOC.read_text() == config.markdown(), f"docs/configuration.md is out of date; run: {DOC_COMMAND}"
    for variable in VARIABLES:
        assert f"`{variable.env}`" in DOC.read_text()


def test_the_docs_name_only_declared_variables() -> None:
    powertools = {p.env for p in config.POWERTOOLS_VARIABLES}
    prefixes = "BABYCHAIN|BFL|ARK|BABYSEA|SUPABASE|SENTRY|UPSTASH|POWERTOOLS"
    pattern = re.compile(rf"\b(?:{prefixes})_[A-Z0-9_]*[A-Z0-9]\b|\bDATABASE_URL\b")
    for path in (
        ROOT / "README.md",
        *(ROOT / "docs" / name for name in ("deploy.md", "api.md", "webhooks.md", "architecture.md")),
        DOC,
    ):
        named = set(pattern.findall(path.read_text()))
        assert named, path
        known = set(BY_ENV) | powertools | set(CLIENT_VARIABLES)  # the client's own: the deployment's URL
        assert named <= known, (path.name, sorted(named - known))


def test_what_serve_changes_is_documented(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from babychain.local.runner import LocalEngine

    engine = LocalEngine(tmp_path, workers=False)
    try:
        defaults = Settings()
        changed = {
            f.name
            for f in dataclasses.fields(Settings)
            if getattr(engine.settings, f.name) != getattr(defaults, f.name)
        }
    finally:
        engine._sock.close()
    # Set at start: the embedded Postgres and the local provider server.
    changed |= {"database_url", "local_provider_url"}
    undocumented = {name for name in changed if not config.BY_FIELD[name].serve}
    assert not undocumented, f"serve changes {sorted(undocumented)}: give their setting a serve note"


def test_a_callback_lease_must_outlast_the_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BABYCHAIN_CALLBACK_TIMEOUT_SECONDS", "30")
    with pytest.raises(ConfigurationError, match="BABYCHAIN_CALLBACK_STALE_SECONDS must exceed"):
        config.load_settings()
    monkeypatch.setenv("BABYCHAIN_CALLBACK_STALE_SECONDS", "35")
    assert config.load_settings().callback_stale_seconds == 35
