"""Settings: TOML file, environment overrides, readable ConfigurationErrors that never show a password."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, SecretStr

from runbooks.core.errors import ConfigurationError
from runbooks.settings import DatabaseSettings, Settings, config_path, load_settings

FILE_PW = "file-pw-7Qx"
CLUSTER_PW = "cluster-pw-3Zr"
S3_SECRET = "s3-secret-9Kd"
TRADING_TOKEN = "trading-token-5Lm"
INFERENCE_TOKEN = "inference-token-8Wp"

TOML = f"""
[databases.trading_db]
dsn = "postgresql://app:{FILE_PW}@db.internal:5432/trading_db"

[databases.analytics]
dsn = "host=analytics.internal port=5433 dbname=analytics user=reader"
password = "analytics-pw-2Vb"

[cluster]
name = "prod"
dsn = "postgresql://postgres:{CLUSTER_PW}@db.internal:5432/postgres"

[repository]
url = "s3://backups/prod"
endpoint_url = "http://minio:9000"
secret_access_key = "{S3_SECRET}"
part_size_mb = 64

[backup.retention]
daily = 10
weekly = 5
monthly = 12

[trading_api]
base_url = "http://trading-api:8000"
token = "{TRADING_TOKEN}"

[inference_api]
base_url = "http://inference-api:8001"
token = "{INFERENCE_TOKEN}"
"""


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No RUNBOOKS_* variable from the outside and a working directory without any config file."""
    for name in [k for k in os.environ if k.upper().startswith("RUNBOOKS_")]:
        monkeypatch.delenv(name)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return workdir


def write_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str = TOML) -> Path:
    path = tmp_path / "inventory.toml"
    path.write_text(text)
    monkeypatch.setenv("RUNBOOKS_CONFIG", str(path))
    return path


def test_loads_the_file_named_by_runbooks_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_config(monkeypatch, tmp_path)
    assert config_path() == path

    settings = load_settings()

    assert sorted(settings.databases) == ["analytics", "trading_db"]
    assert settings.databases["trading_db"].dsn.get_secret_value() == (
        f"postgresql://app:{FILE_PW}@db.internal:5432/trading_db"
    )
    assert settings.cluster.name == "prod"
    assert settings.repository.url == "s3://backups/prod"
    assert settings.repository.endpoint_url == "http://minio:9000"
    assert settings.repository.part_size_mb == 64
    assert settings.repository.max_concurrency == 2  # default kept for what the file does not set
    assert (settings.backup.retention.daily, settings.backup.retention.weekly, settings.backup.retention.monthly) == (
        10, 5, 12)
    assert settings.trading_api is not None and settings.trading_api.base_url == "http://trading-api:8000"
    assert settings.trading_api.bearer() == TRADING_TOKEN


def test_runbooks_config_expands_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    # The seed cleanup root /tmp would hold this home, which is refused: the test is about the config path.
    monkeypatch.setenv("RUNBOOKS_CLEANUP", '{"allowed_roots": ["/var/log"], "rules": []}')
    (tmp_path / "inventory.toml").write_text(TOML)
    monkeypatch.setenv("RUNBOOKS_CONFIG", "~/inventory.toml")

    assert config_path() == tmp_path / "inventory.toml"
    assert load_settings().cluster.name == "prod"


