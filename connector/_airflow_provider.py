"""What Airflow's providers manager reads through the ``apache_airflow_provider`` entry point:
the ``oci`` connection type and its hook, so that the type appears in the Connection form.

Airflow reads it while it initialises its configuration, inside ``import airflow``; so it lives
outside ``connector.airflow`` (which imports ``airflow.sdk``) and imports nothing of Airflow."""

from __future__ import annotations

from typing import Any

from connector._version import __version__


def get_provider_info() -> dict[str, Any]:
    """The provider description Airflow expects (the keys of its provider.yaml schema)."""
    return {
        "package-name": "oci-images-connector",
        "name": "OCI images connector",
        "description": "Export OCI Compute images (ListImages) into a data lake.",
        "versions": [__version__],
        "connection-types": [
            {"connection-type": "oci", "hook-class-name": "connector.airflow.hook.OciHook"}
        ],
    }
