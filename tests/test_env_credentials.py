"""Credentials from the OCI CLI's environment variables, with its precedence: alone (no config
file anywhere) or over a profile's keys; the key and its passphrase never leave the process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector import api, config, validation
from connector.emulator import EmulatorServer, build_world
from connector.errors import AuthError, ConfigError
from connector.oci import auth, client
from tests.helpers import (
    DATE,
    PASSPHRASE,
    WORLD,
    arrow_rows,
    cli_environment,
    encrypted_pem,
    manifest_of,
)
from tests.reference import expected_rows, multiset, normalise_actual

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server() -> Iterator[EmulatorServer]:
    """The emulator, with no OCI config file written anywhere."""
    with EmulatorServer(build_world(**WORLD)) as started:  # type: ignore[arg-type]
        assert started.config_file is None
        yield started


def settings_for(server: EmulatorServer, *overrides: str) -> config.Settings:
    return config.load(None, [f"oci.endpoint={server.endpoint_template}", *overrides], environ={})


def write_profile(folder: Path, server: EmulatorServer, profile: str = "DEFAULT") -> Path:
    """A config file with ``profile`` for the emulator's user, its key in ``folder/key.pem``."""
    creds = server.credentials
    (folder / "key.pem").write_bytes(creds.private_pem())
    (folder / "key.pem").chmod(0o600)
    path = folder / "config"
    path.write_text(
        f"[{profile}]\nuser={creds.user}\nfingerprint={creds.fingerprint}\n"
        f"key_file={folder / 'key.pem'}\ntenancy={creds.tenancy}\n"
        f"region={server.world.home_region}\n"
    )
    path.chmod(0o600)
    return path


class TestVariablesAlone:
    def test_need_no_config_file(self, server: EmulatorServer, tmp_path: Path) -> None:
        """User, tenancy, fingerprint, region and a key: no file is read, not even the one
        oci.config_file names."""
        settings = settings_for(server, f"oci.config_file={tmp_path / 'absent'}")
        credentials = auth.resolve_credentials(settings, cli_environment(server))
        assert isinstance(credentials.signer, auth.ApiKeySigner)
        assert server.credentials.key_id == credentials.signer.key_id()
        assert (server.world.home_region, server.credentials.tenancy) == (
            credentials.home_region,
            credentials.tenancy,
        )
        assert "the OCI_CLI_* environment variables" == credentials.label

    def test_key_content_wins_over_key_file(self, server: EmulatorServer) -> None:
        """As the SDK's signer: with both, the content is the key and the file is not opened."""
        environ = cli_environment(server, OCI_CLI_KEY_FILE="/nonexistent/key.pem")
        credentials = auth.resolve_credentials(settings_for(server), environ)
        assert server.credentials.key_id == credentials.signer.key_id()  # type: ignore[attr-defined]

    def test_a_key_file_serves_too(self, server: EmulatorServer, tmp_path: Path) -> None:
        """OCI_CLI_KEY_FILE instead of the content (unencrypted: no passphrase needed)."""
        (tmp_path / "k.pem").write_bytes(server.credentials.private_pem())
        environ = cli_environment(server, OCI_CLI_KEY_FILE=str(tmp_path / "k.pem"))
        del environ["OCI_CLI_KEY_CONTENT"], environ["OCI_CLI_PASSPHRASE"]
        credentials = auth.resolve_credentials(settings_for(server), environ)
        assert server.credentials.key_id == credentials.signer.key_id()  # type: ignore[attr-defined]

    def test_a_one_line_key_with_escaped_newlines(self, server: EmulatorServer) -> None:
        """A key carried on one line with ``\\n`` (a .env file, a CI secret) loads."""
        one_line = encrypted_pem(server).replace("\n", "\\n")
        environ = cli_environment(server, OCI_CLI_KEY_CONTENT=one_line)
        credentials = auth.resolve_credentials(settings_for(server), environ)
        assert server.credentials.key_id == credentials.signer.key_id()  # type: ignore[attr-defined]

    def test_without_a_region_a_file_is_needed(
        self, server: EmulatorServer, tmp_path: Path
    ) -> None:
        """As the CLI's rule: without OCI_CLI_REGION (or --region) the variables are not
        complete, the config file is read, and its absence is the error; --region completes
        them."""
        environ = cli_environment(server)
        del environ["OCI_CLI_REGION"]
        settings = settings_for(server, f"oci.config_file={tmp_path / 'absent'}")
        with pytest.raises(ConfigError) as info:
            auth.resolve_credentials(settings, environ)
        assert "oci.config_file" == info.value.key
        region = "eu-frankfurt-1"
        with_flag = settings_for(server, f"oci.region={region}")
        assert region == auth.resolve_credentials(with_flag, environ).home_region

    def test_a_session_token_needs_no_user(self, server: EmulatorServer, tmp_path: Path) -> None:
        """OCI_CLI_AUTH=security_token with the token file, a key and a region: no file."""
        token = tmp_path / "token"
        token.write_text(server.credentials.security_token)
        environ = {
            "OCI_CLI_AUTH": "security_token",
            "OCI_CLI_SECURITY_TOKEN_FILE": str(token),
            "OCI_CLI_KEY_CONTENT": encrypted_pem(server),
            "OCI_CLI_PASSPHRASE": PASSPHRASE,
            "OCI_CLI_REGION": server.world.home_region,
        }
        credentials = auth.resolve_credentials(settings_for(server), environ)
        assert isinstance(credentials.signer, auth.SecurityTokenSigner)
        assert "security_token" == credentials.auth