def test_environment_overrides_nested_fields_and_keeps_the_rest(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    write_config(monkeypatch, tmp_path)
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__URL", "file:///srv/backups")
    monkeypatch.setenv("RUNBOOKS_DATABASES__TRADING_DB__PASSWORD", "env-pw-4Hn")
    monkeypatch.setenv("RUNBOOKS_BACKUP__RETENTION__DAILY", "3")
    monkeypatch.setenv("RUNBOOKS_TRADING_API__TOKEN", "env-token-6Ty")

    settings = load_settings()

    assert settings.repository.url == "file:///srv/backups"
    assert settings.repository.endpoint_url == "http://minio:9000"  # siblings from the file survive
    assert settings.repository.part_size_mb == 64
    db = settings.databases["trading_db"]
    assert db.dsn.get_secret_value() == f"postgresql://app:{FILE_PW}@db.internal:5432/trading_db"
    assert db.password is not None and db.password.get_secret_value() == "env-pw-4Hn"
    assert db.conninfo()["password"] == "env-pw-4Hn"
    assert db.conninfo()["host"] == "db.internal"
    assert "analytics" in settings.databases  # other dictionary entries are not dropped by the merge
    assert settings.backup.retention.daily == 3
    assert settings.backup.retention.weekly == 5
    assert settings.trading_api is not None
    assert settings.trading_api.base_url == "http://trading-api:8000"
    assert settings.trading_api.bearer() == "env-token-6Ty"


def test_keyword_arguments_beat_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_config(monkeypatch, tmp_path)
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__URL", "file:///from/env")

    settings = load_settings(repository={"url": "file:///from/kwargs"})

    assert settings.repository.url == "file:///from/kwargs"


def test_defaults_without_any_config_file() -> None:
    assert config_path() == Path("runbooks.toml")
    settings = load_settings()
    assert settings.databases == {}
    assert settings.repository.url == "file:///var/backups/runbooks"
    assert (settings.backup.retention.daily, settings.backup.retention.weekly, settings.backup.retention.monthly) == (
        7, 4, 6)
    assert settings.trading_api is None
    assert settings.secrets == []


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("ftp://x", "must start with file:/// or s3://"),
        ("s3://", "has no bucket"),
        ("file://relative", "must be file:///absolute/path"),
        ("file://remote-host/srv/backups", "must be file:///absolute/path"),
        ("/srv/backups", "must start with file:/// or s3://"),
    ],
)
def test_malformed_repository_url_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str,
                                           complaint: str) -> None:
    write_config(monkeypatch, tmp_path)
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__URL", url)

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    message = str(caught.value)
    assert "repository.url" in message
    assert complaint in message
    assert "HINT" in message
    assert caught.value.hint


def test_malformed_repository_url_from_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_config(monkeypatch, tmp_path, '[repository]\nurl = "ftp://x"\n')

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    assert "repository.url" in str(caught.value)
    assert str(path) in str(caught.value)
    assert "HINT" in str(caught.value)


@pytest.mark.parametrize("url", ["file:///srv/backups", "file://localhost/srv/backups", "s3://bucket",
                                 "s3://bucket/some/prefix"])
def test_valid_repository_urls(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__URL", url)
    assert load_settings().repository.url == url


def test_missing_config_file_named_by_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "runbooks.toml"
    monkeypatch.setenv("RUNBOOKS_CONFIG", str(missing))

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    assert str(missing) in str(caught.value)
    assert "RUNBOOKS_CONFIG" in str(caught.value)
    assert "HINT" in str(caught.value)


def test_runbooks_config_naming_a_directory_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RUNBOOKS_CONFIG", str(tmp_path))
    with pytest.raises(ConfigurationError, match="is a directory, not a TOML file") as caught:
        load_settings()
    assert "does not exist" not in str(caught.value)


@pytest.mark.parametrize(
    ("dsn", "password"),
    [
        ("postgresql://app:hunter2-secret@db:5432/trading_db?bogus_option=1", "hunter2-secret"),
        ("host=db password=hunter2-secret dbname", "hunter2-secret"),
        ("host=db password='hunter two secret", "two secret"),  # unterminated quote
        ("postgresql://app:hunter two secret@db/trading_db", "two secret"),  # unencoded spaces
    ],
)
def test_invalid_dsn_message_hides_the_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dsn: str,
                                                password: str) -> None:
    write_config(monkeypatch, tmp_path)
    monkeypatch.setenv("RUNBOOKS_DATABASES__TRADING_DB__DSN", dsn)

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    message = str(caught.value)
    assert "databases.trading_db.dsn" in message
    assert "not a valid PostgreSQL connection string" in message
    assert password not in message
    assert "hunter" not in message
    assert "***" in message
    assert caught.value.__cause__ is None and caught.value.__context__ is None  # no chain still holding the DSN


def test_invalid_nested_value_names_its_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_config(monkeypatch, tmp_path)
    monkeypatch.setenv("RUNBOOKS_BACKUP__RETENTION__WEEKLY", "-1")

    with pytest.raises(ConfigurationError, match=r"backup\.retention\.weekly"):
        load_settings()


def test_unknown_top_level_key_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_config(monkeypatch, tmp_path, TOML + '\n[repositroy]\nurl = "s3://typo/prefix"\n')
    with pytest.raises(ConfigurationError, match="repositroy"):
        load_settings()


