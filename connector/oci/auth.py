"""Credentials: OCI config profiles and the signers that sign each request.

Four authentication modes, as the OCI CLI has them, each one record of ``MODES`` (what it
needs, how its signer is built, what to check when the service refuses it):

- ``api_key``: a user's API key from an OCI config profile (``key_file``, ``pass_phrase``);
- ``security_token``: a session token (``security_token_file``) with the session key; the file
  is re-read when it changes, so ``oci session refresh`` keeps a long run alive;
- ``instance_principal`` and ``resource_principal``: the official SDK's signers (the ``oci``
  extra), called through their public path so that their token refresh happens, off the event
  loop because refreshing does blocking I/O.

``oci.auth`` is checked against ``MODES`` (``connector.validation``), and so is the ``auth`` of
an Airflow Connection; ``troubleshoot`` takes each mode's advice from its record. (``oci.auth``'s
help and the ``Principal`` type name the modes too: tests hold both to ``MODES``.)

Nothing here logs or repeats a secret: errors name files and keys, never their content.
"""

from __future__ import annotations

import configparser
import difflib
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, runtime_checkable
from urllib.parse import urlsplit

import anyio.to_thread
from cryptography.hazmat.primitives.asymmetric import rsa

from connector import logs
from connector.errors import AuthError, ConfigError
from connector.oci import signing

log = logs.get_logger("connector.oci.auth")

if TYPE_CHECKING:
    from connector.config import Settings

DEFAULT_CONFIG_FILE = "~/.oci/config"
DEFAULT_PROFILE = "DEFAULT"


class RequestSigner(Protocol):
    """Adds ``date``, ``host`` and ``authorization`` headers to an outgoing GET request."""

    async def sign(self, method: str, url: str, headers: dict[str, str]) -> None:
        """Sign the request described by ``method``, ``url`` and ``headers`` in place."""


@runtime_checkable
class Refreshable(Protocol):
    """A signer whose token can be renewed on demand, as the SDK does after a 401."""

    async def refresh(self) -> None:
        """Fetch a new token now."""


@dataclass(frozen=True, slots=True)
class Profile:
    """One profile of an OCI config file. ``pass_phrase`` is never shown in a repr."""

    name: str
    source: Path
    tenancy: str | None
    user: str | None
    fingerprint: str | None
    key_file: str | None
    region: str | None
    security_token_file: str | None
    pass_phrase: str | None = field(default=None, repr=False)


def resolve_config_location(config_file: str, profile: str) -> tuple[Path, str]:
    """Where the OCI config is: explicit settings win, then OCI_CONFIG_FILE / OCI_CLI_PROFILE."""
    file = config_file or os.environ.get("OCI_CONFIG_FILE") or DEFAULT_CONFIG_FILE
    name = profile or os.environ.get("OCI_CLI_PROFILE") or DEFAULT_PROFILE
    return Path(file).expanduser(), name


