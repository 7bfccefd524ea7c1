"""Build the container image and run its checks: what ``make test-container`` does.

The checks themselves are tests (``tests/test_container.py``: the image's user and entry
point, ``oci-images demo`` on a read-only root, an export against the emulator on the host's
loopback); this script finds an engine, the base image and the build's CA bundle, builds, prints
the image's size, and runs those tests against the image it built::

    python scripts/container_image.py [--engine podman] [--base IMAGE] [--tag TAG]

A machine without a running engine (the docker CLI alone is only a client) ends here with exit
1 and says so: a container test that cannot build the image must not pass. Where the default
base (``python:3.11-slim``) cannot be pulled (a closed network), an equivalent base is built
from Debian's packages with mmdebstrap (bookworm, Python 3.11, venv) and used instead; the
script says which base it built on.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BASE = "python:3.11-slim"
DEBIAN_BASE = "localhost/oci-images-base:bookworm"
# What the Debian base holds: Python 3.11 with venv and pip (the builder's), CA certificates.
DEBIAN_PACKAGES = "python3,python3-venv,python3-pip,ca-certificates"
# Where the index is reached through a TLS-intercepting proxy, its CA is in the system bundle
# (pip's PIP_CERT says which); it reaches the build as a secret, not as a layer.
CA_BUNDLES = (os.environ.get("PIP_CERT", ""), "/etc/ssl/certs/ca-certificates.crt")


def engine_command(engine: str) -> list[str]:
    """The engine and its global options (``CONTAINER_ENGINE_FLAGS``, e.g. a storage driver)."""
    return [engine, *shlex.split(os.environ.get("CONTAINER_ENGINE_FLAGS", ""))]


def check_engine(engine: list[str]) -> str | None:
    """Why no container can be built with ``engine``, or None when it answers."""
    if shutil.which(engine[0]) is None:
        return f"{engine[0]} is not installed"
    try:
        answer = subprocess.run(
            [*engine, "info"], capture_output=True, text=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired:
        return f"`{engine[0]} info` did not answer within 60 s"
    if answer.returncode != 0:
        last = (answer.stderr.strip().splitlines() or ["no message"])[-1]
        return f"`{engine[0]} info` failed: {last}"
    return None


def has_image(engine: list[str], image: str) -> bool:
    """Whether ``image`` is in the engine's local store."""
    found = subprocess.run(
        [*engine, "image", "exists" if engine[0] == "podman" else "inspect", image],
        capture_output=True,
        check=False,
    )
    return found.returncode == 0


def debian_base(engine: list[str]) -> str:
    """An equivalent of python:3.11-slim from Debian's packages, built once and kept."""
    if has_image(engine, DEBIAN_BASE):
        return DEBIAN_BASE
    if shutil.which("mmdebstrap") is None:
        raise SystemExit(
            f"test-container: {DEFAULT_BASE} cannot be pulled and mmdebstrap is missing to build "
            "an equivalent base from Debian's packages (apt-get install mmdebstrap), or give "
            "BASE=an image with Python 3.11+"
        )
    with tempfile.TemporaryDirectory(prefix="oci-images-base-") as folder:
        tarball = Path(folder) / "base.tar"
        subprocess.run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=minbase",
                f"--include={DEBIAN_PACKAGES}",
                "bookworm",
                str(tarball),
            ],
            check=True,
        )
        subprocess.run([*engine, "import", str(tarball), DEBIAN_BASE], check=True)
    return DEBIAN_BASE


def choose_base(engine: list[str], base: str | None) -> str:
    """The base named, else python:3.11-slim if it is here or can be pulled, else Debian's."""
    if base:
        return base
    if has_image(engine, DEFAULT_BASE):
        return DEFAULT_BASE
    pulled = subprocess.run(
        [*engine, "pull", DEFAULT_BASE], capture_output=True, text=True, timeout=300, check=False
    )
    if pulled.returncode == 0:
        return DEFAULT_BASE
    print(
        f"test-container: {DEFAULT_BASE} cannot be pulled here "
        f"({(pulled.stderr.strip().splitlines() or ['no message'])[-1]}); building an "
        f"equivalent base from Debian's packages ({DEBIAN_BASE}: bookworm, {DEBIAN_PACKAGES})",
        file=sys.stderr,
    )
    return debian_base(engine)


def build(engine: list[str], base: str, tag: str, run_flags: list[str]) -> None:
    """``build`` the Dockerfile at the root with BASE, the CA bundle as a secret if any."""
    command = [*engine, "build", "--network", "host", "--build-arg", f"BASE={base}", "-t", tag]
    if engine[0] == "podman":
        # Buildah runs each RUN step in a container of its own: the same limits as `run`.
        command += [
            flag
            for option, value in itertools.pairwise(run_flags)
            if option == "--ulimit"
            for flag in (option, value)
        ]
    bundle = next((path for path in CA_BUNDLES if path and Path(path).is_file()), None)
    if bundle:
        command += ["--secret", f"id=ca_bundle,src={bundle}"]
    subprocess.run([*command, str(ROOT)], check=True)


def image_size(engine: list[str], tag: str) -> int:
    """The image's size in bytes, as the engine reports it."""
    answer = subprocess.run(
        [*engine, "image", "inspect", "--format", "{{.Size}}", tag],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(answer.stdout.strip())


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", default=os.environ.get("CONTAINER_ENGINE", "podman"))
    parser.add_argument("--base", default=os.environ.get("BASE") or None)
    parser.add_argument("--tag", default="localhost/oci-images:test")
    args = parser.parse_args(argv)
    engine = engine_command(args.engine)
    why = check_engine(engine)
    if why is not None:
        print(
            f"test-container: no container engine runs here ({why}): the image cannot be built "
            "or run on this machine; install one (apt-get install podman runc, or start a "
            "Docker engine) and run `make test-container` again.",
            file=sys.stderr,
        )
        return 1
    run_flags = shlex.split(os.environ.get("CONTAINER_RUN_FLAGS", ""))
    base = choose_base(engine, args.base)
    try:
        build(engine, base, args.tag, run_flags)
    except subprocess.CalledProcessError as error:
        print(f"test-container: the build failed (exit {error.returncode})", file=sys.stderr)
        return 1
    size = image_size(engine, args.tag)
    print(f"test-container: built {args.tag} on {base}: {size / 1e6:,.0f} MB", file=sys.stderr)
    env = os.environ | {
        "OCI_IMAGES_TEST_IMAGE": args.tag,
        "OCI_IMAGES_TEST_ENGINE": shlex.join(engine),
        "OCI_IMAGES_TEST_RUN_FLAGS": shlex.join(run_flags),
    }
    tests = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    return subprocess.run([*tests, "tests/test_container.py"], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