@pytest.mark.parametrize("name", [".hidden", "a/b"])
def test_database_names_must_be_usable_as_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    write_config(monkeypatch, tmp_path, f'[databases."{name}"]\ndsn = "host=db dbname=x"\n')
    with pytest.raises(ConfigurationError, match="cannot be used as a repository path"):
        load_settings()


def test_database_or_raise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_config(monkeypatch, tmp_path)
    settings = load_settings()

    assert settings.database_or_raise("analytics") is settings.databases["analytics"]
    with pytest.raises(ConfigurationError) as caught:
        settings.database_or_raise("nope")

    message = str(caught.value)
    assert "'nope'" in message
    assert "configured: analytics, trading_db" in message
    assert "HINT" in message
    assert "[databases.nope]" in message
    assert str(path) in message


def test_database_or_raise_with_an_empty_inventory() -> None:
    with pytest.raises(ConfigurationError, match=r"configured: none"):
        load_settings().database_or_raise("trading_db")


def test_secrets_lists_every_known_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_config(monkeypatch, tmp_path)
    monkeypatch.setenv("RUNBOOKS_DATABASES__TRADING_DB__PASSWORD", "explicit-pw-1Aa")

    secrets = load_settings().secrets

    for expected in (FILE_PW, "explicit-pw-1Aa", "analytics-pw-2Vb", CLUSTER_PW, S3_SECRET, TRADING_TOKEN,
                     INFERENCE_TOKEN):
        assert expected in secrets
    assert "" not in secrets


def test_secrets_decodes_percent_encoded_dsn_passwords(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_config(monkeypatch, tmp_path, '[databases.db]\ndsn = "postgresql://u:p%40ss%2Fword@h/db"\n')
    assert load_settings().secrets == ["p@ss/word"]


def test_settings_repr_hides_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_config(monkeypatch, tmp_path)
    text = repr(load_settings()) + str(load_settings().model_dump())
    for secret in (FILE_PW, CLUSTER_PW, S3_SECRET, TRADING_TOKEN, INFERENCE_TOKEN, "analytics-pw-2Vb"):
        assert secret not in text


def test_conninfo_password_wins_over_the_dsn() -> None:
    db = DatabaseSettings(dsn=SecretStr("postgresql://app:dsn-pw@db:5433/trading_db?sslmode=require"),
                          password=SecretStr("explicit-pw"))
    assert db.conninfo() == {"user": "app", "password": "explicit-pw", "host": "db", "port": "5433",
                             "dbname": "trading_db", "sslmode": "require"}


def test_conninfo_keeps_the_dsn_password_when_none_is_given() -> None:
    db = DatabaseSettings(dsn=SecretStr("host=db user=app password='dsn pw' dbname=trading_db"))
    assert db.conninfo() == {"host": "db", "user": "app", "password": "dsn pw", "dbname": "trading_db"}
    assert "dsn pw" not in db.safe_dsn()
    assert "host=db" in db.safe_dsn()


def test_conninfo_adds_a_password_the_dsn_lacks() -> None:
    db = DatabaseSettings(dsn=SecretStr("host=db dbname=trading_db"), password=SecretStr("explicit-pw"))
    assert db.conninfo() == {"host": "db", "dbname": "trading_db", "password": "explicit-pw"}


def test_cluster_database_carries_dsn_and_password(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_config(monkeypatch, tmp_path)
    monkeypatch.setenv("RUNBOOKS_CLUSTER__PASSWORD", "cluster-explicit")
    db = load_settings().cluster.database()
    assert db is not None
    assert db.conninfo()["password"] == "cluster-explicit"
    assert db.conninfo()["dbname"] == "postgres"
    assert Settings().cluster.database() is not None  # same sources when constructed directly
    monkeypatch.delenv("RUNBOOKS_CONFIG")
    assert load_settings().cluster.database() is None


# --- config_path() fallbacks ---


def test_config_path_prefers_local_runbooks_toml(isolated: Path) -> None:
    (isolated / "runbooks.toml").write_text('[repository]\nurl = "file:///local"\n')
    (isolated / ".sandbox").mkdir()
    (isolated / ".sandbox" / "runbooks.toml").write_text('[repository]\nurl = "file:///sandbox"\n')

    assert config_path() == Path("runbooks.toml")
    assert load_settings().repository.url == "file:///local"


def test_config_path_falls_back_to_the_sandbox(isolated: Path) -> None:
    (isolated / ".sandbox").mkdir()
    (isolated / ".sandbox" / "runbooks.toml").write_text('[repository]\nurl = "file:///sandbox"\n')

    assert config_path() == Path(".sandbox") / "runbooks.toml"
    assert load_settings().repository.url == "file:///sandbox"


def test_config_path_without_any_file_is_the_local_default(isolated: Path) -> None:
    (isolated / ".sandbox").mkdir()  # a sandbox directory without a config does not count
    assert config_path() == Path("runbooks.toml")
    (isolated / "runbooks.toml").mkdir()  # nor does a directory named like the file
    assert config_path() == Path("runbooks.toml")


def test_runbooks_config_beats_local_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, isolated: Path) -> None:
    (isolated / "runbooks.toml").write_text('[repository]\nurl = "file:///local"\n')
    path = write_config(monkeypatch, tmp_path)
    assert config_path() == path
    assert load_settings().repository.url == "s3://backups/prod"


# --- issue 7: bad configuration is one readable line that names its real source ---


def test_invalid_toml_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_config(monkeypatch, tmp_path, '[repository\nurl = "s3://b/p"\n')

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    message = str(caught.value)
    assert str(path) in message and "not valid TOML" in message and "line 1" in message
    assert caught.value.hint and "\n" not in message


@pytest.mark.parametrize(
    ("dsn", "port"),
    [
        ("postgresql://app:pw@db.internal:abc/trading_db", "abc"),
        ("host=db.internal port=99999 dbname=trading_db", "99999"),
        ("postgresql://app@h1:5432,h2:x/trading_db", "x"),
        ("postgresql:///trading_db?port=0", "0"),
    ],
)
def test_malformed_dsn_port_is_refused_at_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dsn: str,
                                               port: str) -> None:
    write_config(monkeypatch, tmp_path, f'[databases.trading_db]\ndsn = "{dsn}"\n')

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    message = str(caught.value)
    assert "databases.trading_db.dsn" in message and f"port {port!r}" in message
    assert "pw" not in message.replace("password", "")