def load_profile(config_file: str | Path, profile: str) -> Profile:
    """Read one profile; values of DEFAULT are inherited, as in the OCI CLI and SDK."""
    path = Path(config_file).expanduser()
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as handle:
            parser.read_file(handle)
    except FileNotFoundError:
        raise ConfigError("oci.config_file", f"{path} does not exist") from None
    except (OSError, configparser.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else type(exc).__name__
        raise ConfigError("oci.config_file", f"{path} cannot be read ({reason})") from None
    if profile != DEFAULT_PROFILE and not parser.has_section(profile):
        known = ", ".join([DEFAULT_PROFILE, *parser.sections()])
        raise ConfigError("oci.profile", f"profile {profile!r} is not in {path} (it has: {known})")
    section = parser[profile]

    def value(key: str) -> str | None:
        text = section.get(key)
        return text.strip() or None if text is not None else None

    key_file = value("key_file")
    token_file = value("security_token_file")
    base = path.parent
    return Profile(
        name=profile,
        source=path,
        tenancy=value("tenancy"),
        user=value("user"),
        fingerprint=value("fingerprint"),
        key_file=str(_relative_to(base, key_file)) if key_file else None,
        region=value("region"),
        security_token_file=str(_relative_to(base, token_file)) if token_file else None,
        pass_phrase=value("pass_phrase"),
    )


def _relative_to(base: Path, file: str) -> Path:
    path = Path(file).expanduser()
    return path if path.is_absolute() else base / path


def require(profile: Profile, *keys: str) -> None:
    """Fail with the profile's missing keys named, as a configuration error."""
    missing = [k for k in keys if not getattr(profile, k)]
    if missing:
        raise ConfigError(
            "oci.profile",
            f"profile {profile.name!r} in {profile.source} lacks {', '.join(missing)}",
        )


class ApiKeySigner:
    """Signs with a user's API key: keyId ``tenancy/user/fingerprint``."""

    def __init__(self, key_id: str, private_key: rsa.RSAPrivateKey) -> None:
        self._key_id = key_id
        self._key = private_key

    def __repr__(self) -> str:
        return f"ApiKeySigner(key_id={self._key_id!r})"

    @classmethod
    def from_profile(cls, profile: Profile) -> ApiKeySigner:
        """The signer for an ``api_key`` profile."""
        require(profile, "tenancy", "user", "fingerprint", "key_file")
        assert profile.key_file is not None
        key = signing.load_private_key(profile.key_file, profile.pass_phrase)
        return cls(f"{profile.tenancy}/{profile.user}/{profile.fingerprint}", key)

    def key_id(self) -> str:
        """The keyId this signer puts in the Authorization header."""
        return self._key_id

    async def sign(self, method: str, url: str, headers: dict[str, str]) -> None:
        """Sign in place; cheap enough (about 0.25 ms) to run on the event loop."""
        sign_headers(method, url, headers, self.key_id(), self._key)


class SecurityTokenSigner(ApiKeySigner):
    """Signs with a session token: keyId ``ST$<token>``; re-reads the token file on change."""

    def __init__(self, token_file: Path, private_key: rsa.RSAPrivateKey) -> None:
        super().__init__("", private_key)
        self._token_file = token_file
        self._stamp: float | None = None
        self._token = ""
        self._reload()

    def __repr__(self) -> str:
        return f"SecurityTokenSigner(token_file={str(self._token_file)!r})"

    @classmethod
    def from_profile(cls, profile: Profile) -> SecurityTokenSigner:
        """The signer for a ``security_token`` profile."""
        require(profile, "security_token_file", "key_file")
        assert profile.key_file is not None
        assert profile.security_token_file is not None
        key = signing.load_private_key(profile.key_file, profile.pass_phrase)
        return cls(Path(profile.security_token_file), key)

    def _reload(self) -> None:
        try:
            stamp = self._token_file.stat().st_mtime
            if stamp != self._stamp:
                token = self._token_file.read_text(encoding="ascii").strip()
                if not token:
                    raise AuthError(f"security_token_file {self._token_file} is empty")
                self._token, self._stamp = token, stamp
        except OSError as exc:
            raise AuthError(
                f"cannot read security_token_file {self._token_file}: {exc.strerror}"
            ) from None

    def key_id(self) -> str:
        """``ST$`` and the current token."""
        self._reload()
        return f"ST${self._token}"


class SdkSigner:
    """Wraps a signer of the official SDK (instance or resource principals).

    The SDK's signers are ``requests`` auth callables that refresh their federation token when
    it nears expiry; calling them through that path keeps refresh working. It can block on the
    network, so it runs in a worker thread.
    """

    def __init__(self, sdk_signer: Callable[[Any], Any], name: str) -> None:
        self._signer = sdk_signer
        self._name = name

    def __repr__(self) -> str:
        return f"SdkSigner({self._name})"

    @property
    def region(self) -> str | None:
        """The region the principal lives in, as the SDK's signer found it."""
        return _text(getattr(self._signer, "region", None))

    @property
    def tenancy(self) -> str | None:
        """The principal's tenancy, as the SDK's signer found it."""
        return _text(getattr(self._signer, "tenancy_id", None))

    async def refresh(self) -> None:
        """Renew the principal's token, as the SDK's base client does after a 401.

        The SDK does this for instance, resource (and OKE workload) principals: their
        ``refresh_security_token`` fetches a new token from the federation endpoint.
        """
        renew = getattr(self._signer, "refresh_security_token", None)
        if renew is None:
            return
        try:
            await anyio.to_thread.run_sync(renew)
        except Exception as exc:  # the SDK raises many kinds; the 401 that follows says enough
            raise AuthError(
                f"{self._name}: refreshing the token failed ({type(exc).__name__})"
            ) from None

    async def sign(self, method: str, url: str, headers: dict[str, str]) -> None:
        """Sign in a worker thread and copy the resulting headers."""
        signed = await anyio.to_thread.run_sync(self._sign_blocking, method, url, dict(headers))
        headers.update(signed)

    def _sign_blocking(self, method: str, url: str, headers: dict[str, str]) -> dict[str, str]:
        from oci._vendor import requests

        prepared = requests.Request(method, url, headers=headers).prepare()
        self._signer(prepared)
        wanted = ("date", "host", "authorization", "x-content-sha256", "content-type")
        return {k.lower(): v for k, v in prepared.headers.items() if k.lower() in wanted}


def sign_headers(
    method: str, url: str, headers: dict[str, str], key_id: str, key: rsa.RSAPrivateKey
) -> None:
    """Add date, host and authorization for a request without a body."""
    headers.setdefault("date", signing.http_date())
    headers.setdefault("host", urlsplit(url).netloc)
    signed = signing.signed_headers_for(method)
    message = signing.signing_string(method, signing.request_target(url), headers, signed)
    headers["authorization"] = signing.authorization_header(
        key_id, signing.rsa_sign(key, message), signed
    )


@dataclass(frozen=True, slots=True)
class AuthMode:
    """One authentication mode (``oci.auth``): what it needs and how its signer is built.

    Exactly one of ``from_profile`` and ``from_sdk`` is set.
    """

    name: str
    """The value of ``oci.auth`` (and of an Airflow Connection's ``auth``)."""
    description: str
    """One line: who signs."""
    from_profile: Callable[[Profile], RequestSigner] | None = None
    """Builds the signer from a profile of an OCI config file (``oci.config_file``,
    ``oci.profile``), for a mode that reads one."""
    from_sdk: Callable[[Any], Callable[[Any], Any]] | None = None
    """Builds the official SDK's signer from its ``oci.auth.signers`` module, for a principal."""
    extra: str = ""
    """The package extra the mode needs, if any (``pip install 'oci-images-connector[oci]'``)."""
    after_401: str = ""
    """What to check when the service still refuses the signature; ``{profile}`` is who signed."""

    @property
    def uses_profile(self) -> bool:
        """Whether the mode reads a profile of an OCI config file."""
        return self.from_profile is not None

    def signer(self, profile: Profile | None = None) -> RequestSigner:
        """The signer: from ``profile`` for a mode that reads one, else the SDK's principal."""
        if self.from_profile is None:
            return self.principal()
        if profile is None:
            raise ConfigError("oci.profile", f"{self.name} signs with a profile; none was read")
        return self.from_profile(profile)

    def principal(self) -> SdkSigner:
        """The official SDK's signer for this principal, from the ``oci`` extra."""
        if self.from_sdk is None:
            raise ConfigError("oci.auth", f"{self.name!r} is not a principal")
        try:
            from oci.auth import signers
        except ImportError:
            raise ConfigError(
                "oci.auth",
                f"{self.name} needs the official SDK: pip install "
                f"'oci-images-connector[{self.extra}]'",
            ) from None
        try:
            return SdkSigner(self.from_sdk(signers), self.name)
        except Exception as exc:  # the SDK raises many kinds; say which mode failed and why
            raise AuthError(
                f"{self.name} credentials are not available here: {type(exc).__name__}"
            ) from None


_PRINCIPAL_401 = (
    "the {name} token was refreshed and still refused: check that the instance or resource "
    "is matched by a dynamic group, and the policies for it"
)

API_KEY = AuthMode(
    "api_key",
    "a user's API key, from a profile of an OCI config file",
    from_profile=ApiKeySigner.from_profile,
    after_401=(
        "check {profile}: fingerprint must be that of the public key uploaded for the user "
        "(Console: Identity > Users > API keys), key_file its private key, user and tenancy "
        "the right OCIDs for this realm, and this machine's clock right to within 5 minutes"
    ),
)
SECURITY_TOKEN = AuthMode(
    "security_token",
    "a session token (oci session authenticate) and its key, from a profile",
    from_profile=SecurityTokenSigner.from_profile,
    after_401=(
        "the session token of {profile} has probably expired: run "
        "`oci session refresh` (or `oci session authenticate`) for that profile"
    ),
)
INSTANCE_PRINCIPAL = AuthMode(
    "instance_principal",
    "the compute instance itself, through a dynamic group",
    from_sdk=lambda signers: signers.InstancePrincipalsSecurityTokenSigner(),
    extra="oci",
    after_401=_PRINCIPAL_401.replace("{name}", "instance principal"),
)
RESOURCE_PRINCIPAL = AuthMode(
    "resource_principal",
    "the resource itself (a function, a job), through a dynamic group",
    from_sdk=lambda signers: signers.get_resource_principals_signer(),
    extra="oci",
    after_401=_PRINCIPAL_401.replace("{name}", "resource principal"),
)

MODES: dict[str, AuthMode] = {
    mode.name: mode for mode in (API_KEY, SECURITY_TOKEN, INSTANCE_PRINCIPAL, RESOURCE_PRINCIPAL)
}
"""Every authentication mode, by name."""

Principal = Literal["instance_principal", "resource_principal"]
"""The names of the modes without a profile, for ``Credentials.from_principal`` (a test holds
this type to ``MODES``)."""


def mode_named(name: str, key: str = "oci.auth") -> AuthMode:
    """The mode ``name``; ``ConfigError`` naming ``key`` and the modes otherwise."""
    mode = MODES.get(name)
    if mode is None:
        close = difflib.get_close_matches(name, list(MODES), n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(key, f"must be one of {choices(MODES.values())}; got {name!r}{hint}")
    return mode


def choices(modes: Iterable[AuthMode]) -> str:
    """``modes`` for a message: "api_key (a user's API key, ...), ... or resource_principal
    (...; the [oci] extra)"."""
    shown = [
        f"{m.name} ({m.description}{f'; the [{m.extra}] extra' if m.extra else ''})" for m in modes
    ]
    return ", ".join(shown[:-1]) + " or " + shown[-1] if len(shown) > 1 else "".join(shown)


def make_signer(mode: str, profile: Profile | None) -> RequestSigner:
    """The signer for an authentication mode."""
    return mode_named(mode).signer(profile)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True, slots=True)
class Credentials:
    """A signer and what it tells about where it belongs: its home region and tenancy."""

    signer: RequestSigner
    home_region: str | None = None
    tenancy: str | None = None
    label: str = ""
    """Who signs, for messages: 'profile "DEFAULT" of ~/.oci/config', "instance_principal"."""
    auth: str = API_KEY.name

    @classmethod
    def from_api_key(
        cls,
        *,
        user: str,
        fingerprint: str,
        tenancy: str,
        region: str,
        private_key: str | bytes,
        passphrase: str | None = None,
    ) -> Credentials:
        """A user's API key given as PEM text (from a secrets manager, say); no file needed."""
        data = private_key.encode() if isinstance(private_key, str) else private_key
        key = signing.load_private_key_pem(data.strip(), passphrase, source="private_key")
        signer = ApiKeySigner(f"{tenancy}/{user}/{fingerprint}", key)
        return cls(signer, region, tenancy, f"the API key {fingerprint} of user {user}")

    @classmethod
    def from_principal(cls, kind: Principal) -> Credentials:
        """An instance or resource principal (needs the ``oci`` extra)."""
        signer = mode_named(kind).principal()
        return cls(signer, signer.region, signer.tenancy, kind, kind)


def resolve_credentials(settings: Settings) -> Credentials:
    """The credentials ``settings.oci`` names (profile, or principal). Raises ``ConfigError``
    before any request; whether they suit the run (a region, a tenancy) is
    ``connector.validation.check_credentials``."""
    oci = settings.oci
    mode = mode_named(oci.auth)
    if mode.uses_profile:
        path, name = resolve_config_location(oci.config_file, oci.profile)
        profile = load_profile(path, name)

        # As the OCI CLI does: a key others can read is a key others may have copied.
        warn_if_exposed(path, "OCI config file")
        for secret in (profile.key_file, profile.security_token_file):
            if secret:
                warn_if_exposed(secret, "key file")
        try:
            signer = mode.signer(profile)
        except AuthError as exc:
            raise ConfigError("oci.profile", str(exc)) from None
        label = f'profile "{profile.name}" of {profile.source}'
        return Credentials(signer, profile.region, profile.tenancy, label, mode.name)
    try:
        return Credentials.from_principal(cast(Principal, mode.name))
    except AuthError as exc:
        raise ConfigError("oci.profile", str(exc)) from None


def warn_if_exposed(path: str | os.PathLike[str], what: str) -> str | None:
    """Warn, as the OCI CLI does, when a key or config file is readable by group or others.

    Returns the warning (None when the permissions are fine, the file is missing, or the
    platform has no POSIX permissions). The content is never read here.
    """
    if os.name != "posix":
        return None
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if not mode & (stat.S_IRWXG | stat.S_IRWXO):
        return None
    message = (
        f"permissions on {what} {os.fspath(path)} are too open "
        f"({stat.filemode(mode)}): it is readable or writable by group or others; "
        f"fix with: chmod 600 {os.fspath(path)}"
    )
    log.warning("permissions.too_open", file=os.fspath(path), what=what, mode=oct(mode & 0o777))
    return message
