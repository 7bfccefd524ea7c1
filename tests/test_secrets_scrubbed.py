"""Secrets never leave in server text: a server or proxy that echoes the request's
``Authorization`` header has it redacted before it reaches a log line, an error or a run
record, and a malformed ``--set`` is refused without repeating its value."""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from connector import cli, config, logs
from connector.emulator import EmulatorServer
from connector.errors import REDACTED, ConfigError, OciApiError, TransportError, redact
from tests.conftest import sdk_config
from tests.helpers import write_config

SIGNATURE = (
    'Signature version="1",keyId="ocid1.tenancy.oc1..aaaatenancy/ocid1.user.oc1..aaaauser/'
    '20:3b:97:13:55:1c",algorithm="rsa-sha256",headers="date (request-target) host",'
    'signature="c2VjcmV0LXNpZ25hdHVyZS1ieXRlcy10aGF0LW11c3Qtbm90LWxlYWs="'
)
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvY2lkMS51c2VyIn0.c2lnbmF0dXJlLXBhcnQ"
LEAKS = ("c2VjcmV0LXNpZ25hdHVyZS1ieXRlcy10aGF0LW11c3Qtbm90LWxlYWs", "aaaauser/20:3b", JWT)

SHAPES = {
    "a header line": f"Authorization: {SIGNATURE}\nDate: now",
    "a JSON message": orjson.dumps({"message": f"bad header Authorization: {SIGNATURE}"}).decode(),
    "a cut page": f"<p>Authorization: {SIGNATURE}"[:120],
    "keyId and signature alone": 'keyId="ocid1.tenancy.oc1..aaaatenancy/ocid1.user.oc1..aaaauser/'
    '20:3b:97" signature="c2VjcmV0LXNpZ25hdHVyZS1ieXRlcy10aGF0LW11c3Qtbm90LWxlYWs="',
    "a bearer token": f"Authorization: Bearer {JWT}",
    "a bare token": f"session {JWT} expired",
    "a basic credential": "proxy-authorization: Basic aaaauser/20:3b==",
    "a JSON header map": orjson.dumps({"Authorization": SIGNATURE}).decode(),
}


@pytest.mark.parametrize("text", SHAPES.values(), ids=SHAPES.keys())
def test_every_shape_of_a_credential_is_redacted(text: str) -> None:
    """Whatever the shape the server quotes the header in (even cut short at 200 bytes, or
    escaped inside JSON), nothing of its signature, key id or token is left."""
    scrubbed = redact(text)
    assert REDACTED in scrubbed
    assert not [leak for leak in LEAKS if leak in scrubbed], scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "The required information to complete authentication was not provided or was incorrect.",
        "Authorization failed or requested resource not found.",
        "The signature of the request did not match.",
        "",
    ],
)
def test_ordinary_messages_are_left_alone(text: str) -> None:
    """The service's own messages, which mention authorization and signatures in words, pass
    unchanged."""
    assert text == redact(text)


def test_errors_built_from_server_text_hold_no_secret() -> None:
    """The code and message of an ``OciApiError``, and a ``TransportError``'s reason, are
    redacted when the error is made: its text, its fields and a listing's record of it."""
    from connector.pages import ListingError

    api = OciApiError(400, f"Bad{SIGNATURE}", f"Authorization: {SIGNATURE}", opc_request_id="r")
    transport = TransportError(f"proxy said: Authorization: {SIGNATURE}")
    texts = [str(api), api.code, api.message, str(transport), transport.reason]
    texts.append(orjson.dumps(ListingError.from_exception(api).as_dict()).decode())
    assert not [leak for text in texts for leak in LEAKS if leak in text], texts


def test_a_log_line_never_carries_a_credential() -> None:
    """The log's last processor redacts text values (and exceptions), whatever the key."""
    out = io.StringIO()
    logs.configure("info", "json", out)
    logs.get_logger("connector.test").warning(
        f"seen {SIGNATURE}", reason=f"Authorization: {SIGNATURE}", error=ValueError(JWT)
    )
    line = out.getvalue()
    assert REDACTED in line
    assert not [leak for leak in LEAKS if leak in line], line


@pytest.mark.parametrize(
    "argument",
    [
        "output.storage_options.secret_access_key:wJalrXUtnFEMI/K7MDENG",
        "output.storage_options.secret_access_key:wJalrXUtnFEMI/K7MDENG==",
        "output.storage_options.secret_access_key wJalrXUtnFEMI/K7MDENG",
    ],
)
def test_a_malformed_set_is_not_echoed(
    argument: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped ``--set`` (``:`` or a space for ``=``; a base64 secret may itself hold an
    ``=``) is refused naming ``--set``, and neither the error nor the command's output repeats
    the secret."""
    with pytest.raises(ConfigError) as info:
        config.load(None, [argument])
    assert "--set" == info.value.key
    assert "wJalrXUtnFEMI" not in str(info.value)
    empty = tmp_path / "config.toml"
    empty.write_text("")
    assert 2 == cli.main(["run", "--config", str(empty), "--set", argument])
    captured = capsys.readouterr()
    assert "wJalrXUtnFEMI" not in captured.out + captured.err
    assert "--set" in captured.err


@pytest.mark.parametrize("page", ["json", "html"])
def test_an_echoed_authorization_reaches_no_log_error_or_run_record(
    make_emulator: Callable[..., EmulatorServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    page: str,
) -> None:
    """Every ListImages answers 400 quoting the request's signed ``Authorization`` header (in
    the service's JSON error, or a proxy's HTML page): the run fails, and neither the log (at
    debug level), nor the final error, nor ``_runs/RUN_ID.json`` holds the key id or any part
    of a signature."""
    server = make_emulator(echo_authorization=page)
    settings = sdk_config(server)
    key_id = f"{settings['tenancy']}/{settings['user']}/{settings['fingerprint']}"
    path = write_config(tmp_path, server, output={"allow_partial": True})
    code = cli.main(["--log-level", "debug", "--log-format", "json", "run", "--config", str(path)])
    assert 1 == code
    captured = capsys.readouterr()
    records = list((tmp_path / "lake" / "_runs").glob("*.json"))
    assert 1 == len(records)
    record = records[0].read_text()
    assert "InvalidParameter" in record or "HTTP400" in record  # the error is kept, scrubbed
    for where, text in {"log and error": captured.out + captured.err, "run record": record}.items():
        assert REDACTED in text, where
        assert key_id not in text, where
        assert not re.search(r'keyId=\\?"ocid1', text), where  # even cut at 200 bytes
        assert not re.search(r'signature=\\?"(?!\[redacted\])', text), where
        assert not re.search(r"[A-Za-z0-9+/]{100,}", text), where
