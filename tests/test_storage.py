"""output.uri and output.storage_options resolved to filesystems; bad ones are config errors."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from connector import (
    cli,
    config,
    validation,
)
from connector.errors import ConfigError
from connector.lake import storage

S3_OPTIONS = {
    "endpoint_url": "https://axaxnpcrorw5.compat.objectstorage.us-ashburn-1.oraclecloud.com",
    "region": "us-ashburn-1",
    "access_key_id": "AKIAEXAMPLEKEY",
    "secret_access_key": "very-secret-value",
    "path_style": True,
}


class TestResolve:
    def test_local_path(self, tmp_path: Path) -> None:
        """A path is local disk, absolute, and publishes by renames."""
        store = storage.resolve(str(tmp_path / "lake"))
        assert (str(tmp_path / "lake"), "file", True) == (store.base, store.scheme, store.is_local)
        assert isinstance(store.fs, pafs.LocalFileSystem)

    def test_file_uri(self, tmp_path: Path) -> None:
        """file:///path is the same local directory."""
        assert str(tmp_path) == storage.resolve(f"file://{tmp_path}").base

    @pytest.mark.parametrize("scheme", ["s3", "s3a"])
    def test_s3_goes_to_pyarrow_with_the_options(self, scheme: str) -> None:
        """s3:// and Hadoop's s3a:// use pyarrow's S3 filesystem with endpoint, region, path style."""
        store = storage.resolve(f"{scheme}://bucket/some/prefix/", S3_OPTIONS)
        assert ("bucket/some/prefix", "s3") == (store.base, store.scheme)
        assert isinstance(store.fs, pafs.S3FileSystem)
        assert "us-ashburn-1" == store.fs.region
        assert "s3://bucket/some/prefix/images" == store.uri(f"{store.base}/images")

    def test_options_translate_for_delta_and_iceberg(self) -> None:
        """The one vocabulary becomes delta-rs's AWS_* keys and pyiceberg's s3.* properties."""
        store = storage.resolve(
            "s3://bucket/p", {**S3_OPTIONS, "endpoint_url": "http://127.0.0.1:9000"}
        )
        assert {
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": "us-ashburn-1",
            "AWS_ACCESS_KEY_ID": "AKIAEXAMPLEKEY",
            "AWS_SECRET_ACCESS_KEY": "very-secret-value",
            "AWS_VIRTUAL_HOSTED_STYLE_REQUEST": "false",
        } == store.delta_options()
        assert {
            "s3.endpoint": "http://127.0.0.1:9000",
            "s3.region": "us-ashburn-1",
            "s3.access-key-id": "AKIAEXAMPLEKEY",
            "s3.secret-access-key": "very-secret-value",
            "s3.force-virtual-addressing": "false",
        } == store.iceberg_properties()

    def test_without_options_the_environment_applies(self) -> None:
        """No storage_options: nothing is passed on, so each library reads AWS_* itself."""
        store = storage.resolve("s3://bucket/p")
        assert ({}, {}) == (store.delta_options(), store.iceberg_properties())

    def test_secrets_stay_out_of_repr(self) -> None:
        """Keys never show in a repr (logs, tracebacks)."""
        options = storage.S3Options.parse(S3_OPTIONS)
        assert "very-secret-value" not in repr(options)
        assert "AKIAEXAMPLEKEY" not in repr(options)

    @pytest.mark.parametrize(
        ("options", "key", "reason"),
        [
            ({"endpoint": "https://x"}, "output.storage_options.endpoint", "unknown option"),
            ({"path_style": "yes"}, "output.storage_options.path_style", "true or false"),
            ({"endpoint_url": "minio:9000"}, "output.storage_options.endpoint_url", "http(s) URL"),
            (
                {"endpoint_url": "https://h/bucket"},
                "output.storage_options.endpoint_url",
                "without a path",
            ),
            ({"access_key_id": "AKIA"}, "output.storage_options", "go together"),
            (
                {"profile": "p", "access_key_id": "a", "secret_access_key": "b"},
                "output.storage_options.profile",
                "not both",
            ),
        ],
        ids=["unknown", "bool", "not-url", "path", "half-keys", "profile-and-keys"],
    )
    def test_bad_s3_options(self, options: dict[str, object], key: str, reason: str) -> None:
        """Each bad option is a ConfigError naming it."""
        with pytest.raises(ConfigError) as caught:
            storage.resolve("s3://bucket/p", options)
        assert key == caught.value.key
        assert reason in caught.value.reason

    def test_unknown_profile(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A profile that ~/.aws does not define is a ConfigError naming storage_options.profile."""
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
        with pytest.raises(ConfigError, match="no AWS profile named 'nightly'") as caught:
            storage.resolve("s3://bucket/p", {"profile": "nightly"})
        assert "output.storage_options.profile" == caught.value.key

    def test_profile_keys_and_region(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A named profile's keys and region reach the filesystem and the table libraries."""
        (tmp_path / "config").write_text("[profile nightly]\nregion = eu-frankfurt-1\n")
        (tmp_path / "credentials").write_text(
            "[nightly]\naws_access_key_id = AKIAPROFILE\naws_secret_access_key = s3cr3t\n"
        )
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
        store = storage.resolve("s3://bucket/p", {"profile": "nightly"})
        assert isinstance(store.fs, pafs.S3FileSystem)
        assert "eu-frankfurt-1" == store.fs.region
        options = store.delta_options()
        assert ("AKIAPROFILE", "s3cr3t") == (
            options["AWS_ACCESS_KEY_ID"],
            options["AWS_SECRET_ACCESS_KEY"],
        )

    def test_oci_uri_through_ocifs(self, tmp_path: Path) -> None:
        """oci://bucket@namespace/prefix resolves through ocifs, path bucket@namespace/prefix."""
        store = storage.resolve(
            "oci://images@axaxnpcrorw5/lake/", {"config": str(_oci_config(tmp_path))}
        )
        assert ("images@axaxnpcrorw5/lake", "oci", False) == (
            store.base,
            store.scheme,
            store.is_local,
        )
        assert isinstance(store.fs, pafs.PyFileSystem)

    def test_oci_uri_needs_a_namespace(self) -> None:
        """oci://bucket/ without @namespace says how OCI URIs read."""
        with pytest.raises(ConfigError, match="oci://bucket@namespace/"):
            storage.resolve("oci://images/lake")

    @pytest.mark.parametrize(
        ("uri", "options", "module"),
        [
            ("gs://bucket/lake", {"token": "anon"}, "gcsfs"),
            ("abfs://container/lake", {"account_name": "lakeaccount", "anon": True}, "adlfs"),
            ("az://container/lake", {"account_name": "lakeaccount", "anon": True}, "adlfs"),
        ],
    )
    def test_fsspec_stores(self, uri: str, options: dict[str, object], module: str) -> None:
        """gs:// and abfs:// resolve through their fsspec package, options passed as they are."""
        store = storage.resolve(uri, options)
        assert isinstance(store.fs, pafs.PyFileSystem)
        handler = store.fs.handler
        assert isinstance(handler, pafs.FSSpecHandler)
        assert module == type(handler.fs).__module__.split(".")[0]

    @pytest.mark.parametrize(
        ("uri", "module", "extra"),
        [
            ("oci://b@ns/lake", "ocifs", "oci-storage"),
            ("gs://b/lake", "gcsfs", "gcs"),
            ("abfs://c/lake", "adlfs", "azure"),
        ],
    )
    def test_missing_package_names_the_extra(
        self, uri: str, module: str, extra: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without the store's package: a ConfigError on output.uri naming the extra."""
        monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
        with pytest.raises(ConfigError) as caught:
            storage.resolve(uri)
        assert "output.uri" == caught.value.key
        assert f"pip install 'oci-images-connector[{extra}]'" in caught.value.reason
        assert module in caught.value.reason

    def test_profile_without_botocore_names_the_extra(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """storage_options.profile needs botocore: the error names the s3 extra."""
        monkeypatch.setitem(sys.modules, "botocore", None)
        monkeypatch.setitem(sys.modules, "botocore.session", None)
        with pytest.raises(ConfigError, match=r"oci-images-connector\[s3\]"):
            storage.resolve("s3://bucket/p", {"profile": "nightly"})

    @pytest.mark.parametrize("uri", ["memory://lake", "ftp://host/lake", "hdfs://nn/lake"])
    def test_unsupported_scheme(self, uri: str) -> None:
        """A scheme the connector does not write to is a ConfigError, not a traceback."""
        with pytest.raises(ConfigError, match="not a supported store") as caught:
            storage.resolve(uri)
        assert "output.uri" == caught.value.key

    def test_options_for_a_local_path(self, tmp_path: Path) -> None:
        """storage_options beside a local path are a mistake worth saying."""
        with pytest.raises(ConfigError, match="local path"):
            storage.resolve(str(tmp_path), {"region": "x"})


def _oci_config(folder: Path) -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = folder / "key.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path = folder / "config"
    path.write_text(
        "[DEFAULT]\n"
        "user=ocid1.user.oc1..aaaaaaaaexample\n"
        "fingerprint=11:22:33:44:55:66:77:88:99:00:aa:bb:cc:dd:ee:ff\n"
        "tenancy=ocid1.tenancy.oc1..aaaaaaaaexample\n"
        "region=us-ashburn-1\n"
        f"key_file={pem}\n"
    )
    return path


class TestConfigKeys:
    def test_nested_override(self) -> None:
        """--set output.storage_options.endpoint_url=... sets one entry of the table."""
        settings = config.load(
            None,
            [
                "output.uri=s3://bucket/lake",
                "output.storage_options.endpoint_url=http://127.0.0.1:9000",
                "output.storage_options.path_style=true",
            ],
        )
        assert {
            "endpoint_url": "http://127.0.0.1:9000",
            "path_style": True,
        } == settings.output.storage_options

    @pytest.mark.parametrize(
        ("overrides", "key"),
        [
            (
                ["output.uri=s3://b/l", "output.storage_options.colour=1"],
                "output.storage_options.colour",
            ),
            (["output.storage_options.region=x"], "output.storage_options"),
            (["output.table_format=hudi"], "output.table_format"),
            (["output.table_format=delta", "output.format=ndjson"], "output.format"),
            (["output.catalog.type=sql"], "output.catalog"),
            (["output.table_format=iceberg", "output.catalog.type=hive"], "output.catalog.type"),
        ],
        ids=[
            "unknown-s3-option",
            "options-on-local",
            "format",
            "ndjson-table",
            "catalog-without-iceberg",
            "catalog-type",
        ],
    )
    def test_bad_lake_settings(self, overrides: list[str], key: str) -> None:
        """Each is a ConfigError naming the key, raised before anything runs."""
        with pytest.raises(ConfigError) as caught:
            validation.check(config.load(None, overrides))
        assert key == caught.value.key

    @pytest.mark.parametrize(
        ("table_format", "extra", "module"),
        [("delta", "delta", "deltalake"), ("iceberg", "iceberg", "pyiceberg")],
    )
    def test_table_format_without_its_package(
        self, table_format: str, extra: str, module: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A table format whose library is missing: a ConfigError naming the extra."""
        monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
        with pytest.raises(ConfigError) as caught:
            validation.check(config.load(None, [f"output.table_format={table_format}"]))
        assert "output.table_format" == caught.value.key
        assert f"needs {module}: pip install 'oci-images-connector[{extra}]'" == caught.value.reason

    def test_cli_exits_2_for_a_store_without_its_package(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """`oci-images run` with gs:// and no gcsfs: exit 2, the extra named, no traceback."""
        path = tmp_path / "c.toml"
        path.write_text(
            '[oci]\nregions = ["us-ashburn-1"]\nendpoint = "http://127.0.0.1:9/{region}"\n'
            '[scope]\ntenancy = "ocid1.tenancy.oc1..aaaaaaaaexample"\n'
            '[output]\nuri = "gs://bucket/lake"\n'
        )
        monkeypatch.setitem(sys.modules, "gcsfs", None)
        monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
        code = cli.main(["run", "--config", str(path)])
        err = capsys.readouterr().err
        assert 2 == code
        assert "oci-images-connector[gcs]" in err
        assert "Traceback" not in err
