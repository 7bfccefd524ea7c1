"""Configuration: every bad value exits 2, names the key, and sends no request."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from connector import cli, config
from connector.emulator import EmulatorServer
from connector.errors import ConfigError


def base_overrides(server: EmulatorServer, tmp_path: Path, text: str) -> list[str]:
    """--set arguments pointing at the emulator, for every key the bad file does not set."""
    try:
        given = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        given = {}
    base = {
        ("oci", "config_file"): f'"{server.config_file}"',
        ("oci", "endpoint"): f'"{server.endpoint_template}"',
        ("output", "uri"): f'"{tmp_path / "lake"}"',
    }
    sets = []
    for (section, key), value in base.items():
        if key not in given.get(section, {}):
            sets += ["--set", f"{section}.{key}={value}"]
    return sets


BAD = [
    ("[oci]\nauth = 'password'\n", "oci.auth", "must be one of"),
    ("[oci]\nregions = ['Ashburn']\n", "oci.regions[0]", "not a region name"),
    ("[oci]\nregions = 'us-ashburn-1'\n", "oci.regions", "must be a list"),
    ("[oci]\nendpoint = 'ftp://x'\n", "oci.endpoint", "http(s) URL"),
    ("[oci]\nendpoint = 'http://10.1.2.3/{region}'\n", "oci.endpoint", "loopback"),
    ("[oci]\nca_bundle = '/nonexistent/ca.pem'\n", "oci.ca_bundle", "does not exist"),
    ("[oci]\nprofile = 'NOPE'\n", "oci.profile", "not in"),
    ("[oci]\nconfig_file = '/nonexistent/oci/config'\n", "oci.config_file", "does not exist"),
    ("[scope]\ntenancy = 'ocid1.user.oc1..aaaa'\n", "scope.tenancy", "not an OCID of a tenancy"),
    ("[scope]\ncompartments = ['not-an-ocid']\n", "scope.compartments[0]", "not an OCID"),
    ("[scope]\nexclude = ['ocid1.compartment.oc1..aaaa', 'ocid1.compartment.oc1..aaaa']\n", "scope.exclude", "twice"),
    ("[scope]\ndiscover = false\n", "scope.compartments", "nothing to export"),
    ("[scope]\ndiscover = 'yes'\n", "scope.discover", "true or false"),
    ("[filters]\nlifecycle_state = 'RUNNING'\n", "filters.lifecycle_state", "must be one of"),
    ("[filters]\nsort_by = 'SIZE'\n", "filters.sort_by", "must be one of"),
    ("[filters]\nsort_order = 'UP'\n", "filters.sort_order", "must be one of"),
    ("[filters]\ndisplay_name = '" + "x" * 256 + "'\n", "filters.display_name", "1 to 255"),
    ("[filters]\ndisplayname = 'a'\n", "filters.displayname", "did you mean 'display_name'"),
    ("[fetch]\npage_size = 1001\n", "fetch.page_size", "from 1 to 1000"),
    ("[fetch]\nconcurrency = 0\n", "fetch.concurrency", "from 1 to 256"),
    ("[fetch]\nconcurrency = 4.5\n", "fetch.concurrency", "an integer"),
    ("[fetch]\nmax_attempts = true\n", "fetch.max_attempts", "not a boolean"),
    ("[fetch]\nrequest_timeout_s = 0\n", "fetch.request_timeout_s", "more than 0"),
    ("[fetch]\nplatform_images = 'twice'\n", "fetch.platform_images", "once, every, skip"),
    ("[fecth]\nconcurrency = 4\n", "fecth", "did you mean 'fetch'"),
    ("[output]\nformat = 'csv'\n", "output.format", "parquet, ndjson"),
    ("[output]\nformat = 'ndjson'\ncompression = 'zstd'\n", "output.compression", "does not apply to ndjson"),
    ("[output]\nsnapshot_date = '2026-02-30'\n", "output.snapshot_date", "YYYY-MM-DD"),
    ("[output]\nsnapshot_date = '27/11/2026'\n", "output.snapshot_date", "YYYY-MM-DD"),
    ("[output]\nallow_partial = 1\n", "output.allow_partial", "true or false"),
    ("[output\nuri = 'x'\n", "--config", "line 1"),
    ("[output]\nallow_partial = true\nmin_complete_ratio = nan\n", "output.min_complete_ratio", "finite"),
    ("[fetch]\nrequest_timeout_s = inf\n", "fetch.request_timeout_s", "finite"),
    ("[fetch]\nmax_requests_per_second = nan\n", "fetch.max_requests_per_second", "finite"),
    ("[fetch]\nrun_deadline_s = nan\n", "fetch.run_deadline_s", "finite"),
    ("[fetch]\nworker_heartbeat_s = -inf\n", "fetch.worker_heartbeat_s", "finite"),
    ("[output.storage_options]\nconnect_timeout = nan\n", "output.storage_options.connect_timeout", "finite"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "key", "reason"), BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)]
)
def test_bad_configuration_exits_2_without_requests(
    make_emulator: Callable[..., EmulatorServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: str,
    key: str,
    reason: str,
) -> None:
    """The command exits 2, stderr names the key and the reason, and nothing reaches the service."""
    server = make_emulator()
    path = tmp_path / "config.toml"
    path.write_text(extra)
    assert 2 == cli.main(["run", "--config", str(path), *base_overrides(server, tmp_path, extra)])
    err = capsys.readouterr().err
    assert f"configuration error: {key}" in err
    assert reason in err
    assert 0 == server.stats()["requests"]
    assert not (tmp_path / "lake").exists()


def test_set_overrides_are_toml_typed(tmp_path: Path) -> None:
    """--set values parse as TOML (numbers, booleans, lists); bare words are strings."""
    settings = config.load(
        None,
        [
            "fetch.concurrency=4",
            "output.allow_partial=true",
            'oci.regions=["us-phoenix-1"]',
            "output.uri=/tmp/x y",
            "filters.lifecycle_state=available",
        ],
    )
    assert (4, True, ("us-phoenix-1",), "/tmp/x y") == (
        settings.fetch.concurrency,
        settings.output.allow_partial,
        settings.oci.regions,
        settings.output.uri,
    )
    assert {"lifecycleState": "AVAILABLE"} == settings.filters.query_params()


def test_set_rejects_malformed_override() -> None:
    """An override without section.key= is a usage error naming --set."""
    with pytest.raises(ConfigError) as info:
        config.load(None, ["concurrency"])
    assert "--set" == info.value.key


FLOAT_KEYS = [
    f"{section}.{name}"
    for section, keys in config.KEYS.items()
    for name, spec in keys.items()
    if isinstance(spec.default, float)
]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "+nan"])
@pytest.mark.parametrize("dotted", FLOAT_KEYS)
def test_every_float_key_refuses_what_is_not_finite(dotted: str, value: str) -> None:
    """Every comparison with NaN is false, so a NaN bound would switch its check off (a NaN
    ``min_complete_ratio`` published an empty partition over a good one): each float key
    refuses NaN and the infinities by name, whatever its range."""
    with pytest.raises(ConfigError) as info:
        config.load(None, [f"{dotted}={value}"])
    assert (dotted, True) == (info.value.key, "finite" in info.value.reason)


def test_the_float_keys_are_found() -> None:
    """The parametrization above is not empty: the keys the adversarial test named are in it."""
    assert {
        "output.min_complete_ratio",
        "fetch.request_timeout_s",
        "fetch.max_requests_per_second",
        "fetch.run_deadline_s",
    } <= set(FLOAT_KEYS)


def test_a_nan_floor_on_the_command_line_exits_2(
    make_emulator: Callable[..., EmulatorServer],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``--set output.min_complete_ratio=nan`` exits 2 naming the key, before any request."""
    server = make_emulator()
    path = tmp_path / "config.toml"
    path.write_text("[output]\nallow_partial = true\n")
    sets = [*base_overrides(server, tmp_path, ""), "--set", "output.min_complete_ratio=nan"]
    assert 2 == cli.main(["run", "--config", str(path), *sets])
    err = capsys.readouterr().err
    assert "configuration error: output.min_complete_ratio: must be a finite number" in err
    assert 0 == server.stats()["requests"]


