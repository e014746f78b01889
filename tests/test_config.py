"""Settings precedence (argument > environment > default), validation and DSN redaction.

Pure logic: `Settings.from_env` takes the environment as a mapping, so nothing here touches
``os.environ`` or the database (except the registry test, which only reads settings).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from hyrex_like import ConfigurationError, HyrexRegistry, Settings
from hyrex_like.config import find_data_dir, redact_dsn

ENV = {
    "HYREX_LIKE_DATABASE_URL": "postgresql://env@db/env",
    "HYREX_LIKE_SCHEMA": "from_env",
    "HYREX_LIKE_MAX_PAYLOAD_BYTES": "2048",
    "HYREX_LIKE_EMBEDDED_DIR": "/tmp/env-pgdata",
}


def test_defaults_apply_with_an_empty_environment():
    s = Settings.from_env({})
    assert s.database_url is None
    assert s.schema_name == "hyrex_like"
    assert s.allow_embedded is True
    assert s.auto_migrate is True
    assert s.max_payload_bytes == 1_048_576
    assert s.embedded_dir == find_data_dir(Path.cwd())


def test_environment_overrides_defaults():
    s = Settings.from_env(ENV)
    assert s.database_url == "postgresql://env@db/env"
    assert s.schema_name == "from_env"
    assert s.max_payload_bytes == 2048
    assert s.embedded_dir == Path("/tmp/env-pgdata")


def test_arguments_override_the_environment():
    s = Settings.from_env(ENV, database_url="postgresql://arg@db/arg", schema_name="from_arg")
    assert s.database_url == "postgresql://arg@db/arg"
    assert s.schema_name == "from_arg"
    assert s.max_payload_bytes == 2048  # not given as an argument: still from the environment


def test_none_arguments_fall_back_to_the_environment():
    s = Settings.from_env(ENV, database_url=None, schema_name=None)
    assert (s.database_url, s.schema_name) == ("postgresql://env@db/env", "from_env")


def test_empty_environment_values_count_as_unset():
    s = Settings.from_env({"HYREX_LIKE_DATABASE_URL": "", "HYREX_LIKE_SCHEMA": ""})
    assert (s.database_url, s.schema_name) == (None, "hyrex_like")


def test_registry_argument_overrides_environment(monkeypatch):
    monkeypatch.setenv("HYREX_LIKE_DATABASE_URL", "postgresql://env@db/env")
    monkeypatch.setenv("HYREX_LIKE_SCHEMA", "from_env")
    hy = HyrexRegistry("postgresql://arg@db/arg")
    assert hy.settings.database_url == "postgresql://arg@db/arg"
    assert hy.settings.schema_name == "from_env"
    hy2 = HyrexRegistry(schema="from_arg")
    assert hy2.settings.database_url == "postgresql://env@db/env"
    assert hy2.settings.schema_name == "from_arg"


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_no_embedded_variable_forbids_the_embedded_database(value):
    assert Settings.from_env({"HYREX_LIKE_NO_EMBEDDED": value}).allow_embedded is False


@pytest.mark.parametrize("value", ["", "0", "false", "no"])
def test_no_embedded_variable_false_values_keep_the_embedded_database(value):
    assert Settings.from_env({"HYREX_LIKE_NO_EMBEDDED": value}).allow_embedded is True


@pytest.mark.parametrize(
    "name", ["Upper", "has-dash", "1starts_with_digit", "a" * 51, "semi;colon", 'quo"te', ""]
)
def test_bad_schema_name_is_a_configuration_error(name):
    with pytest.raises(ConfigurationError, match="schema name"):
        Settings.from_env({"HYREX_LIKE_SCHEMA": "x"}, schema_name=name or " ")


def test_bad_schema_name_in_the_environment_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="schema name 'My Schema'"):
        Settings.from_env({"HYREX_LIKE_SCHEMA": "My Schema"})


def test_bad_number_in_the_environment_is_a_configuration_error():
    with pytest.raises(ConfigurationError, match="max_payload_bytes"):
        Settings.from_env({"HYREX_LIKE_MAX_PAYLOAD_BYTES": "lots"})


def test_registry_with_bad_schema_name_fails_at_construction():
    with pytest.raises(ConfigurationError, match="schema name"):
        HyrexRegistry("postgresql://u@h/db", schema="Robert'); DROP TABLE--")


def test_settings_are_immutable():
    s = Settings.from_env({})
    with pytest.raises(ValueError):
        s.schema_name = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("dsn", "secret"),
    [
        ("postgresql://alice:hunter2@db.example:5432/app", "hunter2"),
        ("postgres://alice:p%40ss%2Fword@db/app?sslmode=require", "p%40ss%2Fword"),
        ("postgresql://db/app?user=alice&password=hunter2&sslmode=require", "hunter2"),
        ("host=db user=alice password=hunter2 dbname=app", "hunter2"),
        ("host=db password = 'hunter 2' dbname=app", "hunter 2"),
        ("host=db PASSWORD=hunter2", "hunter2"),
        ("host=db password='it\\'s' dbname=app", "it\\'s"),
    ],
)
def test_redact_dsn_hides_the_password(dsn, secret):
    out = redact_dsn(dsn)
    assert secret not in out
    assert "***" in out


def test_redact_dsn_keeps_the_rest_of_a_url():
    out = redact_dsn("postgresql://alice:hunter2@db.example:5432/app?sslmode=require")
    assert out == "postgresql://alice:***@db.example:5432/app?sslmode=require"


def test_redact_dsn_keeps_the_rest_of_a_conninfo():
    assert redact_dsn("host=db user=alice password=hunter2 dbname=app") == (
        "host=db user=alice password=*** dbname=app"
    )


def test_redact_dsn_leaves_a_dsn_without_password_unchanged():
    assert redact_dsn("postgresql://alice@db/app") == "postgresql://alice@db/app"
    assert redact_dsn("host=db dbname=app") == "host=db dbname=app"


def test_redact_dsn_of_no_url_names_the_embedded_database():
    assert redact_dsn(None) == "<embedded>"