@pytest.mark.parametrize("dsn", ["postgresql://app@h1:5432,h2:5433/db", "host=h1,h2 port=5432,", "host=db"])
def test_valid_dsn_ports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dsn: str) -> None:
    write_config(monkeypatch, tmp_path, f'[databases.db]\ndsn = "{dsn}"\n')
    assert load_settings().databases["db"].dsn.get_secret_value() == dsn


def test_malformed_cluster_dsn_is_refused_at_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_config(monkeypatch, tmp_path, '[cluster]\ndsn = "postgresql://postgres:pw@db:54x2/postgres"\n')
    with pytest.raises(ConfigurationError, match=r"cluster\.dsn \(in .*\): .*port '54x2'"):
        load_settings()


@pytest.mark.parametrize(("section", "field"), [("trading_api", "base_url"), ("repository", "endpoint_url"),
                                                ("prefect", "api_url")])
def test_malformed_url_port_is_refused_at_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, section: str,
                                               field: str) -> None:
    write_config(monkeypatch, tmp_path, f'[{section}]\n{field} = "http://host:80a0"\n')
    with pytest.raises(ConfigurationError, match=rf"{section}\.{field} \(in .*\): .*port"):
        load_settings()


def test_error_from_the_environment_names_the_variable_not_the_file(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    path = write_config(monkeypatch, tmp_path)
    monkeypatch.setenv("RUNBOOKS_BACKUP__RETENTION__WEEKLY", "-1")

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    message = str(caught.value)
    assert "environment variable RUNBOOKS_BACKUP__RETENTION__WEEKLY" in message
    assert str(path) not in message
    assert "environment" in (caught.value.hint or "")


def test_error_from_the_file_names_the_file_not_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    path = write_config(monkeypatch, tmp_path, TOML + "\n[backup]\ncompression_level = 99\n")
    monkeypatch.setenv("RUNBOOKS_BACKUP__RETENTION__WEEKLY", "2")  # valid: not blamed

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    message = str(caught.value)
    assert f"backup.compression_level (in {path})" in message
    assert "environment variable" not in message


def test_validation_messages_have_no_pydantic_prefixes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_config(monkeypatch, tmp_path)
    monkeypatch.setenv("RUNBOOKS_REPOSITORY__URL", "ftp://x")

    message = str(pytest.raises(ConfigurationError, load_settings).value)

    assert "Value error" not in message and ": :" not in message
    assert "repository.url (environment variable RUNBOOKS_REPOSITORY__URL): repository URL 'ftp://x'" in message


@pytest.mark.parametrize("name", ["../../etc", "..", ".hidden", "a/b", "a\\b", "", "bad\x1bname"])
def test_validate_name_refuses_names_that_are_not_one_path_segment(name: str) -> None:
    from runbooks.settings import validate_name

    with pytest.raises(ConfigurationError) as caught:
        validate_name(name)
    assert caught.value.hint and "\x1b" not in str(caught.value)


@pytest.mark.parametrize("name", ["trading_db", "Trading-DB.2", "main"])
def test_validate_name_accepts_plain_names(name: str) -> None:
    from runbooks.settings import validate_name

    assert validate_name(name) == name


def test_cluster_name_dot_dot_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_config(monkeypatch, tmp_path, '[cluster]\nname = ".."\n')
    with pytest.raises(ConfigurationError, match=r"cluster\.name"):
        load_settings()


def test_env_variable_names_what_the_settings_accept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from runbooks.settings import env_variable

    write_config(monkeypatch, tmp_path)
    monkeypatch.setenv(env_variable("cluster", "password"), "cluster-from-env")
    monkeypatch.setenv(env_variable("databases", "trading_db", "password"), "db-from-env")

    settings = load_settings()

    assert env_variable("cluster", "password") == "RUNBOOKS_CLUSTER__PASSWORD"
    assert settings.cluster.password is not None
    assert settings.cluster.password.get_secret_value() == "cluster-from-env"
    db = settings.databases["trading_db"].password
    assert db is not None and db.get_secret_value() == "db-from-env"


def test_unknown_database_hint_is_a_toml_key_without_raw_control_characters() -> None:
    settings = load_settings()
    with pytest.raises(ConfigurationError) as caught:
        settings.database_or_raise("evil\x1b]0;x\x07 db")
    assert "\x1b" not in str(caught.value)
    assert '[databases."evil\\u001b]0;x\\u0007 db"]' in str(caught.value)
    with pytest.raises(ConfigurationError, match=r"add \[databases\.trading_db\]"):
        settings.database_or_raise("trading_db")


def test_weekly_report_paths_default_to_seed_003s_endpoints_and_are_checked(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path: Path) -> None:
    report = load_settings().weekly_report
    assert (report.pnl_path, report.circuit_breakers_path, report.risk_health_path, report.risk_events_path) == (
        "/api/v1/trading/pnl", "/api/v1/risk/circuit-breakers", "/api/v1/risk/health", "/api/v1/risk/events")
    assert report.model_ids == []  # the [models] model_id
    write_config(monkeypatch, tmp_path, TOML + '\n[weekly_report]\npnl_path = "/pnl"\nmodel_ids = ["a", "b_2"]\n')
    loaded = load_settings().weekly_report
    assert (loaded.pnl_path, loaded.model_ids) == ("/pnl", ["a", "b_2"])
    for bad in ('pnl_path = "http://elsewhere/pnl"', 'model_ids = ["../x"]', 'risk_path = "/typo"'):
        write_config(monkeypatch, tmp_path, TOML + f"\n[weekly_report]\n{bad}\n")
        with pytest.raises(ConfigurationError, match="weekly_report"):
            load_settings()


def _models_under(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[type[BaseModel]]:
    """Every pydantic model a settings file can reach from ``model`` (fields, lists, dicts, unions)."""
    import typing

    def walk(annotation: object) -> None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in seen:
                seen.add(annotation)
                for info in annotation.model_fields.values():
                    walk(info.annotation)
        for arg in typing.get_args(annotation):
            walk(arg)

    walk(model)
    return seen


def test_every_settings_section_refuses_unknown_keys() -> None:
    """A misspelt key anywhere would silently keep a default (``[backup.retenton]``: the default retention deletes
    backups the operator meant to keep; a misspelt ``sse``: no encryption)."""
    lenient = sorted(m.__name__ for m in _models_under(Settings, set()) if m.model_config.get("extra") != "forbid")
    assert lenient == []


@pytest.mark.parametrize(("section", "typo", "named"), [
    ("[backup.retenton]\ndaily = 30", "backup.retenton", "retention"),
    ("[backup.retention]\ndialy = 30", "backup.retention.dialy", "daily"),
    ('[repository]\nurl = "s3://b/p"\nsse_algorithm = "AES256"', "repository.sse_algorithm", None),
    ('[databases.trading_db]\ndsn = "host=db dbname=x"\npasword = "x"', "databases.trading_db.pasword",
     "password"),
    ('[cluster]\nconfig_file = ["/etc/x.conf"]', "cluster.config_file", "config_files"),
    ('[restore]\nworkdir = "/srv/work"', "restore.workdir", "work_dir"),
    ('[trading_api]\nbase_url = "http://api:8000"\ntimeout = 5', "trading_api.timeout", None),
    ('[prefect]\napi = "http://prefect:4200/api"', "prefect.api", None),
    ('[databases.trading_db]\ndsn = "host=db dbname=x"\n[[databases.trading_db.checks]]\nname = "x"\n'
     'sql = "select 1"\nexpected = 0', "checks.'0'.expected", "expect"),
])
def test_an_unknown_key_in_the_file_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       section: str, typo: str, named: str | None) -> None:
    base = '[databases.trading_db]\ndsn = "host=db dbname=x"\n' if "databases.trading_db" not in section else ""
    path = write_config(monkeypatch, tmp_path, base + section + "\n")

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    message = str(caught.value)
    assert typo in message and str(path) in message and "unknown name" in message
    if named:
        assert f"did you mean {named!r}" in message


@pytest.mark.parametrize(("variable", "suggestion"), [
    ("RUNBOOKS_REPOSITORY__URLL", "RUNBOOKS_REPOSITORY__URL"),
    ("RUNBOOKS_BACKUP__RETENTON__DAILY", "RUNBOOKS_BACKUP__RETENTION"),
    ("RUNBOOKS_REPOSITORY__SSE_TYPE", None),
    ("RUNBOOKS_DATABASES__TRADING_DB__PASWORD", "RUNBOOKS_DATABASES__TRADING_DB__PASSWORD"),
    ("RUNBOOKS_NOTIFICATIONS__SEVERITIES__P1__BLOKS", "RUNBOOKS_NOTIFICATIONS__SEVERITIES__P1__BLOCKS"),
    ("RUNBOOKS_STATEDIR", "RUNBOOKS_STATE_DIR"),
    ("runbooks_repository__urll", "RUNBOOKS_REPOSITORY__URL"),
])
def test_an_unknown_environment_variable_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                            variable: str, suggestion: str | None) -> None:
    write_config(monkeypatch, tmp_path)
    monkeypatch.setenv(variable, "s3://typo/prefix")

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    message = str(caught.value)
    assert variable in message and "environment" in message and "HINT" in message
    if suggestion:
        assert f"did you mean {suggestion}?" in message


