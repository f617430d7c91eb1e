"""Settings: read from the environment and .env, embedded vs services mode, secret handling."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config.settings import ConfigurationError, load_settings

CLEAR = ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "PORT", "VAR_DIR", "APP_ENV")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in CLEAR:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VAR_DIR", str(tmp_path / "var"))
    return monkeypatch


def test_embedded_mode_makes_a_secret_once_and_keeps_it(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first = load_settings(tmp_path / "missing.env")
    second = load_settings(tmp_path / "missing.env")
    assert not first.services_mode
    assert first.embedded_workers
    assert len(first.secret_key) >= 40
    assert first.secret_key == second.secret_key
    assert (tmp_path / "var" / "secret_key").stat().st_mode & 0o077 == 0
    assert first.sqlalchemy_url == f"sqlite+aiosqlite:///{tmp_path / 'var' / 'app.db'}"


@pytest.mark.parametrize("secret", [None, "", "change-me", "secret"])
def test_services_mode_refuses_a_missing_or_well_known_secret(
    env: pytest.MonkeyPatch, tmp_path: Path, secret: str | None
) -> None:
    env.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1/app")
    env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    if secret is not None:
        env.setenv("SECRET_KEY", secret)
    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        load_settings(tmp_path / "missing.env")


def test_services_mode_with_a_secret(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("DATABASE_URL", "postgres://postgres@db:5432/app")
    env.setenv("REDIS_URL", "redis://cache:6379/0")
    env.setenv("SECRET_KEY", "x" * 48)
    settings = load_settings(tmp_path / "missing.env")
    assert settings.services_mode
    assert not settings.embedded_workers
    assert settings.sqlalchemy_url == "postgresql+asyncpg://postgres@db:5432/app"
    assert not (tmp_path / "var" / "secret_key").exists()


def test_dotenv_is_read_and_the_environment_wins(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("PORT=9001\nLOG_LEVEL=debug\nCORS_ORIGINS=https://a.example, https://b.example\n")
    env.setenv("LOG_LEVEL", "error")
    settings = load_settings(dotenv)
    assert settings.port == 9001
    assert settings.log_level == "error"
    assert settings.cors_origin_list == ["https://a.example", "https://b.example"]


def test_a_bad_value_is_a_clear_error(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("PORT", "eighty")
    with pytest.raises(ConfigurationError, match="port"):
        load_settings(tmp_path / "missing.env")


def test_every_setting_is_documented_in_the_readme() -> None:
    from app.config.settings import Settings

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [name.upper() for name in Settings.__struct_fields__ if f"`{name.upper()}`" not in readme]
    assert not missing, f"README.md's configuration table lacks {missing}"


def test_broker_url_needs_redis_and_a_known_scheme(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("SECRET_KEY", "x" * 48)
    env.setenv("BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/")
    with pytest.raises(ConfigurationError, match="REDIS_URL"):
        load_settings(tmp_path / "missing.env")
    env.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    assert load_settings(tmp_path / "missing.env").job_broker_url.startswith("amqp://")
    env.setenv("BROKER_URL", "kafka://somewhere")
    with pytest.raises(ConfigurationError, match="BROKER_URL"):
        load_settings(tmp_path / "missing.env")
