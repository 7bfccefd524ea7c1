"""OciHook: credentials from an Airflow Connection, checked against the emulator."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.log import redact

from connector import ConfigError
from connector.airflow import OciHook, credentials_from_connection
from connector.emulator import EmulatorServer
from tests.airflow.support import lists_compartments, profile


class TestCredentialsFromConnection:
    """The extras the community OCI hooks use, in their spellings."""

    def test_key_content_signs_requests_the_service_accepts(self, emulator: EmulatorServer) -> None:
        """user, fingerprint, tenancy, region and key_content make an API-key signer."""
        credentials = credentials_from_connection("oci_test", profile(emulator))
        assert emulator.world.home_region == credentials.home_region
        assert lists_compartments(emulator, credentials) > 0

    @pytest.mark.parametrize(
        "shape",
        ["escaped_newlines", "key_file", "prefixed_extras", "user_as_login", "sdk_names"],
    )
    def test_other_spellings(self, emulator: EmulatorServer, tmp_path: Path, shape: str) -> None:
        """A one-line PEM with \\n escapes, a key file, extra__oci__ keys, the user as login,
        the OCI SDK's key_content (this hook's earlier name)."""
        extras: dict[str, Any] = profile(emulator)
        login = None
        if shape == "escaped_newlines":
            extras["private_key_content"] = extras["private_key_content"].replace("\n", "\\n")
        elif shape == "key_file":
            key = tmp_path / "key.pem"
            key.write_text(extras.pop("private_key_content"))
            extras["key_file"] = str(key)
        elif shape == "sdk_names":
            extras["key_content"] = extras.pop("private_key_content")
        elif shape == "prefixed_extras":
            extras = {f"extra__oci__{k}": v for k, v in extras.items()}
        else:
            login = extras.pop("user")
        credentials = credentials_from_connection("oci_test", extras, login=login)
        assert lists_compartments(emulator, credentials) > 0

    @pytest.mark.parametrize("missing", ["fingerprint", "tenancy", "region", "private_key_content"])
    def test_missing_field_is_named_and_no_secret_is_shown(
        self, emulator: EmulatorServer, missing: str
    ) -> None:
        """A missing field is a ConfigError naming it; the key never appears in it."""
        extras = profile(emulator)
        key = extras["private_key_content"]
        del extras[missing]
        with pytest.raises(ConfigError, match=missing) as caught:
            credentials_from_connection("oci_test", extras)
        assert "oci_test" in str(caught.value)
        assert key.splitlines()[1] not in str(caught.value)

    @pytest.mark.parametrize("auth", ["password", "security_token"])
    def test_unknown_auth_is_refused(self, auth: str) -> None:
        """auth names api_key or a principal; anything else (a mode that reads files of an OCI
        config profile included) is a ConfigError listing the modes a Connection can hold."""
        with pytest.raises(ConfigError, match="auth") as caught:
            credentials_from_connection("oci_test", {"auth": auth})
        assert "api_key (" in caught.value.reason
        assert "instance_principal (" in caught.value.reason
        assert "security_token (" not in caught.value.reason

    def test_key_and_pass_phrase_are_masked_in_logs(self, emulator: EmulatorServer) -> None:
        """Building credentials registers the key and pass phrase with Airflow's log masker."""
        extras = profile(emulator)
        credentials_from_connection("oci_test", extras)
        line = redact(f"key {extras['private_key_content']}")
        assert extras["private_key_content"].splitlines()[1] not in str(line)


def test_hook_reads_connection_from_environment(
    emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OciHook finds a Connection defined as an AIRFLOW_CONN_ JSON variable."""
    connection = {"conn_type": "oci", "extra": profile(emulator)}
    monkeypatch.setenv("AIRFLOW_CONN_OCI_FROM_ENV", json.dumps(connection))
    credentials = OciHook("oci_from_env").get_credentials()
    assert lists_compartments(emulator, credentials) > 0


def test_connection_type_is_registered_with_airflow() -> None:
    """Airflow's providers manager knows the `oci` connection type and its hook."""
    from airflow.sdk.providers_manager_runtime import ProvidersManagerTaskRuntime

    hooks = ProvidersManagerTaskRuntime().hooks
    assert "oci" in hooks
    info = hooks["oci"]
    assert info is not None
    assert "connector.airflow.hook.OciHook" == info.hook_class_name


def test_import_without_airflow_says_what_to_install() -> None:
    """Without Airflow 3, importing connector.airflow fails with the extra to install."""
    code = "import sys; sys.modules['airflow.sdk'] = None; import connector.airflow"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert 0 != result.returncode
    assert "pip install 'oci-images-connector[airflow]'" in result.stderr
