"""Where the output lives: ``output.uri`` and ``output.storage_options`` resolved to a filesystem.

===========================  =================================  ==================
URI                          filesystem                         extra to install
===========================  =================================  ==================
a path, ``file://``          ``pyarrow.fs.LocalFileSystem``     (none)
``s3://``, ``s3a://``        ``pyarrow.fs.S3FileSystem``        (none; ``s3`` for
                                                                ``profile``)
``oci://bucket@namespace/``  ``ocifs`` through fsspec           ``oci-storage``
``gs://``, ``gcs://``        ``gcsfs`` through fsspec           ``gcs``
``abfs://``, ``abfss://``,   ``adlfs`` through fsspec           ``azure``
``az://``
===========================  =================================  ==================

S3 (AWS, OCI Object Storage's S3 compatibility endpoint, MinIO) goes through pyarrow's own
S3 filesystem rather than s3fs: it ships inside pyarrow (no extra dependency), copies objects
server-side (CopyObject), uploads large files in parts from C++ threads, and it is the
filesystem pyiceberg's default FileIO uses, so the data files and an Iceberg table reach the
store through one client with one set of options. Its options are validated here, under one
vocabulary, and translated for delta-rs and pyiceberg (``delta_options``,
``iceberg_properties``). When ``storage_options`` is empty, each library reads the usual
``AWS_*`` environment variables and ``~/.aws`` files itself.

For the fsspec stores, ``storage_options`` are passed as they are: they are that library's
own keyword arguments (ocifs: ``config``, ``profile``, ``region``; gcsfs: ``project``,
``token``; adlfs: ``account_name``, ``account_key``, ...).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import importlib.util
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from connector import logs
from connector.errors import ConfigError
from connector.lake import door, s3client

log = logs.get_logger("connector.lake.storage")

URI_KEY = "output.uri"
OPTIONS_KEY = "output.storage_options"


@dataclass(frozen=True, slots=True)
class FsspecStore:
    """A store reached through fsspec: its package, the extra that installs it, its class."""

    extra: str
    module: str
    cls: str


FSSPEC_STORES: dict[str, FsspecStore] = {
    "oci": FsspecStore("oci-storage", "ocifs", "OCIFileSystem"),
    "gs": FsspecStore("gcs", "gcsfs", "GCSFileSystem"),
    "gcs": FsspecStore("gcs", "gcsfs", "GCSFileSystem"),
    "abfs": FsspecStore("azure", "adlfs", "AzureBlobFileSystem"),
    "abfss": FsspecStore("azure", "adlfs", "AzureBlobFileSystem"),
    "az": FsspecStore("azure", "adlfs", "AzureBlobFileSystem"),
}
S3_SCHEMES = ("s3", "s3a", "s3n")
SCHEMES = ("file", *S3_SCHEMES, *FSSPEC_STORES)


@dataclass(frozen=True, slots=True)
class S3Options:
    """``output.storage_options`` for ``s3://``, validated. Every field is optional."""

    endpoint_url: str = ""
    """``https://<namespace>.compat.objectstorage.<region>.oraclecloud.com``, MinIO's URL ..."""
    region: str = ""
    access_key_id: str = field(default="", repr=False)
    secret_access_key: str = field(default="", repr=False)
    session_token: str = field(default="", repr=False)
    profile: str = ""
    """A named profile of ``~/.aws/config`` (SSO, assume-role ...), resolved by botocore."""
    path_style: bool | None = None
    """Path-style addressing (``endpoint/bucket/key``): MinIO and most non-AWS stores."""
    anonymous: bool = False

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> S3Options:
        """Check the table's keys and types; ``ConfigError`` names the offending key."""
        values: dict[str, Any] = {}
        for key, value in raw.items():
            dotted = f"{OPTIONS_KEY}.{key}"
            if key not in _S3_KEYS:
                raise ConfigError(dotted, f"unknown option for s3://; known: {', '.join(_S3_KEYS)}")
            expected = _S3_KEYS[key]
            if expected is bool and not isinstance(value, bool):
                raise ConfigError(dotted, f"must be true or false, got {type(value).__name__}")
            if expected is str and not isinstance(value, str):
                raise ConfigError(dotted, f"must be a string, got {type(value).__name__}")
            values[key] = value
        url = values.get("endpoint_url", "")
        if url:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"{OPTIONS_KEY}.endpoint_url", "must be an http(s) URL")
            if parts.path not in ("", "/") or parts.query:
                raise ConfigError(
                    f"{OPTIONS_KEY}.endpoint_url", "must be the store's root URL, without a path"
                )
            values["endpoint_url"] = url.rstrip("/")
        if bool(values.get("access_key_id")) != bool(values.get("secret_access_key")):
            raise ConfigError(OPTIONS_KEY, "access_key_id and secret_access_key go together")
        if values.get("profile") and values.get("access_key_id"):
            raise ConfigError(f"{OPTIONS_KEY}.profile", "give a profile or keys, not both")
        return cls(**values)


