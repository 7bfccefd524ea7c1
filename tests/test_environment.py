"""Configuration from the environment: ``OCI_IMAGES__SECTION__KEY`` between the file and
``--set``, checked like the rest, and the OCI CLI's ``--profile``, ``--region``, ``--auth``."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from connector import api, cli, config
from connector.emulator import EmulatorServer, build_world
from connector.errors import ConfigError
from tests import helpers
from tests.helpers import DATE, WORLD


class TestPrecedence:
    def test_file_then_environment_then_set(self, tmp_path: Path) -> None:
        """Each source wins over the one before: defaults < file < environment < --set."""
        path = tmp_path / "c.toml"
        path.write_text("[fetch]\nconcurrency = 4\npage_size = 500\nmax_attempts = 3\n")
        environ = {
            "OCI_IMAGES__FETCH__CONCURRENCY": "8",
            "OCI_IMAGES__FETCH__PAGE_SIZE": "300",
        }
        settings = config.load(path, ["fetch.page_size=200"], environ=environ)
        assert (8, 200, 3, 60.0) == (
            settings.fetch.concurrency,
            settings.fetch.page_size,
            settings.fetch.max_attempts,
            settings.fetch.request_timeout_s,
        )
        assert {"fetch.concurrency", "fetch.page_size", "fetch.max_attempts"} == settings.explicit

    def test_environment_wins_over_the_apis_values(self) -> None:
        """The Python API's ``values`` stand where the file stands: below the environment."""
        settings = config.load(
            None,
            values={"fetch": {"concurrency": 2, "page_size": 10}},
            environ={"OCI_IMAGES__FETCH__CONCURRENCY": "5"},
        )
        assert (5, 10) == (settings.fetch.concurrency, settings.fetch.page_size)

    def test_an_empty_environ_reads_nothing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """``environ={}`` leaves the process environment out; the default reads it."""
        monkeypatch.setenv("OCI_IMAGES__FETCH__CONCURRENCY", "7")
        assert 16 == api.load_config(None, environ={}).fetch.concurrency
        assert 7 == api.load_config(None).fetch.concurrency

    def test_table_entries_join_the_files_table(self, tmp_path: Path) -> None:
        """An entry from the environment joins the file's table; --set's entry wins over it."""
        path = tmp_path / "c.toml"
        path.write_text(
            "[output.storage_options]\nendpoint_url = 'http://127.0.0.1:9'\nregion = 'a'\n"
        )
        environ = {
            "OCI_IMAGES__OUTPUT__STORAGE_OPTIONS__REGION": "eu-frankfurt-1",
            "OCI_IMAGES__OUTPUT__STORAGE_OPTIONS__PATH_STYLE": "true",
            "OCI_IMAGES__OUTPUT__STORAGE_OPTIONS__PROFILE": "lake",
        }
        settings = config.load(path, ["output.storage_options.profile=other"], environ=environ)
        assert {
            "endpoint_url": "http://127.0.0.1:9",
            "region": "eu-frankfurt-1",
            "path_style": True,
            "profile": "other",
        } == dict(settings.output.storage_options)

    def test_a_whole_table_from_the_environment(self) -> None:
        """A table-valued key takes a TOML inline table too."""
        environ = {"OCI_IMAGES__OUTPUT__STORAGE_OPTIONS": '{region = "x", anonymous = true}'}
        settings = config.load(None, environ=environ)
        assert {"region": "x", "anonymous": True} == dict(settings.output.storage_options)