class TestOverAProfile:
    def test_each_variable_wins_over_the_profiles_key(
        self, server: EmulatorServer, tmp_path: Path
    ) -> None:
        """Without a complete set, the profile is read and each variable set replaces its key;
        the label says which."""
        path = write_profile(tmp_path, server)
        settings = settings_for(server, f"oci.config_file={path}")
        environ = {"OCI_CLI_FINGERPRINT": "aa:bb", "OCI_CLI_REGION": "eu-frankfurt-1"}
        credentials = auth.resolve_credentials(settings, environ)
        creds = server.credentials
        assert f"{creds.tenancy}/{creds.user}/aa:bb" == credentials.signer.key_id()  # type: ignore[attr-defined]
        assert "eu-frankfurt-1" == credentials.home_region
        assert credentials.label.endswith("with OCI_CLI_FINGERPRINT, OCI_CLI_REGION")

    def test_the_region_flag_wins_over_the_variable(
        self, server: EmulatorServer, tmp_path: Path
    ) -> None:
        """oci.region (--region) > OCI_CLI_REGION > the profile's region."""
        path = write_profile(tmp_path, server)
        settings = settings_for(server, f"oci.config_file={path}", "oci.region=us-phoenix-1")
        environ = {"OCI_CLI_REGION": "eu-frankfurt-1"}
        assert "us-phoenix-1" == auth.resolve_credentials(settings, environ).home_region

    def test_the_config_file_variables(self, tmp_path: Path) -> None:
        """oci.config_file > OCI_CLI_CONFIG_FILE > OCI_CONFIG_FILE > ~/.oci/config."""
        both = {"OCI_CLI_CONFIG_FILE": "/cli/config", "OCI_CONFIG_FILE": "/sdk/config"}
        assert Path("/cli/config") == auth.resolve_config_location("", "", both)[0]
        assert (
            Path("/sdk/config")
            == auth.resolve_config_location("", "", both | {"OCI_CLI_CONFIG_FILE": ""})[0]
        )
        assert Path("/mine") == auth.resolve_config_location("/mine", "", both)[0]
        assert Path("~/.oci/config").expanduser() == auth.resolve_config_location("", "", {})[0]


