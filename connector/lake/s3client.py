"""botocore's S3 client, for the two things pyarrow's ``S3FileSystem`` cannot do.

- A conditional put (``If-None-Match: *``): the lock's create-if-absent
  (``storage.create_exclusive``).
- Deleting one folder marker and nothing else (``door.remove_empty_dir``). pyarrow keeps an
  empty ``folder/`` object wherever it created a folder, and puts one back for the parent of
  whatever it deletes (its ``DeleteFile``, ``DeleteDir`` and ``Move`` end with
  ``EnsureParentExists``, which no ``S3Options`` flag turns off), so that a folder "still
  exists" once empty. Its own ``delete_dir`` would remove such a marker, but only by deleting
  everything under the prefix first, which races with another run writing there.

botocore comes with the ``s3`` extra. Without it, ``client`` is None: the lock is advisory and
the markers stay (zero-byte objects that no reader of the datasets looks at).
"""

from __future__ import annotations

from typing import Any

import pyarrow.fs as pafs

_CLIENTS: dict[tuple[Any, ...], Any] = {}


def available() -> bool:
    """Whether botocore (the ``s3`` extra) is installed."""
    try:
        import botocore.session  # noqa: F401
    except ImportError:
        return False
    return True


def settings(fs: pafs.S3FileSystem) -> tuple[Any, ...]:
    """Endpoint, region, keys, addressing and CA file of a pyarrow S3 filesystem, as its own
    pickling state records them (the only public view of its options)."""
    reduced: Any = fs.__reduce__()
    state: dict[str, Any] = reduced[1][0]
    endpoint = state.get("endpoint_override") or ""
    return (
        f"{state.get('scheme') or 'https'}://{endpoint}" if endpoint else None,
        state.get("region") or None,
        state.get("access_key") or None,
        state.get("secret_key") or None,
        state.get("session_token") or None,
        bool(state.get("anonymous")),
        # As pyarrow addresses: virtual-hosted on AWS, path-style behind an endpoint override
        # unless virtual addressing is forced.
        "virtual" if not endpoint or state.get("force_virtual_addressing") else "path",
        state.get("tls_ca_file_path") or None,
    )


def client(fs: pafs.S3FileSystem) -> Any | None:
    """A botocore S3 client reaching the same store as ``fs`` (one per process and store);
    None without botocore."""
    if not available():
        return None
    key = settings(fs)
    found = _CLIENTS.get(key)
    if found is None:
        import botocore
        import botocore.config
        import botocore.session

        endpoint, region, access, secret, token, anonymous, addressing, ca_file = key
        config = botocore.config.Config(
            s3={"addressing_style": addressing},
            retries={"mode": "standard", "max_attempts": 4},
            signature_version=botocore.UNSIGNED if anonymous else None,
        )
        found = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=endpoint,
            region_name=region,
            aws_access_key_id=access,
            aws_secret_access_key=secret,
            aws_session_token=token,
            verify=ca_file,
            config=config,
        )
        _CLIENTS[key] = found
    return found
