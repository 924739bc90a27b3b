"""Configuration and the secrets it guards."""

import pytest

from backuphub.security import ApiKeys, TokenRejected, issue_token, verify_token
from backuphub.settings import ConfigurationError, Settings, embedded_secrets


def test_several_api_keys_are_read_for_rotation():
    settings = Settings.from_env({"AOMEI_API_KEYS": "new-key, old-key"})

    assert settings.api_keys == ["new-key", "old-key"]


def test_the_contract_single_key_variable_is_understood():
    assert Settings.from_env({"AOMEI_API_KEY": "only"}).api_keys == ["only"]


def test_a_distributed_service_refuses_to_start_without_its_secrets():
    settings = Settings.from_env({})

    with pytest.raises(ConfigurationError) as error:
        settings.require("api_keys", "jwt_secret", "database_url")

    message = str(error.value)
    assert "AOMEI_API_KEYS" in message
    assert "BACKUPHUB_JWT_SECRET" in message
    assert "DATABASE_URL" in message


def test_embedded_secrets_are_made_once_and_kept_private(tmp_path):
    first = embedded_secrets(tmp_path)
    second = embedded_secrets(tmp_path)

    assert first.created and not second.created
    assert first.api_key == second.api_key
    assert (tmp_path / "api_key").stat().st_mode & 0o077 == 0


def test_api_keys_are_matched_exactly():
    keys = ApiKeys(["alpha", "beta"])

    assert keys.accepts("beta")
    assert not keys.accepts("alph")
    assert not keys.accepts("")
    assert not keys.accepts(None)


def test_tokens_are_verified_with_their_secret():
    secret = "s" * 32
    token = issue_token(secret, subject="ops", role="admin")

    assert verify_token(secret, token)["role"] == "admin"
    with pytest.raises(TokenRejected):
        verify_token("t" * 32, token)
    with pytest.raises(ValueError):
        issue_token(secret, subject="ops", role="root")
