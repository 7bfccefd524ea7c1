"""``OciHook``: OCI credentials from an Airflow Connection of type ``oci``.

The Connection's form (declared in ``connector._airflow_provider``) holds what an OCI config
profile would, so no key file, and no OCI config file, need live on the workers: the user OCID
in Login, the key's passphrase in Password, and in the extras::

    {"tenancy": "ocid1.tenancy…", "fingerprint": "12:34:…", "region": "us-ashburn-1",
     "private_key_content": "-----BEGIN PRIVATE KEY-----\\n…"}

These are the field names of the upstream OCI provider's ``oci`` connection (apache/airflow
#70160), so a Connection moves between the two unchanged. They are also names Airflow hides:
its REST API and UI redact an extra whose name contains ``private_key`` or ``passphrase`` (and
the Password always), but show ``key_content`` and ``pass_phrase`` (the OCI SDK's names, which
earlier versions of this hook used) in clear. Those are still read, with a warning.

``key_file`` (a path on the worker) may stand in for ``private_key_content``; the extras may
carry ``user`` and ``passphrase`` instead of Login and Password, and the ``extra__oci__`` prefix
of older connection forms. ``auth_type`` (or ``auth``) chooses how to sign: ``api_key`` (the
default), ``config_file`` (a profile, ``profile``, of an OCI config file on the worker,
``config_file``), or ``instance_principal`` / ``resource_principal``, the machine or the
function signing with nothing secret stored at all.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, cast

from airflow.sdk import BaseHook
from airflow.sdk.log import mask_secret

import connector
from connector import AuthError, ConfigError, ConnectorError, Credentials, logs
from connector.oci import auth

CONFIG_FILE = "config_file"
"""The mode that signs with a profile of an OCI config file on the worker (an API key)."""
MODES = {
    mode.name: mode
    for mode in (auth.API_KEY, *(m for m in auth.MODES.values() if not m.uses_profile))
}
"""The modes a Connection names besides ``config_file``: an API key in its fields, or a
principal (nothing stored). A session token, which expires within the hour, cannot be one."""
AUTH_TYPES = (auth.API_KEY.name, CONFIG_FILE, *(m for m in MODES if m != auth.API_KEY.name))
"""Every value of ``auth_type``, in the order the form lists them."""

ALIASES: dict[str, tuple[str, ...]] = {
    "auth_type": ("auth",),
    "private_key_content": ("key_content",),
    "passphrase": ("pass_phrase",),
}
"""Other names of a field, read when the field itself is absent: this hook's earlier names."""
SHOWN_BY_AIRFLOW = frozenset({"key_content", "pass_phrase"})
"""Names under which Airflow shows a secret in clear (its API, its UI): read, with a warning."""
_PREFIX = "extra__oci__"
log = logs.get_logger(__name__)


class OciHook(BaseHook):
    """OCI credentials from the Airflow Connection ``oci_conn_id`` (conn type ``oci``).

    ``endpoint`` (an ``oci.endpoint`` template, ``https://iaas.{region}.example``) is where
    ``test_connection`` sends its request; by default the region's public endpoint.
    """

    conn_name_attr: ClassVar[str] = "oci_conn_id"
    default_conn_name: ClassVar[str] = "oci_default"
    conn_type: ClassVar[str] = "oci"
    hook_name: ClassVar[str] = "Oracle Cloud Infrastructure"

    def __init__(self, oci_conn_id: str = default_conn_name, *, endpoint: str = "") -> None:
        super().__init__()
        self.oci_conn_id = oci_conn_id
        self.endpoint = endpoint

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

    def test_connection(self) -> tuple[bool, str]:
        """Sign one cheap request (the tenancy's region subscriptions, from its home region)
        and say whether the service accepted it: the Connection form's Test button."""
        values: dict[str, Any] = {"oci": {"endpoint": self.endpoint}} if self.endpoint else {}
        try:
            settings = connector.load_config(values=values, environ={})
            regions = connector.check_access(settings, self.get_credentials())
        except ConnectorError as exc:
            return False, str(exc) or type(exc).__name__
        return True, f"signed in; the tenancy is subscribed to {', '.join(regions) or 'none'}"


