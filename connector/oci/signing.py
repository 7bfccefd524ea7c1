"""OCI HTTP request signatures (draft-cavage-http-signatures, signature version 1).

This is the one place that knows how OCI builds the string it signs; the connector's signers
and the emulator's verifier both use it, so they cannot drift apart. The format is the one the
official SDK produces (``oci.signer.Signer``): for requests without a body the signed headers
are ``date (request-target) host``; for PUT/POST/PATCH the body headers follow.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from connector.errors import AuthError

SIGNATURE_VERSION = "1"
ALGORITHM = "rsa-sha256"
GENERIC_HEADERS: tuple[str, ...] = ("date", "(request-target)", "host")
BODY_HEADERS: tuple[str, ...] = ("content-length", "content-type", "x-content-sha256")

_AUTH_PARAM = re.compile(r'(\w+)="([^"]*)"')


def http_date(timestamp: float | None = None) -> str:
    """An RFC 7231 date, as the ``date`` header OCI signs."""
    return email.utils.formatdate(timestamp, usegmt=True)


def signed_headers_for(method: str) -> tuple[str, ...]:
    """The headers OCI signs for a request with this method."""
    if method.upper() in ("PUT", "POST", "PATCH"):
        return GENERIC_HEADERS + BODY_HEADERS
    return GENERIC_HEADERS


def body_headers(body: bytes, content_type: str = "application/json") -> dict[str, str]:
    """The body headers a request with ``body`` sends and signs, as the SDK computes them:
    ``x-content-sha256`` is the base64 SHA-256 of the bytes sent."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")
    return {
        "content-length": str(len(body)),
        "content-type": content_type,
        "x-content-sha256": digest,
    }


def signing_string(
    method: str, target: str, headers: Mapping[str, str], signed: Sequence[str]
) -> bytes:
    """The exact bytes that are signed.

    ``target`` is the path and query as sent on the request line; ``headers`` must hold every
    name in ``signed`` other than ``(request-target)``, keyed in lower case.
    """
    lines = []
    for name in signed:
        if name == "(request-target)":
            lines.append(f"(request-target): {method.lower()} {target}")
        else:
            lines.append(f"{name}: {headers[name]}")
    return "\n".join(lines).encode("ascii")


def authorization_header(key_id: str, signature: bytes, signed: Sequence[str]) -> str:
    """The ``Authorization`` header value, byte for byte as the official SDK writes it."""
    encoded = base64.b64encode(signature).decode("ascii")
    return (
        f'Signature algorithm="{ALGORITHM}",headers="{" ".join(signed)}",'
        f'keyId="{key_id}",signature="{encoded}",version="{SIGNATURE_VERSION}"'
    )


def parse_authorization(value: str) -> dict[str, str]:
    """The parameters of a ``Signature ...`` authorization header; empty if it is not one."""
    scheme, _, params = value.partition(" ")
    if scheme != "Signature":
        return {}
    return dict(_AUTH_PARAM.findall(params))


def request_target(url: str) -> str:
    """Path and query of ``url`` as they appear on the request line."""
    parts = urlsplit(url)
    path = parts.path or "/"
    return f"{path}?{parts.query}" if parts.query else path


def rsa_sign(key: rsa.RSAPrivateKey, message: bytes) -> bytes:
    """PKCS#1 v1.5 signature over SHA-256, as OCI requires."""
    return key.sign(message, padding.PKCS1v15(), hashes.SHA256())


def rsa_verify(key: rsa.RSAPublicKey, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is a valid PKCS#1 v1.5 SHA-256 signature of ``message``."""
    from cryptography.exceptions import InvalidSignature

    try:
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def fingerprint(key: rsa.RSAPublicKey) -> str:
    """The OCI API-key fingerprint: MD5 of the DER public key, colon-separated hex."""
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashlib.md5(der, usedforsecurity=False).hexdigest()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


def load_private_key(path: str | Path, pass_phrase: str | None = None) -> rsa.RSAPrivateKey:
    """Load an RSA private key from a PEM file; errors name the file, never the pass phrase."""
    file = Path(path).expanduser()
    try:
        data = file.read_bytes().strip()
    except OSError as exc:
        raise AuthError(f"cannot read key_file {str(file)!r}: {exc.strerror}") from None
    return load_private_key_pem(data, pass_phrase, source=str(file))


def load_private_key_pem(
    data: bytes, pass_phrase: str | None = None, *, source: str = "key"
) -> rsa.RSAPrivateKey:
    """Load an RSA private key from PEM bytes."""
    password = pass_phrase.encode() if pass_phrase else None
    try:
        key = serialization.load_pem_private_key(data, password)
    except TypeError:
        if password is None:
            raise AuthError(
                f"{source} is encrypted: set pass_phrase in the OCI config profile, or "
                "OCI_CLI_PASSPHRASE"
            ) from None
        # A pass phrase inherited from DEFAULT for a key that has none, as the SDK allows.
        try:
            key = serialization.load_pem_private_key(data, None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise AuthError(f"{source} is not a readable PEM private key") from None
    except (ValueError, UnsupportedAlgorithm):
        raise AuthError(f"{source} is not a PEM private key, or its pass_phrase is wrong") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise AuthError(f"{source} is not an RSA key; OCI API keys are RSA")
    return key
