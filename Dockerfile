# syntax=docker/dockerfile:1
# The oci-images command in a container, for a batch job (docs/guides/batch-job.md).
#
#   docker build -t oci-images .
#   docker run --rm -e OCI_CLI_USER -e OCI_CLI_KEY_CONTENT … -e OCI_IMAGES__OUTPUT__URI oci-images run
#
# (`-e NAME` alone passes the variable's value from your environment: no secret on a command line.)
#
# Everything is installed from the hash-pinned locks (--require-hashes): the core and the extras
# a batch job uses (EXTRAS: package names of requirements.lock, with everything they need,
# chosen by scripts/lock_subset.py as `make demo` does), and the wheel built from this tree
# with the pinned build backend (requirements-build.lock). Nothing secret is copied in: the
# configuration comes from OCI_IMAGES__SECTION__KEY and OCI_CLI_* variables or a mounted file.
#
# BASE is any image with Python 3.11+ and `python3 -m venv`; both stages use it, so the venv
# copied into the final stage finds the same interpreter. Where a registry cannot be reached,
# an equivalent base built from Debian's packages serves (`make test-container` does that).
ARG BASE=python:3.11-slim

FROM ${BASE} AS builder
ARG EXTRAS="oci ocifs botocore deltalake pyiceberg prometheus-client opentelemetry-sdk opentelemetry-exporter-otlp-proto-http"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_NO_INPUT=1
WORKDIR /src
COPY requirements.lock requirements-build.lock pyproject.toml README.md LICENSE ./
COPY scripts/lock_subset.py scripts/
RUN python3 scripts/lock_subset.py requirements.lock ${EXTRAS} > requirements-image.txt \
    && python3 -m venv /opt/build \
    && python3 -m venv /opt/oci-images
# A TLS-intercepting proxy's CA, if the build needs one to reach the package index: given as
# a build secret (`--secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt`), never
# stored in a layer; without it, pip uses its own CA bundle.
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export PIP_CERT=/run/secrets/ca_bundle; fi \
    && /opt/oci-images/bin/pip install --require-hashes --no-deps -r requirements-image.txt \
    && /opt/build/bin/pip install --require-hashes --no-deps -r requirements-build.lock
COPY connector connector/
COPY benchmarks benchmarks/
COPY configs/demo.toml configs/
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels . \
    && /opt/oci-images/bin/pip install --no-deps --no-index /wheels/*.whl \
    && /opt/oci-images/bin/pip uninstall --yes pip

FROM ${BASE}
# A fixed uid and gid (10001), so that a Kubernetes securityContext (runAsUser,
# runAsNonRoot) and a mounted volume's owner can name them.
RUN groupadd --gid 10001 oci-images \
    && useradd --no-log-init --uid 10001 --gid 10001 --home-dir /home/oci-images --create-home \
       --shell /usr/sbin/nologin oci-images
COPY --from=builder /opt/oci-images /opt/oci-images
# No .pyc written at run time (pip compiled the installed code, and the root file system may be
# read-only); logs reach the collector as they are written.
ENV PATH=/opt/oci-images/bin:${PATH} \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/oci-images
ENTRYPOINT ["oci-images"]
CMD ["--help"]