class TestValues:
    def test_strings_are_taken_as_they_are(self) -> None:
        """A string key keeps the text: "true" stays a word, "007" keeps its zeros."""
        environ = {
            "OCI_IMAGES__FILTERS__DISPLAY_NAME": "true",
            "OCI_IMAGES__FILTERS__OPERATING_SYSTEM_VERSION": "007",
            "OCI_IMAGES__OUTPUT__URI": "/data/lake x",
            "OCI_IMAGES__OUTPUT__SNAPSHOT_DATE": DATE,
        }
        settings = config.load(None, environ=environ)
        assert ("true", "007", "/data/lake x", DATE) == (
            settings.filters.display_name,
            settings.filters.operating_system_version,
            settings.output.uri,
            settings.output.snapshot_date,
        )

    @pytest.mark.parametrize(
        ("variable", "text", "read"),
        [
            ("OCI_IMAGES__OUTPUT__ALLOW_PARTIAL", "true", ("output", "allow_partial", True)),
            ("OCI_IMAGES__FETCH__REQUEST_TIMEOUT_S", "2.5", ("fetch", "request_timeout_s", 2.5)),
            ("OCI_IMAGES__FETCH__WORKERS", "auto", ("fetch", "workers", "auto")),
            ("OCI_IMAGES__FETCH__WORKERS", "2", ("fetch", "workers", 2)),
            ("OCI_IMAGES__OCI__REGIONS", '["iad", "fra"]', ("oci", "regions", ("iad", "fra"))),
            ("OCI_IMAGES__OCI__REGIONS", '["subscribed"]', ("oci", "regions", ("subscribed",))),
        ],
    )
    def test_other_keys_are_read_as_toml(
        self, variable: str, text: str, read: tuple[str, str, object]
    ) -> None:
        """Numbers, booleans and lists are TOML, as with --set; a bare word is a string."""
        section, name, value = read
        assert value == getattr(getattr(config.load(None, environ={variable: text}), section), name)

    @pytest.mark.parametrize(
        ("variable", "text", "reason"),
        [
            ("OCI_IMAGES__FETCH__CONCURRENCY", "0", "from 1 to 256"),
            ("OCI_IMAGES__FETCH__CONCURRENCY", "many", "an integer"),
            ("OCI_IMAGES__OUTPUT__ALLOW_PARTIAL", "yes", "true or false"),
            ("OCI_IMAGES__OCI__REGIONS", "us-ashburn-1", "a list"),
            ("OCI_IMAGES__OUTPUT__SNAPSHOT_DATE", "27/11/2026", "YYYY-MM-DD"),
            ("OCI_IMAGES__OUTPUT__STORAGE_OPTIONS__REGION", "[1]", "string, number or boolean"),
        ],
    )
    def test_a_bad_value_names_its_variable(self, variable: str, text: str, reason: str) -> None:
        """The check is the key's own; the error names the variable that carried the value."""
        with pytest.raises(ConfigError) as info:
            config.load(None, environ={variable: text})
        assert info.value.key.startswith(variable)
        assert reason in info.value.reason


class TestUnknownVariables:
    @pytest.mark.parametrize(
        ("variable", "hint"),
        [
            ("OCI_IMAGES__FETCH__CONCURENCY", "did you mean OCI_IMAGES__FETCH__CONCURRENCY?"),
            ("OCI_IMAGES__FECTH__PAGE_SIZE", "did you mean OCI_IMAGES__FETCH__PAGE_SIZE?"),
            ("OCI_IMAGES__NOTHING", "the rule is OCI_IMAGES__SECTION__KEY"),
            ("OCI_IMAGES__FETCH__PAGE_SIZE__X", "has no entries: OCI_IMAGES__FETCH__PAGE_SIZE"),
            ("OCI_IMAGES__OUTPUT__STORAGE_OPTIONS__", "OCI_IMAGES__OUTPUT__STORAGE_OPTIONS__ENTRY"),
            ("OCI_IMAGES__OUTPUT__STORAGE_OPTIONS__A__B", "the rule is"),
        ],
    )
    def test_are_errors_naming_them(self, variable: str, hint: str) -> None:
        """A variable under OCI_IMAGES__ that names no key is refused, not ignored."""
        with pytest.raises(ConfigError) as info:
            config.load(None, environ={variable: "1"})
        assert variable == info.value.key
        assert hint in info.value.reason

    def test_single_underscore_variables_are_not_keys(self) -> None:
        """The example DAG's OCI_IMAGES_CONFIG and the like are not configuration keys."""
        environ = {"OCI_IMAGES_CONFIG": "/x.toml", "OCI_IMAGES_SHARDS": "4"}
        assert config.load(None, environ={}) == config.load(None, environ=environ)


