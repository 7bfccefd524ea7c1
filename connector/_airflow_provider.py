"""What Airflow's providers manager reads through the ``apache_airflow_provider`` entry point:
the ``oci`` connection type, its hook, and its Connection form, declared.

Airflow 3 builds the form from this metadata (``conn-fields``: the extras, as JSON schema;
``ui-field-behaviour``: the standard fields hidden or relabelled) without importing the hook;
a form built by hook code (``get_connection_form_widgets``) is deprecated there and lost from
its UI. Airflow reads this while it initialises its configuration, inside ``import airflow``;
so it lives outside ``connector.airflow`` (which imports ``airflow.sdk``) and imports nothing of
Airflow, nor of the connector beyond its version.

The field names are the upstream OCI provider's (apache/airflow#70160: ``tenancy``,
``fingerprint``, ``region``, ``private_key_content``; the user OCID in Login, the passphrase in
Password), and each secret's name is one Airflow hides: ``format: password`` masks it in the
form, and its name (``private_key…``; the Password) redacts it from the REST API, which decides
by the name alone. ``connector.airflow.hook`` reads these fields, and the older names.
"""

from __future__ import annotations

from typing import Any

from connector._version import __version__

AUTH_TYPES = ("api_key", "config_file", "instance_principal", "resource_principal")
"""The values of ``auth_type`` (``connector.airflow.hook.AUTH_TYPES``; a test holds them equal)."""

_TEXT = {"type": ["string", "null"]}


def _field(label: str, description: str, **schema: Any) -> dict[str, Any]:
    return {"label": label, "description": description, "schema": {**_TEXT, **schema}}


CONN_FIELDS: dict[str, dict[str, Any]] = {
    "auth_type": _field(
        "Authentication",
        "api_key: the fields below; config_file: a profile of an OCI config file on the worker; "
        "instance_principal or resource_principal: the machine or function signs, nothing stored",
        enum=[*AUTH_TYPES, None],
        default="api_key",
    ),
    "tenancy": _field("Tenancy OCID", "The tenancy the user belongs to (api_key)"),
    "fingerprint": _field("Key fingerprint", "Of the public key uploaded for the user (api_key)"),
    "region": _field(
        "Region", "The home region, e.g. us-ashburn-1 (api_key; overrides config_file's)"
    ),
    "private_key_content": _field(
        "Private key (PEM)",
        "The API signing key itself; prefer a secrets backend. Or key_file instead",
        format="password",
    ),
    "key_file": _field("Private key file", "A path to the PEM key on the worker, instead"),
    "config_file": _field("OCI config file", "config_file: its path (default ~/.oci/config)"),
    "profile": _field("Profile", "config_file: the profile to read (default DEFAULT)"),
}
"""The Connection form's extras (Airflow 3's ``conn-fields``): each a JSON schema."""

UI_FIELD_BEHAVIOUR = {
    "hidden-fields": ["host", "schema", "port"],
    "relabeling": {"login": "User OCID", "password": "Private key passphrase"},
    "placeholders": {
        "login": "ocid1.user.oc1..…",
        "password": "only for an encrypted key",
        "tenancy": "ocid1.tenancy.oc1..…",
        "fingerprint": "12:34:…",
        "region": "us-ashburn-1",
        "private_key_content": "-----BEGIN PRIVATE KEY-----…",
    },
}
"""The standard fields: those unused hidden, Login and Password relabelled."""


def get_provider_info() -> dict[str, Any]:
    """The provider description Airflow expects (the keys of its provider.yaml schema)."""
    return {
        "package-name": "oci-images-connector",
        "name": "OCI images connector",
        "description": "Export OCI Compute images (ListImages) into a data lake.",
        "versions": [__version__],
        "connection-types": [
            {
                "connection-type": "oci",
                "hook-class-name": "connector.airflow.hook.OciHook",
                "hook-name": "Oracle Cloud Infrastructure",
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
                "conn-fields": CONN_FIELDS,
            }
        ],
    }