def credentials_from_connection(
    conn_id: str,
    extras: Mapping[str, Any],
    *,
    login: str | None = None,
    password: str | None = None,
) -> Credentials:
    """Credentials from a Connection's extras (and its login and password), as ``OciHook``
    builds them. Secrets are registered with Airflow's log masker before anything can log."""
    fields = _fields(conn_id, extras)
    for name in ("private_key_content", "passphrase"):
        if isinstance(fields.get(name), str):
            mask_secret(fields[name])
    if password:
        mask_secret(password)

    name = str(fields.get("auth_type", auth.API_KEY.name))
    if name == CONFIG_FILE:
        return _from_config_file(conn_id, fields, password)
    mode = MODES.get(name)
    if mode is None:
        raise ConfigError(
            _key(conn_id, "auth_type"),
            f"must be {auth.choices(MODES.values())}, or {CONFIG_FILE} (a profile of an OCI "
            f"config file on the worker); got {name!r}",
        )
    if not mode.uses_profile:
        return Credentials.from_principal(cast(auth.Principal, mode.name))

    fields.setdefault("user", login)
    missing = [k for k in ("user", "fingerprint", "tenancy", "region") if not fields.get(k)]
    if "private_key_content" not in fields and "key_file" not in fields:
        missing.append("private_key_content (or key_file)")
    if missing:
        raise ConfigError(
            _key(conn_id, missing[0]),
            f"is missing: an API-key connection needs {', '.join(missing)} in its extras "
            f"(the user may be the login instead); or set auth_type to "
            f"{auth.INSTANCE_PRINCIPAL.name}",
        )
    try:
        return Credentials.from_api_key(
            user=str(fields["user"]),
            fingerprint=str(fields["fingerprint"]),
            tenancy=str(fields["tenancy"]),
            region=str(fields["region"]),
            private_key=_private_key(conn_id, fields),
            passphrase=fields.get("passphrase") or password or None,
        )
    except AuthError as exc:  # a key that cannot be read: no retry will read it
        raise ConfigError(_key(conn_id, "private_key_content"), str(exc)) from None


def _fields(conn_id: str, extras: Mapping[str, Any]) -> dict[str, Any]:
    """The extras under their form names: prefix dropped, empty values left out, aliases read
    where the form's name is absent."""
    given = {_unprefixed(k): v for k, v in extras.items() if v not in (None, "")}
    for name, others in ALIASES.items():
        for other in others:
            if other in given:
                value = given.pop(other)
                given.setdefault(name, value)
                if other in SHOWN_BY_AIRFLOW:
                    mask_secret(str(value))
                    log.warning(
                        "connection.secret_shown",
                        conn_id=conn_id,
                        field=other,
                        rename_to=name,
                        reason=f"Airflow's API and UI show {other!r} in clear and hide {name!r}: "
                        f"rename the extra {other!r} to {name!r}",
                    )
    return given


def _from_config_file(conn_id: str, fields: Mapping[str, Any], password: str | None) -> Credentials:
    """A profile of an OCI config file on the worker, signing with its API key; the
    Connection's region, when set, replaces the profile's."""
    path, name = auth.resolve_config_location(
        str(fields.get("config_file", "")), str(fields.get("profile", "")), {}
    )
    try:
        profile = auth.load_profile(path, name)
        if not profile.pass_phrase and (fields.get("passphrase") or password):
            passphrase = str(fields.get("passphrase") or password)
            profile = dataclasses.replace(profile, pass_phrase=passphrase)
        auth.require(profile, "user", "fingerprint", "tenancy")
        signer = auth.API_KEY.signer(profile)
    except (ConfigError, AuthError) as exc:
        key = (
            "profile" if isinstance(exc, ConfigError) and exc.key == "oci.profile" else CONFIG_FILE
        )
        reason = exc.reason if isinstance(exc, ConfigError) else str(exc)
        raise ConfigError(_key(conn_id, key), reason) from None
    region = str(fields.get("region") or profile.region or "") or None
    return Credentials(signer, region, profile.tenancy, profile.describe(), auth.API_KEY.name)


def _private_key(conn_id: str, fields: Mapping[str, Any]) -> str | bytes:
    content = fields.get("private_key_content")
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