def test_known_environment_variables_and_process_variables_are_accepted(monkeypatch: pytest.MonkeyPatch,
                                                                        tmp_path: Path) -> None:
    write_config(monkeypatch, tmp_path)
    for name, value in [("RUNBOOKS_DATABASES__NEW_DB__DSN", "host=db dbname=new_db"),
                        ("RUNBOOKS_NOTIFICATIONS__SEVERITIES__P1__BLOCKS", '["slack-webhook/oncall"]'),
                        ("RUNBOOKS_BACKUP__RETENTION__DAILY", "3"), ("RUNBOOKS_PG_BINDIR", "/usr/bin"),
                        ("RUNBOOKS_REQUIRE_DOCKER", "1"), ("RUNBOOKS_HOME", "/srv/runbooks")]:
        monkeypatch.setenv(name, value)

    settings = load_settings()

    assert "new_db" in settings.databases and settings.backup.retention.daily == 3


@pytest.mark.parametrize("variable", ["RUNBOOKS_STATE_DIR", "RUNBOOKS_RESTORE__WORK_DIR", "RUNBOOKS_DRILL__WORK_DIR",
                                      "RUNBOOKS_PITR__WORK_DIR"])
def test_a_relative_path_setting_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str) -> None:
    write_config(monkeypatch, tmp_path)
    monkeypatch.setenv(variable, "state/runbooks")

    with pytest.raises(ConfigurationError, match="must be absolute") as caught:
        load_settings()

    assert variable in str(caught.value)