class TestAuthVariable:
    def test_applies_when_oci_auth_is_set_nowhere(self, server: EmulatorServer) -> None:
        """OCI_CLI_AUTH replaces the default; any source of oci.auth wins over it."""
        environ = {"OCI_CLI_AUTH": "resource_principal"}
        assert auth.RESOURCE_PRINCIPAL is auth.mode_of(settings_for(server), environ)
        explicit = settings_for(server, "oci.auth=api_key")
        assert auth.API_KEY is auth.mode_of(explicit, environ)
        from_env = config.load(None, environ={"OCI_IMAGES__OCI__AUTH": "api_key"})
        assert auth.API_KEY is auth.mode_of(from_env, environ)

    def test_a_bad_value_names_the_variable(
        self, server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The configuration check refuses it, naming OCI_CLI_AUTH and the modes."""
        monkeypatch.setenv("OCI_CLI_AUTH", "password")
        with pytest.raises(ConfigError) as info:
            validation.check(settings_for(server))
        assert "OCI_CLI_AUTH" == info.value.key
        assert "api_key" in info.value.reason


class TestSecrets:
    def test_a_wrong_or_missing_passphrase_says_so_without_secrets(
        self, server: EmulatorServer
    ) -> None:
        """The error names the variables, never the key or the passphrase; reprs hide both."""
        wrong = cli_environment(server, OCI_CLI_PASSPHRASE="not the phrase 42")
        with pytest.raises(ConfigError) as info:
            auth.resolve_credentials(settings_for(server), wrong)
        assert "OCI_CLI_KEY_CONTENT" in str(info.value)
        missing = cli_environment(server)
        del missing["OCI_CLI_PASSPHRASE"]
        with pytest.raises(ConfigError) as absent:
            auth.resolve_credentials(settings_for(server), missing)
        assert "OCI_CLI_PASSPHRASE" in str(absent.value)
        body = encrypted_pem(server).splitlines()[1]
        profile = auth.environment_profile(cli_environment(server), "api_key")
        for text in (str(info.value), repr(info.value), str(absent.value), repr(profile)):
            assert "not the phrase 42" not in text
            assert PASSPHRASE not in text
            assert body not in text

    def test_the_cert_bundle_variable_comes_before_requests(self, tmp_path: Path) -> None:
        """OCI_CLI_CERT_BUNDLE is read before REQUESTS_CA_BUNDLE, and named when unusable."""
        (tmp_path / "empty.pem").write_text("")
        environ = {
            "OCI_CLI_CERT_BUNDLE": str(tmp_path / "absent.pem"),
            "REQUESTS_CA_BUNDLE": str(tmp_path / "empty.pem"),
        }
        with pytest.raises(ConfigError) as info:
            client._ssl_context("", environ)
        assert "OCI_CLI_CERT_BUNDLE" == info.value.key


def run_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``oci-images run`` in a subprocess with only ``env`` and what Python needs."""
    base = {k: os.environ[k] for k in ("PATH", "LANG") if k in os.environ}
    return subprocess.run(
        [sys.executable, "-m", "connector", "--log-level", "debug", "run", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=base | {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)} | env,
    )


def test_a_run_configured_only_by_the_environment(server: EmulatorServer, tmp_path: Path) -> None:
    """No config file anywhere (HOME an empty folder, no --config, no OCI_CONFIG_FILE): the
    OCI_CLI_* variables with a passphrase-protected key in OCI_CLI_KEY_CONTENT, and
    OCI_IMAGES__ for the rest. The tenancy is exported exactly, with worker processes, and
    neither the key nor the passphrase appears in any output, the manifest, _runs or any file
    of the lake; nothing is written to HOME."""
    home = tmp_path / "home"
    home.mkdir()
    lake = tmp_path / "lake"
    env = cli_environment(server) | {
        "HOME": str(home),
        "OCI_IMAGES__OCI__ENDPOINT": server.endpoint_template,
        "OCI_IMAGES__OCI__REGIONS": '["subscribed"]',
        "OCI_IMAGES__FETCH__CONCURRENCY": "8",
        "OCI_IMAGES__FETCH__WORKERS": "2",
        "OCI_IMAGES__OUTPUT__URI": str(lake),
        "OCI_IMAGES__OUTPUT__SNAPSHOT_DATE": DATE,
    }
    result = run_command(env)
    assert 0 == result.returncode, result.stderr[-2000:]

    expected = multiset(expected_rows(server.world, "once"))
    assert expected == multiset([normalise_actual(r, "once") for r in arrow_rows(tmp_path)])
    manifest = manifest_of(tmp_path)
    assert ("succeeded", sum(expected.values())) == (manifest["status"], manifest["rows"])
    assert [] == list(home.iterdir())

    pem = encrypted_pem(server)
    plain = server.credentials.private_pem().decode()
    secrets = [PASSPHRASE, *pem.splitlines()[1:-1], *plain.splitlines()[1:-1]]
    runs = list((lake / "_runs").glob("*.json"))
    assert runs, "the run record is written"
    outputs = {"stdout": result.stdout, "stderr": result.stderr}
    outputs |= {str(f): f.read_bytes().decode("latin-1") for f in lake.rglob("*") if f.is_file()}
    assert any(name.endswith("_manifest.json") for name in outputs)
    for name, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"{name} holds part of the key or the passphrase"


def test_a_refused_key_exits_2_and_tells_no_secret(server: EmulatorServer, tmp_path: Path) -> None:
    """A wrong passphrase: exit 2 before any request, naming OCI_CLI_KEY_CONTENT; neither the
    key, the wrong passphrase nor the right one is printed."""
    home = tmp_path / "home"
    home.mkdir()
    before = server.stats()["requests"]
    env = cli_environment(server, OCI_CLI_PASSPHRASE="wrong-phrase-31") | {
        "HOME": str(home),
        "OCI_IMAGES__OCI__ENDPOINT": server.endpoint_template,
        "OCI_IMAGES__OUTPUT__URI": str(tmp_path / "lake"),
    }
    result = run_command(env)
    assert 2 == result.returncode
    assert "OCI_CLI_KEY_CONTENT" in result.stderr
    output = result.stdout + result.stderr
    for secret in ("wrong-phrase-31", PASSPHRASE, *encrypted_pem(server).splitlines()[1:-1]):
        assert secret not in output
    assert before == server.stats()["requests"]
    assert not (tmp_path / "lake").exists()


def test_the_api_reads_the_same_variables(
    server: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """connector.resolve_credentials, as library users call it, takes the process's OCI_CLI_*
    variables."""
    for name, value in cli_environment(server).items():
        monkeypatch.setenv(name, value)
    credentials = api.resolve_credentials(settings_for(server))
    assert server.credentials.key_id == credentials.signer.key_id()  # type: ignore[attr-defined]
    with pytest.raises(AuthError):
        auth.private_key(
            auth.Profile("x", None, None, None, None, None, None, None, key_content="-")
        )


def test_the_demo_sets_the_variables_aside(server: EmulatorServer, tmp_path: Path) -> None:
    """The demo signs with its emulator's key even where OCI_CLI_* variables name another
    tenancy's credentials (they would otherwise make a profile by themselves)."""
    env = cli_environment(server, OCI_CLI_AUTH="instance_principal", OCI_CLI_PROFILE="PROD")
    env["HOME"] = str(tmp_path)
    base = {k: os.environ[k] for k in ("PATH", "LANG") if k in os.environ}
    result = subprocess.run(
        [
            *(sys.executable, "-m", "connector", "--log-level", "warning", "demo"),
            *("--output", str(tmp_path / "demo"), "--compartments", "4", "--latency-ms", "0"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=base | {"PYTHONPATH": os.pathsep.join(p for p in sys.path if p)} | env,
    )
    assert 0 == result.returncode, result.stderr[-2000:]
    assert (tmp_path / "demo" / "images").is_dir()