def test_defaults_match_the_design() -> None:
    """With no file, every key has its documented default."""
    settings = config.load(None)
    assert ("api_key", (), "", True) == (
        settings.oci.auth,
        settings.oci.regions,
        settings.oci.endpoint,
        settings.scope.discover,
    )
    assert (16, 1000, 8, 60.0, 0.0, "once") == tuple(
        getattr(settings.fetch, k)
        for k in (
            "concurrency",
            "page_size",
            "max_attempts",
            "request_timeout_s",
            "max_requests_per_second",
            "platform_images",
        )
    )
    assert ("out", "parquet", "zstd", False) == (
        settings.output.uri,
        settings.output.format,
        settings.output.effective_compression,
        settings.output.allow_partial,
    )
    assert "none" == config.load(None, ["output.format=ndjson"]).output.effective_compression


def test_example_config_is_valid() -> None:
    """configs/example.toml, every key commented, validates."""
    root = Path(__file__).resolve().parent.parent
    settings = config.load(root / "configs" / "example.toml")
    assert settings.oci.regions
    assert set(config.KEYS) == set(settings.as_dict())
    # A copied example exports every image: it filters nothing (DISABLED images included).
    assert settings.filters == config.FilterSettings()


def test_snapshot_date_accepts_a_toml_date() -> None:
    """--set output.snapshot_date=2026-11-27 (a TOML date, as Airflow's {{ ds }} renders) works."""
    assert (
        "2026-11-27" == config.load(None, ["output.snapshot_date=2026-11-27"]).output.snapshot_date
    )


def test_airflow_example_compiles() -> None:
    """configs/airflow_dag.py is valid Python (Airflow itself is not installed here)."""
    source = (Path(__file__).resolve().parent.parent / "configs" / "airflow_dag.py").read_text()
    compile(source, "airflow_dag.py", "exec")


def test_configuration_imports_no_layer_above_it() -> None:
    """Loading any configuration imports nothing from the OCI side, the lake, the sinks or the
    workers: the checks that need them are connector.validation's."""
    code = (
        "import sys\n"
        "from connector import config\n"
        "config.load(None, ['output.uri=s3://b/lake', 'output.table_format=iceberg', "
        "'output.storage_options.region=x', 'oci.regions=[\"iad\", \"pca.example.com\"]', "
        "'oci.flavor=pca', 'filters.sort_by=NAME'])\n"
        "print(sorted(m for m in sys.modules if m.startswith(('connector.oci', "
        "'connector.lake', 'connector.sinks', 'connector.workers'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "[]" == out.strip()


def test_dotted_override_of_a_plain_key_is_unknown() -> None:
    """--set section.key.entry=value is for table-valued keys; under any other key it is an
    unknown key, named in full."""
    with pytest.raises(ConfigError) as info:
        config.load(None, ["fetch.page_size.x=1"])
    assert "fetch.page_size.x" == info.value.key