_S3_KEYS: dict[str, type] = {
    "endpoint_url": str,
    "region": str,
    "access_key_id": str,
    "secret_access_key": str,
    "session_token": str,
    "profile": str,
    "path_style": bool,
    "anonymous": bool,
}


@dataclass(frozen=True, slots=True)
class Store:
    """The output's filesystem, its base path in it, and how to reach it from other libraries."""

    fs: pafs.FileSystem
    base: str
    """The output's root as a path of ``fs`` (``bucket/prefix`` on object stores)."""
    scheme: str
    """``file``, ``s3``, or the fsspec protocol (``oci``, ``gs``, ``abfs`` ...)."""
    s3: S3Options | None = None

    @property
    def is_local(self) -> bool:
        """Local disk: renames are atomic there, so publishing swaps directories."""
        return self.scheme == "file"

    def uri(self, path: str) -> str:
        """``path`` (of ``fs``) as a URI that delta-rs, pyiceberg, DuckDB understand."""
        return path if self.is_local else f"{self.scheme}://{path}"

    def delta_options(self) -> dict[str, str]:
        """``storage_options`` for delta-rs (object_store's ``AWS_*`` keys)."""
        if self.s3 is None:
            return {}
        options = _credentials(self.s3)
        out: dict[str, str] = {}
        if self.s3.endpoint_url:
            out["AWS_ENDPOINT_URL"] = self.s3.endpoint_url
            if self.s3.endpoint_url.startswith("http://"):
                out["AWS_ALLOW_HTTP"] = "true"
        if options.get("region"):
            out["AWS_REGION"] = options["region"]
        if options.get("access_key"):
            out["AWS_ACCESS_KEY_ID"] = options["access_key"]
            out["AWS_SECRET_ACCESS_KEY"] = options["secret_key"]
        if options.get("session_token"):
            out["AWS_SESSION_TOKEN"] = options["session_token"]
        if self.s3.path_style is not None:
            out["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = "false" if self.s3.path_style else "true"
        if self.s3.anonymous:
            out["AWS_SKIP_SIGNATURE"] = "true"
        return out

    def iceberg_properties(self) -> dict[str, str]:
        """FileIO properties for pyiceberg (``s3.*``)."""
        if self.s3 is None:
            return {}
        options = _credentials(self.s3)
        out: dict[str, str] = {}
        if self.s3.endpoint_url:
            out["s3.endpoint"] = self.s3.endpoint_url
        if options.get("region"):
            out["s3.region"] = options["region"]
        if options.get("access_key"):
            out["s3.access-key-id"] = options["access_key"]
            out["s3.secret-access-key"] = options["secret_key"]
        if options.get("session_token"):
            out["s3.session-token"] = options["session_token"]
        if self.s3.path_style is not None:
            out["s3.force-virtual-addressing"] = "false" if self.s3.path_style else "true"
        if self.s3.anonymous:
            out["s3.anonymous"] = "true"
        return out


def check(uri: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """What ``resolve`` would reject, found without building a filesystem (config validation:
    no file read, no connection)."""
    options = dict(storage_options or {})
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else "file"
    if scheme == "file":
        if options:
            raise ConfigError(OPTIONS_KEY, "applies to object stores; output.uri is a local path")
    elif scheme in S3_SCHEMES:
        S3Options.parse(options)
    elif scheme in FSSPEC_STORES:
        _fsspec_class(uri, scheme, FSSPEC_STORES[scheme])
    else:
        raise _unsupported(scheme)


def _unsupported(scheme: str) -> ConfigError:
    return ConfigError(
        URI_KEY,
        f"{scheme}:// is not a supported store; use a local path, s3://, oci://bucket@namespace/"
        ", gs:// or abfs://",
    )


def resolve(uri: str, storage_options: Mapping[str, Any] | None = None) -> Store:
    """The store for ``output.uri``; ``ConfigError`` for a scheme it cannot write to."""
    options = dict(storage_options or {})
    if "://" not in uri:
        if options:
            raise ConfigError(OPTIONS_KEY, "applies to object stores; output.uri is a local path")
        return Store(pafs.LocalFileSystem(), Path(uri).expanduser().resolve().as_posix(), "file")
    scheme = uri.split("://", 1)[0].lower()
    if scheme == "file":
        return resolve(urlsplit(uri).path or "/", storage_options)
    if scheme in S3_SCHEMES:
        return _s3(uri, S3Options.parse(options))
    if scheme in FSSPEC_STORES:
        return _fsspec(uri, scheme, FSSPEC_STORES[scheme], options)
    raise _unsupported(scheme)


def _s3(uri: str, options: S3Options) -> Store:
    location = uri.split("://", 1)[1].strip("/")
    bucket = location.split("/", 1)[0]
    if not bucket:
        raise ConfigError(URI_KEY, f"{uri!r} names no bucket (s3://bucket/prefix)")
    kwargs: dict[str, Any] = dict(_credentials(options))
    if options.endpoint_url:
        parts = urlsplit(options.endpoint_url)
        kwargs["endpoint_override"] = parts.netloc
        kwargs["scheme"] = parts.scheme
    if options.path_style is not None:
        kwargs["force_virtual_addressing"] = not options.path_style
    if options.anonymous:
        kwargs["anonymous"] = True
    try:
        fs = pafs.S3FileSystem(**kwargs)
    except (ValueError, OSError) as exc:
        raise ConfigError(OPTIONS_KEY, f"cannot set up the S3 filesystem: {exc}") from None
    return Store(fs, location, "s3", options)


def _credentials(options: S3Options) -> dict[str, str]:
    """Region and keys for pyarrow's ``S3FileSystem``; a profile is resolved through botocore."""
    out: dict[str, str] = {}
    region = options.region
    if options.access_key_id:
        out["access_key"] = options.access_key_id
        out["secret_key"] = options.secret_access_key
        if options.session_token:
            out["session_token"] = options.session_token
    elif options.profile:
        credentials, profile_region = _profile(options.profile)
        out.update(credentials)
        region = region or profile_region
    if region:
        out["region"] = region
    return out


def _profile(name: str) -> tuple[dict[str, str], str]:
    """Keys and region of a named AWS profile (SSO, assume-role and process credentials too)."""
    key = f"{OPTIONS_KEY}.profile"
    try:
        import botocore.exceptions
        import botocore.session
    except ImportError:
        raise ConfigError(key, "needs botocore: pip install 'oci-images-connector[s3]'") from None
    try:
        session = botocore.session.Session(profile=name)
        found = session.get_credentials()
        region = session.get_config_variable("region") or ""
    except botocore.exceptions.ProfileNotFound:
        raise ConfigError(key, f"no AWS profile named {name!r}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise ConfigError(key, f"profile {name!r}: {type(exc).__name__}") from None
    if found is None:
        raise ConfigError(key, f"profile {name!r} yields no credentials")
    frozen = found.get_frozen_credentials()
    credentials = {"access_key": frozen.access_key, "secret_key": frozen.secret_key}
    if frozen.token:
        credentials["session_token"] = frozen.token
    return credentials, str(region)


def _fsspec_class(uri: str, scheme: str, store: FsspecStore) -> Any:
    """The store's fsspec class; ``ConfigError`` naming the extra when it is not installed."""
    if importlib.util.find_spec(store.module) is None:
        raise ConfigError(
            URI_KEY,
            f"{scheme}:// needs {store.module}: pip install 'oci-images-connector[{store.extra}]'",
        )
    try:
        cls = getattr(importlib.import_module(store.module), store.cls)
    except ImportError as exc:  # installed, but one of its own dependencies is missing
        raise ConfigError(
            URI_KEY,
            f"{scheme}:// needs {store.module}, which failed to import ({exc}); "
            f"pip install 'oci-images-connector[{store.extra}]'",
        ) from None
    if scheme == "oci" and "@" not in uri.split("://", 1)[1].split("/", 1)[0]:
        raise ConfigError(URI_KEY, f"{uri!r}: OCI Object Storage URIs read oci://bucket@namespace/")
    return cls


def _fsspec(uri: str, scheme: str, store: FsspecStore, options: dict[str, Any]) -> Store:
    cls = _fsspec_class(uri, scheme, store)
    location = str(cls._strip_protocol(uri)).rstrip("/")
    try:
        filesystem = cls(**options)
    except TypeError as exc:
        raise ConfigError(OPTIONS_KEY, f"not accepted by {store.module}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(OPTIONS_KEY, f"{store.module}: {exc}") from None
    handler = pafs.FSSpecHandler(filesystem)  # type: ignore[abstract]  # stubs miss its methods
    return Store(pafs.PyFileSystem(handler), location, scheme)


_warned_advisory: set[str] = set()


def _fsspec_of(fs: pafs.FileSystem) -> Any | None:
    handler = getattr(fs, "handler", None)
    return getattr(handler, "fs", None)


def create_exclusive(fs: pafs.FileSystem, path: str, data: bytes) -> bool:
    """Create ``path`` holding ``data`` unless it exists; whether this call created it.

    On a local disk the file is written whole under a temporary name beside it, fsynced, then
    linked into place (``os.link`` fails with EEXIST when the name is taken): the file appears
    whole or not at all. Created with ``O_EXCL`` and then written, a full disk left an empty
    lock file that blocked its date, naming no one.
    """
    parent = path.rsplit("/", 1)[0]
    if isinstance(fs, pafs.LocalFileSystem):
        return _link_exclusive(path, parent, data)
    if isinstance(fs, pafs.S3FileSystem):
        created = _s3_create(fs, path, data)
        if created is not None:
            return created
    store = _fsspec_of(fs)
    if store is not None:
        with contextlib.suppress(Exception):
            store.makedirs(parent, exist_ok=True)
        try:
            store.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        except OSError as exc:
            # S3 answers a failed If-None-Match with 412 PreconditionFailed, which some
            # versions of s3fs surface as a plain OSError.
            if "Precondition" in str(exc) or "412" in str(exc):
                return False
            raise
        return True
    kind = type(fs).__name__
    if kind not in _warned_advisory:
        _warned_advisory.add(kind)
        reason = "this store has no conditional put here; the lock is advisory"
        if isinstance(fs, pafs.S3FileSystem) and not s3client.available():
            reason += " (pip install 'oci-images-connector[s3]' for If-None-Match puts)"
        log.warning("lock.advisory", filesystem=kind, reason=reason)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        return False
    with fs.open_output_stream(path, compression=None) as out:
        out.write(data)
    return True


def _link_exclusive(path: str, parent: str, data: bytes) -> bool:
    """``create_exclusive`` on a local disk (see there)."""
    for _ in range(10):
        os.makedirs(parent, exist_ok=True)
        temporary = f"{path}.tmp-{secrets.token_hex(4)}"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileNotFoundError:
            continue  # another process removed the (empty) folder meanwhile
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.link(temporary, path)
        except FileExistsError:
            return False
        except FileNotFoundError:
            continue  # the folder went away between the create and the link
        except OSError as exc:
            if exc.errno not in _NO_HARD_LINKS:
                raise
            return _create_then_write(path, parent, data)
        finally:
            door.discard_temporary(temporary)
        _fsync_dir(parent)
        return True
    raise FileNotFoundError(parent)


_NO_HARD_LINKS = frozenset(
    {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EMLINK, errno.EXDEV}
)
"""What ``os.link`` answers on a filesystem without hard links (some network and FUSE mounts)."""


def _create_then_write(path: str, parent: str, data: bytes) -> bool:
    """The fallback where hard links are refused: ``O_EXCL``, then write (a full disk can
    then leave a short file, which ``connector.lake.lock`` treats as dead)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(parent)
    return True


_s3_unconditional: set[tuple[Any, ...]] = set()
"""Stores that answered NotImplemented to If-None-Match: advisory from then on."""


def _s3_create(fs: pafs.S3FileSystem, path: str, data: bytes) -> bool | None:
    """PutObject with ``If-None-Match: *``: whether it created ``path``; None when no
    conditional put is possible here (no botocore, or a store that does not implement it)."""
    client = s3client.client(fs)
    if client is None:
        return None
    settings = s3client.settings(fs)
    if settings in _s3_unconditional:
        return None
    import botocore.exceptions

    bucket, _, key = path.partition("/")
    try:
        client.put_object(Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except botocore.exceptions.ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 412 or code == "PreconditionFailed":
            return False  # the key exists: held
        if status == 409 or code == "ConditionalRequestConflict":
            return False  # another conditional put of this key is under way; it wins or not
        if status == 501 or code == "NotImplemented":
            _s3_unconditional.add(settings)
            return None
        message = f"creating {path} failed: {code or status} {error.get('Message', '')}"
        raise OSError(message) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise OSError(f"creating {path} failed: {type(exc).__name__}: {exc}") from None
    return True


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- the lock --------------------------------------------------------------------------------