def test_a_home_relative_state_dir_is_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write_config(monkeypatch, tmp_path)
    monkeypatch.setenv("RUNBOOKS_STATE_DIR", "~/runbooks-state")

    assert load_settings().state_dir == Path.home() / "runbooks-state"


def test_the_cli_refuses_an_unknown_variable_in_one_line_before_doing_anything(tmp_path: Path) -> None:
    import subprocess
    import sys

    repository = tmp_path / "repository"
    config = tmp_path / "inventory.toml"
    config.write_text(f'[databases.trading_db]\ndsn = "host=127.0.0.1 port=1 dbname=x"\n'
                      f'[repository]\nurl = "{repository.as_uri()}"\n')
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("RUNBOOKS_")}
    env |= {"RUNBOOKS_CONFIG": str(config), "RUNBOOKS_REPOSITORY__URLL": "s3://elsewhere/x",
            "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}

    proc = subprocess.run([sys.executable, "-m", "runbooks.cli", "run", "backup"], env=env, capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)

    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert "\n" not in line and "Traceback" not in line, proc.stderr
    assert "RUNBOOKS_REPOSITORY__URLL" in line and "did you mean RUNBOOKS_REPOSITORY__URL?" in line
    assert not repository.exists()


@pytest.mark.parametrize(("text", "named"), [
    ('[markets.usd_cop]\nopen = "08:00"\nclose = "13:00"\n[Markets.crypto]\nalways_open = true\n',
     "[markets] and [Markets] differ only by case"),
    ("[Cleanup]\nmax_files = 10\n", "key 'Cleanup' must be written 'cleanup'"),
    ("[backup.retention]\nDaily = 30\n", "key 'backup.retention.Daily' must be written 'daily'"),
    ('[[cleanup.rules]]\nkind = "files"\nname = "x"\nroots = ["/var/log/x"]\nMatch_All = true\n',
     "key 'cleanup.rules.0.Match_All' must be written 'match_all'"),
])
def test_a_key_spelt_with_capitals_is_refused_not_merged(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                         text: str, named: str) -> None:
    """pydantic-settings reads the file case-insensitively: ``[Markets.crypto]`` beside ``[markets.usd_cop]`` kept
    one table and silently dropped the other (and a gating market with it)."""
    write_config(monkeypatch, tmp_path, text)
    with pytest.raises(ConfigurationError, match=re.escape(named)):
        load_settings()


@pytest.mark.parametrize(("variable", "value"), [("RUNBOOKS_CLEANUP__ALLOWED_ROOTS", '["/var/tmp/x/\udcff"]'),
                                                 ("RUNBOOKS_STATE_DIR", "/var/tmp/\udcff")])
def test_a_path_of_bytes_that_are_not_utf8_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                       variable: str, value: str) -> None:
    write_config(monkeypatch, tmp_path)
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match="not valid UTF-8") as caught:
        load_settings()
    assert variable in str(caught.value)


