"""Commit verification: every listed file exists with its size and row count."""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from connector.lake import verify

FS = pafs.LocalFileSystem()


def parquet_file(path: Path, rows: int) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": [str(i) for i in range(rows)]}), path)
    return {"path": path.name, "rows": rows, "bytes": path.stat().st_size}


def ndjson_file(path: Path, rows: int, compress: bool) -> dict[str, Any]:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = b"".join(b'{"id":"%d"}\n' % i for i in range(rows))
    path.write_bytes(gzip.compress(data) if compress else data)
    return {"path": path.name, "rows": rows, "bytes": path.stat().st_size}


class TestVerify:
    def test_files_that_match_their_manifest_pass(self, tmp_path: Path) -> None:
        """Parquet, NDJSON and gzipped NDJSON are counted as written."""
        entries = [
            parquet_file(tmp_path / "a.parquet", 1000),
            ndjson_file(tmp_path / "b.ndjson", 17, False),
            ndjson_file(tmp_path / "c.ndjson.gz", 23, True),
        ]
        checked = verify.verify_files(FS, str(tmp_path), entries, "0/1")
        assert (3, 1040) == (checked.files, checked.rows)

    def test_a_missing_file_names_shard_and_file(self, tmp_path: Path) -> None:
        """A listed file that is not there stops the commit."""
        entry = {"path": "region=x/part-00000.parquet", "rows": 1, "bytes": 10}
        with pytest.raises(verify.VerificationError) as caught:
            verify.verify_files(FS, str(tmp_path), [entry], "2/4")
        assert "shard 2/4: region=x/part-00000.parquet: is missing" in str(caught.value)

    def test_a_file_of_another_size_fails(self, tmp_path: Path) -> None:
        """Size is checked first (a re-run shard that was killed mid-file)."""
        entry = parquet_file(tmp_path / "a.parquet", 10)
        entry["bytes"] += 1
        with pytest.raises(verify.VerificationError, match="bytes"):
            verify.verify_files(FS, str(tmp_path), [entry], "0/1")

    @pytest.mark.parametrize("kind", ["parquet", "ndjson", "ndjson.gz"])
    def test_a_file_with_other_rows_fails(self, tmp_path: Path, kind: str) -> None:
        """The footer or the line count must equal the manifest's rows."""
        if kind == "parquet":
            entry = parquet_file(tmp_path / "a.parquet", 10)
        else:
            entry = ndjson_file(tmp_path / f"a.{kind}", 10, kind.endswith("gz"))
        entry["rows"] = 11
        with pytest.raises(verify.VerificationError, match="holds 10 rows"):
            verify.verify_files(FS, str(tmp_path), [entry], "0/1")

    def test_a_cut_parquet_file_fails(self, tmp_path: Path) -> None:
        """A Parquet file with its footer cut off cannot be read, whatever its listed size."""
        entry = parquet_file(tmp_path / "a.parquet", 100)
        data = (tmp_path / "a.parquet").read_bytes()
        (tmp_path / "a.parquet").write_bytes(data[: len(data) // 2])
        entry["bytes"] = len(data) // 2
        with pytest.raises(verify.VerificationError, match="cannot be read"):
            verify.verify_files(FS, str(tmp_path), [entry], "0/1")

    def test_a_cut_gzip_file_fails(self, tmp_path: Path) -> None:
        """A gzip stream without its end cannot be counted."""
        entry = ndjson_file(tmp_path / "a.ndjson.gz", 5000, True)
        data = (tmp_path / "a.ndjson.gz").read_bytes()
        (tmp_path / "a.ndjson.gz").write_bytes(data[:-20])
        entry["bytes"] = len(data) - 20
        with pytest.raises(verify.VerificationError):
            verify.verify_files(FS, str(tmp_path), [entry], "0/1")

    def test_a_listed_path_cannot_climb_out(self, tmp_path: Path) -> None:
        """A manifest naming ../something is refused before anything is read."""
        with pytest.raises(verify.VerificationError, match="cannot be a file"):
            verify.verify_files(FS, str(tmp_path), [{"path": "../x", "rows": 0, "bytes": 0}], "0/1")

    def test_rejects_are_counted_as_lines(self, tmp_path: Path) -> None:
        """A rejects file (``.jsonl``, whatever the format) holds as many rejects as lines."""
        entry = ndjson_file(tmp_path / "_rejects" / "rejects-00000.jsonl", 4, False)
        entry["path"] = "_rejects/rejects-00000.jsonl"
        assert 4 == verify.verify_files(FS, str(tmp_path), [entry], "0/1").rows

    def test_a_file_of_no_known_format_fails(self, tmp_path: Path) -> None:
        """A listed file that no registered format names so cannot be counted: it stops the
        commit rather than being taken for another format."""
        path = tmp_path / "a.csv"
        path.write_bytes(b"id\n1\n")
        entry = {"path": "a.csv", "rows": 1, "bytes": path.stat().st_size}
        with pytest.raises(verify.VerificationError, match="no registered output format"):
            verify.verify_files(FS, str(tmp_path), [entry], "0/1")
