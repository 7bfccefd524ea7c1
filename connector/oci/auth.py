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

The two profile modes take the OCI CLI's environment variables too, with its precedence (read
from its ``build_config``): each ``OCI_CLI_*`` variable set replaces that key of the profile,
and when the variables alone make a profile (user, tenancy, fingerprint, a region and a key), no
config file is read at all. ``OCI_CLI_KEY_CONTENT`` is the key itself, for a container whose
secrets arrive in its environment.

Nothing here logs or repeats a secret: errors name files, keys and variables, never their
content.
"""

from __future__ import annotations

import configparser
import dataclasses
import difflib
import os
import stat
from collections.abc import Callable, Iterable, Mapping
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

CLI_VARIABLES: dict[str, str] = {
    "user": "OCI_CLI_USER",
    "tenancy": "OCI_CLI_TENANCY",
    "fingerprint": "OCI_CLI_FINGERPRINT",
    "key_file": "OCI_CLI_KEY_FILE",
    "key_content": "OCI_CLI_KEY_CONTENT",
    "pass_phrase": "OCI_CLI_PASSPHRASE",
    "security_token_file": "OCI_CLI_SECURITY_TOKEN_FILE",
    "region": "OCI_CLI_REGION",
}
"""The OCI CLI's variable for each key of a profile; one that is set (not empty) wins over the
profile's value, as in the CLI (``oci.region``, its ``--region``, wins over both)."""
AUTH_VARIABLE = "OCI_CLI_AUTH"
"""The mode when ``oci.auth`` is set nowhere (the CLI's ``--auth`` default)."""
CONFIG_FILE_VARIABLES = ("OCI_CLI_CONFIG_FILE", "OCI_CONFIG_FILE")
"""Where the config file is when ``oci.config_file`` is empty: the CLI's variable, then the
SDK's."""


class RequestSigner(Protocol):
    """Adds ``date``, ``host`` and ``authorization`` headers to an outgoing request (one with a
    body carries its body headers already: ``signing.body_headers``)."""

    async def sign(self, method: str, url: str, headers: dict[str, str]) -> None:
        """Sign the request described by ``method``, ``url`` and ``headers`` in place."""


@runtime_checkable
class Refreshable(Protocol):
    """A signer whose token can be renewed on demand, as the SDK does after a 401."""

    async def refresh(self) -> None:
        """Fetch a new token now."""


@dataclass(frozen=True, slots=True)
class Profile:
    """One profile of an OCI config file, or of the ``OCI_CLI_*`` variables (``source`` None).
    ``pass_phrase`` and ``key_content`` are never shown in a repr."""

    name: str
    source: Path | None
    tenancy: str | None
    user: str | None
    fingerprint: str | None
    key_file: str | None
    region: str | None
    security_token_file: str | None
    pass_phrase: str | None = field(default=None, repr=False)
    key_content: str | None = field(default=None, repr=False)
    from_environment: tuple[str, ...] = ()
    """The keys an ``OCI_CLI_*`` variable gave (``with_environment``)."""

    def describe(self) -> str:
        """Where the profile comes from, for messages."""
        if self.source is None:
            return "the OCI_CLI_* environment variables"
        variables = f" with {', '.join(CLI_VARIABLES[k] for k in self.from_environment)}"
        return f'profile "{self.name}" of {self.source}{variables if self.from_environment else ""}'


def resolve_config_location(
    config_file: str, profile: str, environ: Mapping[str, str] | None = None
) -> tuple[Path, str]:
    """Where the OCI config is: explicit settings win, then OCI_CLI_CONFIG_FILE,
    OCI_CONFIG_FILE / OCI_CLI_PROFILE, then ~/.oci/config and DEFAULT."""
    env = os.environ if environ is None else environ
    file = config_file or next(
        (env[v] for v in CONFIG_FILE_VARIABLES if env.get(v)), DEFAULT_CONFIG_FILE
    )
    name = profile or env.get("OCI_CLI_PROFILE") or DEFAULT_PROFILE
    return Path(file).expanduser(), name


def with_environment(profile: Profile, environ: Mapping[str, str]) -> Profile:
    """``profile`` with each key an ``OCI_CLI_*`` variable sets replaced by its value, as the
    OCI CLI does after reading the file."""
    given: dict[str, Any] = {
        key: environ[name] for key, name in CLI_VARIABLES.items() if environ.get(name)
    }
    if not given:
        return profile
    return dataclasses.replace(profile, **given, from_environment=tuple(given))


