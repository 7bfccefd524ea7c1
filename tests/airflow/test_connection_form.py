"""The ``oci`` Connection as Airflow itself shows and tests it: the form its providers manager
builds from our provider metadata, what its REST API returns, and the form's Test button."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from connector import _airflow_provider
from connector.airflow import OciHook, credentials_from_connection, hook
from connector.emulator import EmulatorServer
from tests.airflow.support import form_fields, lists_compartments, profile

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def api() -> Iterator[TestClient]:
    """Airflow's API server (its FastAPI app, as ``airflow api-server`` serves it): the public
    REST API and the UI's own endpoints."""
    from airflow.api_fastapi.app import create_app

    with TestClient(create_app(apps="all")) as client:
        yield client


class TestForm:
    """What the providers manager reads through the ``apache_airflow_provider`` entry point."""

    def test_connection_type_lists_its_form_fields(self) -> None:
        """The `oci` type comes with its hook, the form's extras (the secret ones masked), and
        Login and Password relabelled; the fields nobody uses hidden."""
        from airflow.providers_manager import ProvidersManager

        manager = ProvidersManager()
        fields = form_fields()
        assert {
            "auth_type",
            "tenancy",
            "fingerprint",
            "region",
            "private_key_content",
            "key_file",
            "config_file",
            "profile",
        } == set(fields)
        assert {"private_key_content"} == {n for n, w in fields.items() if w.is_sensitive}
        assert "connector.airflow.hook.OciHook" == fields["tenancy"].hook_class_name
        behaviour = manager.field_behaviours["oci"]
        assert {"host", "schema", "port"} == set(behaviour["hidden_fields"])
        assert "User OCID" == behaviour["relabeling"]["login"]
        assert "passphrase" in behaviour["relabeling"]["password"].lower()
        assert [*hook.AUTH_TYPES, None] == fields["auth_type"].field["schema"]["enum"]

    def test_metadata_matches_the_airflow_3_provider_schema(self) -> None:
        """The connection type validates against Airflow's provider.yaml schema (conn-fields,
        ui-field-behaviour), which the providers manager would otherwise skip with a warning."""
        import airflow
        import jsonschema

        schema = json.loads(
            (Path(airflow.__file__).parent / "provider.yaml.schema.json").read_text()
        )
        info = _airflow_provider.get_provider_info()
        jsonschema.validate(info["connection-types"], schema["properties"]["connection-types"])

    def test_connection_from_the_form_fields_alone_signs(self, emulator: EmulatorServer) -> None:
        """Login, and the form's own extras filled from the emulator's profile, sign requests
        the service accepts (the DAG run through one is in test_dags)."""
        values = profile(emulator)
        extras = {name: values[name] for name in form_fields() if name in values}
        assert {"tenancy", "fingerprint", "region", "private_key_content"} == set(extras)
        credentials = credentials_from_connection("oci_form", extras, login=values["user"])
        assert lists_compartments(emulator, credentials) > 0

    def test_config_file_mode_reads_the_profile(self, emulator: EmulatorServer) -> None:
        """auth_type config_file with config_file and profile signs as that profile."""
        assert emulator.config_file is not None
        extras = {"auth_type": "config_file", "config_file": str(emulator.config_file)}
        credentials = credentials_from_connection("oci_file", extras | {"profile": "DEFAULT"})
        assert lists_compartments(emulator, credentials) > 0
        with pytest.raises(Exception, match="'profile'") as caught:
            credentials_from_connection("oci_file", extras | {"profile": "NOPE"})
        assert "NOPE" in str(caught.value)