def oci_images(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The command in a subprocess with exactly ``env`` (plus what Python needs)."""
    base = {k: os.environ[k] for k in ("PATH", "PYTHONPATH", "LANG") if k in os.environ}
    return helpers.oci_images(*args, env=base | env)


def emulator_environment(server: EmulatorServer, lake: Path) -> dict[str, str]:
    """Everything a run against ``server`` needs, as OCI_IMAGES__ variables."""
    assert server.config_file is not None
    return {
        "OCI_IMAGES__OCI__CONFIG_FILE": str(server.config_file),
        "OCI_IMAGES__OCI__ENDPOINT": server.endpoint_template,
        "OCI_IMAGES__OCI__REGIONS": '["subscribed"]',
        "OCI_IMAGES__FETCH__CONCURRENCY": "8",
        "OCI_IMAGES__FETCH__WORKERS": "0",
        "OCI_IMAGES__OUTPUT__URI": str(lake),
        "OCI_IMAGES__OUTPUT__SNAPSHOT_DATE": DATE,
    }


class TestCommand:
    def test_a_run_configured_by_the_environment_alone(
        self, make_emulator: Callable[..., EmulatorServer], tmp_path: Path
    ) -> None:
        """No --config: the environment names the emulator, the lake and the date, and the run
        publishes every subscribed region."""
        server = make_emulator(build_world(**WORLD))  # type: ignore[arg-type]
        result = oci_images("run", env=emulator_environment(server, tmp_path / "lake"))
        assert 0 == result.returncode, result.stderr
        images = tmp_path / "lake" / "images" / f"snapshot_date={DATE}"
        assert {"region=eu-frankfurt-1", "region=us-ashburn-1"} == {
            p.name for p in images.iterdir() if p.is_dir()
        }

    def test_an_unknown_variable_exits_2_before_any_request(
        self, make_emulator: Callable[..., EmulatorServer], tmp_path: Path
    ) -> None:
        """Exit 2, the variable named, nothing sent and nothing written."""
        server = make_emulator()
        env = emulator_environment(server, tmp_path / "lake")
        env["OCI_IMAGES__FETCH__PAGESIZE"] = "100"
        result = oci_images("run", env=env)
        assert 2 == result.returncode
        assert "configuration error: OCI_IMAGES__FETCH__PAGESIZE: names no" in result.stderr
        assert "OCI_IMAGES__FETCH__PAGE_SIZE?" in result.stderr
        assert 0 == server.stats()["requests"]
        assert not (tmp_path / "lake").exists()

    def test_region_flag_chooses_what_is_exported(
        self, make_emulator: Callable[..., EmulatorServer], tmp_path: Path
    ) -> None:
        """--region, as the OCI CLI's, replaces the profile's region: with oci.regions = []
        it is the one region exported."""
        server = make_emulator(build_world(**WORLD))  # type: ignore[arg-type]
        env = emulator_environment(server, tmp_path / "lake")
        env["OCI_IMAGES__OCI__REGIONS"] = "[]"
        assert "eu-frankfurt-1" != server.world.home_region
        result = oci_images("run", "--region", "eu-frankfurt-1", env=env)
        assert 0 == result.returncode, result.stderr
        images = tmp_path / "lake" / "images" / f"snapshot_date={DATE}"
        assert ["region=eu-frankfurt-1"] == [p.name for p in images.iterdir() if p.is_dir()]

    def test_flags_win_over_the_environment(
        self, make_emulator: Callable[..., EmulatorServer], tmp_path: Path
    ) -> None:
        """--profile and --auth stand with --set, over OCI_IMAGES__ variables: the session
        profile signs with its token, the environment's missing profile notwithstanding."""
        server = make_emulator()
        env = emulator_environment(server, tmp_path / "lake")
        env["OCI_IMAGES__OCI__PROFILE"] = "NOPE"
        refused = oci_images("plan", "--shards", "2", env=env)
        assert 2 == refused.returncode
        assert "profile 'NOPE' is not in" in refused.stderr
        result = oci_images(
            "plan", "--shards", "2", "--profile", "SESSION", "--auth", "security_token", env=env
        )
        assert 0 == result.returncode, result.stderr
        assert 2 == len(orjson.loads(result.stdout))
        bad = oci_images("plan", "--shards", "2", "--auth", "password", env=env)
        assert 2 == bad.returncode
        assert "oci.auth: must be one of" in bad.stderr

    def test_the_flags_are_set_overrides(self) -> None:
        """Each flag is the --set of its key, given after --set (so it wins)."""
        args = cli.build_parser().parse_args(
            ["run", "--set", "oci.profile=A", "--profile", "B", "--region", "fra"]
        )
        assert ["oci.profile=A", 'oci.profile="B"', 'oci.region="fra"'] == cli.overrides(args)
        settings = config.load(None, cli.overrides(args), environ={})
        assert ("B", "fra") == (settings.oci.profile, settings.oci.region)
