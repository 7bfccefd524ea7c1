"""Limits on responses and pagination; splitting a page into records without parsing them."""

from __future__ import annotations

import gzip
import zlib
from datetime import UTC, date, datetime
from typing import Any

import orjson
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from connector import limits
from connector.errors import TransportError
from connector.pages import Page, PageError, RunInfo
from connector.sinks import SeriesPlace, SinkOptions
from connector.sinks.parquet import ParquetSeries
from connector.workers import records
from connector.workers.normalize import normalize_page
from tests.helpers import gzip_of_zeros

MiB = 1 << 20


def reader(encoding: str | None = None, **kw: int) -> limits.BodyReader:
    return limits.BodyReader(encoding, limits.Limits(**kw))


def fed(body_reader: limits.BodyReader, data: bytes, chunk: int = 65536) -> bytes:
    for start in range(0, len(data), chunk):
        body_reader.feed(data[start : start + chunk])
    return body_reader.finish()


class TestBodies:
    def test_plain_and_gzip_bodies_are_read_whole(self) -> None:
        """Within the limits, what comes out is the body as sent."""
        body = orjson.dumps([{"id": str(i)} for i in range(5000)])
        assert body == fed(reader(), body)
        assert body == fed(reader("gzip"), gzip.compress(body))
        assert body == fed(reader("deflate"), zlib.compress(body))
        raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        assert body == fed(reader("deflate"), raw.compress(body) + raw.flush())

    def test_concatenated_gzip_members_are_one_body(self) -> None:
        """gzip allows several members back to back."""
        assert b"[1,2]" == fed(reader("gzip"), gzip.compress(b"[1,") + gzip.compress(b"2]"), 3)

    def test_a_gzip_bomb_is_refused_without_inflating_it_all(self) -> None:
        """256 MiB of zeros in ~250 KB: refused once 8 MiB are out, never more decoded."""
        bomb = gzip_of_zeros(256 * MiB)
        assert len(bomb) < MiB
        body_reader = reader("gzip", max_decompressed_bytes=8 * MiB)
        with pytest.raises(limits.ResponseTooLarge, match="max_decompressed_bytes"):
            fed(body_reader, bomb)
        assert body_reader._size <= 8 * MiB + 1

    def test_a_body_over_the_wire_limit_is_refused(self) -> None:
        """Counting what arrives; and a declared length over it is refused before reading."""
        with pytest.raises(limits.ResponseTooLarge, match="max_response_bytes"):
            fed(reader(max_response_bytes=4096), b"[" + b"1," * 4096 + b"1]")
        with pytest.raises(limits.ResponseTooLarge, match="announces"):
            reader(max_response_bytes=4096).check_declared(50 * MiB)

    @pytest.mark.parametrize("encoding", ["gzip", "deflate"])
    def test_an_encoded_body_cut_short_is_a_transport_error(self, encoding: str) -> None:
        """No end of stream: the body was cut (retryable)."""
        body = orjson.dumps(list(range(20000)))
        encoded = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
        with pytest.raises(TransportError, match="cut short"):
            fed(reader(encoding), encoded[: len(encoded) // 2])

    def test_an_unknown_encoding_is_refused(self) -> None:
        """br without a decoder, or anything else, is not guessed at."""
        with pytest.raises(TransportError, match="Content-Encoding"):
            reader("br")


def test_pages_per_listing_are_capped() -> None:
    """Endless pagination fails its listing after the configured number of pages."""
    counter = limits.PageCounter(limits.Limits(max_pages_per_listing=3))
    assert [1, 2, 3] == [counter.next_page() for _ in range(3)]
    with pytest.raises(limits.TooManyPages, match="max_pages_per_listing = 3"):
        counter.next_page()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


class TestSplit:
    @settings(max_examples=200)
    @given(st.lists(json_values, max_size=6))
    def test_split_finds_each_element(self, values: list[Any]) -> None:
        """Any JSON array splits into its elements, each parsing back to the value."""
        elements = records.array_elements(orjson.dumps(values))
        assert elements is not None
        assert values == [orjson.loads(e) for e in elements]

    def test_every_cut_of_a_page_is_recognised(self) -> None:
        """Whatever byte a page is cut after (even a ] or a }), it does not split."""
        body = orjson.dumps(
            [
                {"id": "a", "name": 'tricky ]} "quoted" \\ [{', "v": [{"x": [1, 2]}]},
                {"id": "b", "tags": {"k": {"n": "]"}}, "vols": [{"i": 1}]},
            ]
        )
        assert records.array_elements(body) is not None
        for cut in range(len(body)):
            assert records.array_elements(body[:cut]) is None, body[:cut]

    @pytest.mark.parametrize(
        "body", [b"", b"{}", b"[1,]", b"[,1]", b"[1 2", b"[1]]", b"[1] x", b'["a]', b"[1}"]
    )
    def test_broken_structure_does_not_split(self, body: bytes) -> None:
        """Not an array, empty elements, text after the end, an open string."""
        assert records.array_elements(body) is None


RUN = RunInfo("run-1", date(2026, 11, 27))


def image(suffix: str) -> bytes:
    return orjson.dumps(
        {
            "id": f"ocid1.image.oc1..{suffix}",
            "compartmentId": None,
            "displayName": suffix,
            "timeCreated": "2026-01-01T00:00:00Z",
        }
    )


@pytest.mark.parametrize(
    "bad",
    [
        b'{"id":"ocid1.image.oc1..bad","deep":' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
        b'{"id":"ocid1.image.oc1..bad","deep":' + b"[" * 1020 + b"]" * 1020 + b"}",
        b'{"id":"ocid1.image.oc1..bad","displayName":"\xff\xfe"}',
        b'{"id":"ocid1.image.oc1..bad","displayName":"\\ud800"}',
    ],
    ids=["nested-5000", "nested-1020", "invalid-utf8", "lone-surrogate"],
)
def test_a_record_that_cannot_be_parsed_is_rejected_alone(bad: bytes) -> None:
    """The page's other records are kept; the bad one is a reject with its reason."""
    body = b"[" + image("a") + b"," + bad + b"," + image("c") + b"]"
    page = Page(body, "us-ashburn-1", "ocid1.compartment.oc1..x", 1, datetime.now(UTC), "req")
    result = normalize_page(page, RUN)
    assert ["ocid1.image.oc1..a", "ocid1.image.oc1..c"] == result.ids
    assert 1 == len(result.rejects)
    assert orjson.loads(result.rejects[0].to_json())["reason"]


def test_a_page_cut_short_is_a_page_error() -> None:
    """Truncation is recognised by parsing, even when the cut ends in a bracket."""
    body = b"[" + image("a") + b"," + b'{"id":"x","v":[{"a":1}]'
    page = Page(body, "us-ashburn-1", "ocid1.compartment.oc1..x", 1, datetime.now(UTC), "req")
    with pytest.raises(PageError, match="cut short"):
        normalize_page(page, RUN)


def test_parquet_rollover_crosses_file_boundaries(tmp_path: Any) -> None:
    """Rolling over at a row limit more than once writes every row, in full files, then the rest
    (the row count of the file being written starts again at each new file)."""
    place = SeriesPlace(pafs.LocalFileSystem(), str(tmp_path), "region=r", "part-")
    series = ParquetSeries(place, SinkOptions(row_group_rows=300, max_rows_per_file=1000))
    ids: list[str] = []
    for number, size in enumerate((1, 299, 700, 1, 1499, 1000)):
        chunk = [f"{number}-{i}" for i in range(size)]
        ids += [f"ocid1.image.oc1..{c}" for c in chunk]
        body = b"[" + b",".join(image(c) for c in chunk) + b"]"
        page = Page(
            body, "us-ashburn-1", "ocid1.compartment.oc1..x", number, datetime.now(UTC), "r"
        )
        series.write(normalize_page(page, RUN).batch)
    files = series.close()
    assert [1000, 1000, 1000, 500] == [f.rows for f in files]
    paths = [tmp_path / f.path.split("/", 1)[1] for f in files]
    assert ids == [i for path in paths for i in pq.read_table(path).column("id").to_pylist()]
    for path in paths:
        metadata = pq.ParquetFile(path).metadata
        assert all(metadata.row_group(g).num_rows <= 300 for g in range(metadata.num_row_groups))