class TestUi:
    """What Airflow 3's UI builds the Connection form from (GET /ui/connections/hook_meta)."""

    def test_form_shows_the_fields_with_the_key_masked(self, api: TestClient) -> None:
        """The `oci` type's extra fields, under the names stored in the extras, the key a
        password field; Login and Password relabelled, host, schema and port hidden."""
        response = api.get("/ui/connections/hook_meta")
        assert 200 == response.status_code
        (oci,) = [h for h in response.json() if h["connection_type"] == "oci"]
        fields = oci["extra_fields"]
        assert set(_airflow_provider.CONN_FIELDS) == set(fields)
        assert "password" == fields["private_key_content"]["schema"]["format"]
        assert [] == [
            n for n, f in fields.items() if n != "private_key_content" and "format" in f["schema"]
        ]
        standard = oci["standard_fields"]
        assert "User OCID" == standard["login"]["title"]
        assert {"host", "port", "url_schema"} <= {
            n for n, f in standard.items() if f and f["hidden"]
        }


class TestRestApi:
    """GET /api/v2/connections/<id> (Airflow's REST API, what its UI reads)."""

    def test_key_and_passphrase_are_redacted(
        self, api: TestClient, emulator: EmulatorServer
    ) -> None:
        """A Connection made with the form's names returns no part of the key or passphrase."""
        values = profile(emulator)
        key = values.pop("private_key_content")
        user = values.pop("user")
        extras = values | {"private_key_content": key, "passphrase": PASSPHRASE}
        body = {
            "connection_id": "oci_redacted",
            "conn_type": "oci",
            "login": user,
            "password": PASSPHRASE,
            "extra": json.dumps(extras),
        }
        assert 201 == api.post("/api/v2/connections", json=body).status_code

        for path in ("/api/v2/connections/oci_redacted", "/api/v2/connections"):
            response = api.get(path)
            assert 200 == response.status_code
            text = response.text
            assert values["tenancy"] in text  # the connection is there
            secrets = [PASSPHRASE, *(line for line in key.splitlines() if "-----" not in line)]
            assert [] == [s for s in secrets if s in text or json.dumps(s)[1:-1] in text]
        shown = json.loads(api.get("/api/v2/connections/oci_redacted").json()["extra"])
        assert "***" == shown["private_key_content"]
        assert "***" == shown["passphrase"]

    def test_older_names_are_read_with_a_warning(
        self, emulator: EmulatorServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """key_content, which Airflow shows in clear, still signs; the warning names the field
        to rename it to, never its value."""
        extras = profile(emulator)
        key = extras.pop("private_key_content")
        with caplog.at_level(logging.WARNING, logger=hook.__name__):
            credentials = credentials_from_connection("oci_old", extras | {"key_content": key})
        assert lists_compartments(emulator, credentials) > 0
        assert "connection.secret_shown" in caplog.text
        assert "rename the extra 'key_content' to 'private_key_content'" in caplog.text
        assert key.splitlines()[1] not in caplog.text


class TestTestConnection:
    """OciHook.test_connection: the form's Test button."""

    def test_accepted_key_succeeds(
        self, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """One signed ListRegionSubscriptions: the tenancy's regions are named."""
        extras = profile(emulator)
        connection = {"conn_type": "oci", "login": extras.pop("user"), "extra": extras}
        monkeypatch.setenv("AIRFLOW_CONN_OCI_TESTED", json.dumps(connection))
        before = emulator.stats()["requests"]
        ok, message = OciHook("oci_tested", endpoint=emulator.endpoint_template).test_connection()
        assert (True, "signed in") == (ok, message.split(";")[0])
        assert emulator.world.home_region in message
        assert 1 == emulator.stats()["requests"] - before

    def test_refused_key_fails_with_the_reason(
        self, emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A fingerprint the service does not know: False, and why (no secret in it)."""
        extras = profile(emulator) | {"fingerprint": "00:11:22:33:44:55:66:77:88:99:aa:bb"}
        key = extras["private_key_content"]
        monkeypatch.setenv(
            "AIRFLOW_CONN_OCI_REFUSED", json.dumps({"conn_type": "oci", "extra": extras})
        )
        ok, message = OciHook("oci_refused", endpoint=emulator.endpoint_template).test_connection()
        assert not ok
        assert "401" in message or "NotAuthenticated" in message
        assert key.splitlines()[1] not in message
