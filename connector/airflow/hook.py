"""``OciHook``: OCI credentials from an Airflow Connection of type ``oci``.

The Connection holds what an OCI config profile would (the SDK's key names, as the community
OCI hooks read them from the extras), so no key file, and no OCI config file, need live on the
workers::

    {"user": "ocid1.user…", "fingerprint": "12:34:…", "tenancy": "ocid1.tenancy…",
     "region": "us-ashburn-1", "key_content": "-----BEGIN PRIVATE KEY-----\\n…",
     "pass_phrase": "…"}

``key_file`` (a path on the worker) may stand in for ``key_content``; the Connection's login
and password may carry the user OCID and the pass phrase; keys may also carry the
``extra__oci__`` prefix of older connection forms. ``{"auth": "instance_principal"}`` (or
``"resource_principal"``) signs as the machine or the function instead, with nothing secret
stored at all.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, cast

from airflow.sdk import BaseHook
from airflow.sdk.log import mask_secret

from connector import AuthError, ConfigError, Credentials
from connector.oci import auth

MODES = {
    mode.name: mode
    for mode in (auth.API_KEY, *(m for m in auth.MODES.values() if not m.uses_profile))
}
"""The authentication modes a Connection can hold: an API key in its fields, or a principal
(nothing stored). A mode that reads files of an OCI config profile cannot be one."""
_PREFIX = "extra__oci__"


class OciHook(BaseHook):
    """OCI credentials from the Airflow Connection ``oci_conn_id`` (conn type ``oci``)."""

    conn_name_attr: ClassVar[str] = "oci_conn_id"
    default_conn_name: ClassVar[str] = "oci_default"
    conn_type: ClassVar[str] = "oci"
    hook_name: ClassVar[str] = "Oracle Cloud Infrastructure"

    def __init__(self, oci_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.oci_conn_id = oci_conn_id

    def get_conn(self) -> Credentials:
        """The credentials (Airflow's name for what a hook connects with)."""
        return self.get_credentials()

    def get_credentials(self) -> Credentials:
        """Build the credentials the Connection describes. Raises ``ConfigError`` naming the
        missing or wrong field (never its value) before any request."""
        connection = self.get_connection(self.oci_conn_id)
        return credentials_from_connection(
            self.oci_conn_id,
            connection.extra_dejson,
            login=connection.login,
            password=connection.password,
        )

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """How the Connection form shows this type: the API key's fields go in the extras."""
        return {
            "hidden_fields": ["host", "schema", "port"],
            "relabeling": {"login": "User OCID", "password": "Key pass phrase"},
            "placeholders": {
                "login": "ocid1.user.oc1..…",
                "extra": (
                    '{"tenancy": "ocid1.tenancy.oc1..…", "fingerprint": "12:34:…", '
                    '"region": "us-ashburn-1", "key_content": "-----BEGIN PRIVATE KEY-----…"}'
                    f'  or  {{"auth": "{auth.INSTANCE_PRINCIPAL.name}"}}'
                ),
            },
        }


def credentials_from_connection(
    conn_id: str,
    extras: Mapping[str, Any],
    *,
    login: str | None = None,
    password: str | None = None,
) -> Credentials:
    """Credentials from a Connection's extras (and its login and password), as ``OciHook``
    builds them. Secrets are registered with Airflow's log masker before anything can log."""
    fields = {_unprefixed(k): v for k, v in extras.items() if v not in (None, "")}
    for name in ("key_content", "pass_phrase"):
        if isinstance(fields.get(name), str):
            mask_secret(fields[name])
    if password:
        mask_secret(password)

    name = str(fields.get("auth", auth.API_KEY.name))
    mode = MODES.get(name)
    if mode is None:
        raise ConfigError(
            _key(conn_id, "auth"), f"must be {auth.choices(MODES.values())}; got {name!r}"
        )
    if not mode.uses_profile:
        return Credentials.from_principal(cast(auth.Principal, mode.name))

    fields.setdefault("user", login)
    missing = [k for k in ("user", "fingerprint", "tenancy", "region") if not fields.get(k)]
    if "key_content" not in fields and "key_file" not in fields:
        missing.append("key_content (or key_file)")
    if missing:
        raise ConfigError(
            _key(conn_id, missing[0]),
            f"is missing: an API-key connection needs {', '.join(missing)} in its extras "
            f"(the user may be the login instead); or set auth to {auth.INSTANCE_PRINCIPAL.name}",
        )
    try:
        return Credentials.from_api_key(
            user=str(fields["user"]),
            fingerprint=str(fields["fingerprint"]),
            tenancy=str(fields["tenancy"]),
            region=str(fields["region"]),
            private_key=_private_key(conn_id, fields),
            passphrase=fields.get("pass_phrase") or password or None,
        )
    except AuthError as exc:  # a key that cannot be read: no retry will read it
        raise ConfigError(_key(conn_id, "key_content"), str(exc)) from None


def _private_key(conn_id: str, fields: Mapping[str, Any]) -> str | bytes:
    content = fields.get("key_content")
    if content is not None:
        text = str(content)
        # A PEM pasted into a one-line field (or a JSON env var) often arrives with "\n" escapes.
        if "\n" not in text.strip() and "\\n" in text:
            text = text.replace("\\n", "\n")
        return text
    path = Path(str(fields["key_file"])).expanduser()
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(_key(conn_id, "key_file"), f"cannot be read: {exc.strerror}") from None


def _unprefixed(key: str) -> str:
    return key[len(_PREFIX) :] if key.startswith(_PREFIX) else key


def _key(conn_id: str, field: str) -> str:
    return f"connection {conn_id!r} extra {field!r}"