def test_a_rule_from_the_environment_is_blamed_on_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """The location of an error in a rule carries the rule's kind (``rules.0.files.bogus``), which is no key of
    the JSON: the variable that holds it is still named, not the file."""
    write_config(monkeypatch, tmp_path)
    monkeypatch.setenv("RUNBOOKS_CLEANUP__RULES", json.dumps([{"kind": "files", "name": "x", "roots": ["/var/log/x"],
                                                                "match_all": True, "bogus": 1}]))
    with pytest.raises(ConfigurationError, match=r"bogus \(environment variable RUNBOOKS_CLEANUP__RULES\)"):
        load_settings()


def test_a_default_in_conflict_is_not_blamed_on_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write_config(monkeypatch, tmp_path, TOML)
    monkeypatch.setenv("RUNBOOKS_BACKUP__RETENTION__DAILY", "3")  # a known variable, so the env check passes
    monkeypatch.setenv("XDG_STATE_HOME", "/var/tmp/runbooks-xdg")  # the default state dir, inside a seed root
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert f"a default, not set in {path}" in str(caught.value), str(caught.value)


def test_an_item_of_a_list_cannot_be_set_alone_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    write_config(monkeypatch, tmp_path)
    monkeypatch.setenv("RUNBOOKS_FRESHNESS__TABLES__0__KILL_AFTER", "1h")
    with pytest.raises(ConfigurationError, match=r"is a list: set RUNBOOKS_FRESHNESS__TABLES to the whole list"):
        load_settings()


def test_runbooks_config_naming_a_device_is_refused_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNBOOKS_CONFIG", "/dev/null")
    with pytest.raises(ConfigurationError, match="is not a regular file"):
        load_settings()