def environment_profile(environ: Mapping[str, str], mode: str, region: str = "") -> Profile | None:
    """The profile the ``OCI_CLI_*`` variables make by themselves, or None when a config file
    is needed.

    The OCI CLI reads no file when user, tenancy, fingerprint, a region (``OCI_CLI_REGION`` or
    ``--region``, here ``region``) and ``OCI_CLI_KEY_FILE`` or ``OCI_CLI_KEY_CONTENT`` are
    set. A session token needs no user or fingerprint, so for ``security_token`` the token file,
    a key and a region suffice here.
    """
    have = {key for key, name in CLI_VARIABLES.items() if environ.get(name)}
    if region:
        have.add("region")
    if not have & {"key_file", "key_content"} or "region" not in have:
        return None
    needs = (
        {"security_token_file"}
        if mode == SECURITY_TOKEN.name
        else {"user", "tenancy", "fingerprint"}
    )
    if not needs <= have:
        return None
    empty = Profile("", None, None, None, None, None, None, None)
    return with_environment(empty, environ)


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
    """Fail with the profile's missing keys named (and the variables that would set them), as
    a configuration error."""
    missing = [k for k in keys if not getattr(profile, k)]
    if missing:
        variables = ", ".join(CLI_VARIABLES[k] for k in missing)
        raise ConfigError(
            "oci.profile", f"{profile.describe()} lacks {', '.join(missing)} (or {variables})"
        )


def private_key(profile: Profile) -> rsa.RSAPrivateKey:
    """The profile's private key: ``key_content`` when given (it wins over ``key_file``, as in
    the SDK's signer), else the file. Errors name the variable or the file, never the key."""
    if profile.key_content:
        return signing.load_private_key_pem(
            pem_text(profile.key_content).encode(),
            profile.pass_phrase,
            source=CLI_VARIABLES["key_content"],
        )
    if not profile.key_file:
        raise ConfigError(
            "oci.profile",
            f"{profile.describe()} lacks key_file (OCI_CLI_KEY_FILE) or OCI_CLI_KEY_CONTENT",
        )
    return signing.load_private_key(profile.key_file, profile.pass_phrase)


def pem_text(content: str) -> str:
    """A PEM key from a variable: trimmed, and with ``\\n`` made line breaks when the value
    came as one line (a ``.env`` file or a CI secret often carries it so)."""
    text = content.strip()
    if "\n" not in text and "\\n" in text:
        text = text.replace("\\n", "\n")
    return text


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
        require(profile, "tenancy", "user", "fingerprint")
        key = private_key(profile)
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
        require(profile, "security_token_file")
        assert profile.security_token_file is not None
        return cls(Path(profile.security_token_file).expanduser(), private_key(profile))

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
        wanted = (
            "date",
            "host",
            "authorization",
            "x-content-sha256",
            "content-type",
            "content-length",
        )
        return {k.lower(): v for k, v in prepared.headers.items() if k.lower() in wanted}


def sign_headers(
    method: str, url: str, headers: dict[str, str], key_id: str, key: rsa.RSAPrivateKey
) -> None:
    """Add date, host and authorization; a request with a body signs its body headers too,
    which ``headers`` must hold (``signing.body_headers``)."""
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


def mode_of(settings: Settings, environ: Mapping[str, str] | None = None) -> AuthMode:
    """The authentication mode: ``oci.auth`` when some source set it (the file, the
    environment's ``OCI_IMAGES__OCI__AUTH``, ``--set``, ``--auth``), else ``OCI_CLI_AUTH``,
    else ``api_key``: the OCI CLI's ``--auth``, then its variable, then its default."""
    env = os.environ if environ is None else environ
    if "oci.auth" not in settings.explicit and env.get(AUTH_VARIABLE):
        return mode_named(env[AUTH_VARIABLE], AUTH_VARIABLE)
    return mode_named(settings.oci.auth)


def resolve_credentials(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> Credentials:
    """The credentials ``settings.oci`` and the ``OCI_CLI_*`` variables name (a profile, or a
    principal). Raises ``ConfigError`` before any request; whether they suit the run (a region,
    a tenancy) is ``connector.validation.check_credentials``.

    A profile comes from the variables alone when they make one (``environment_profile``: then
    no file is read, none need exist), else from the config file with each variable set
    replacing its key. The region is ``oci.region`` (``--region``), else ``OCI_CLI_REGION``,
    else the profile's or the principal's.
    """
    env = os.environ if environ is None else environ
    oci = settings.oci
    mode = mode_of(settings, env)
    if mode.uses_profile:
        profile = environment_profile(env, mode.name, oci.region)
        if profile is None:
            path, name = resolve_config_location(oci.config_file, oci.profile, env)
            profile = with_environment(load_profile(path, name), env)
            # As the OCI CLI does: a key others can read is a key others may have copied.
            warn_if_exposed(path, "OCI config file")
        for secret in (profile.key_file, profile.security_token_file):
            if secret and not (secret == profile.key_file and profile.key_content):
                warn_if_exposed(secret, "key file")
        try:
            signer = mode.signer(profile)
        except AuthError as exc:
            raise ConfigError("oci.profile", str(exc)) from None
        region = oci.region or profile.region
        return Credentials(signer, region, profile.tenancy, profile.describe(), mode.name)
    try:
        credentials = Credentials.from_principal(cast(Principal, mode.name))
    except AuthError as exc:
        raise ConfigError("oci.profile", str(exc)) from None
    region = oci.region or env.get(CLI_VARIABLES["region"])
    if region:  # as the OCI CLI's --region and OCI_CLI_REGION, over the principal's own
        return dataclasses.replace(credentials, home_region=region)
    return credentials


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
