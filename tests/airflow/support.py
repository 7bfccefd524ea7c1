"""Helpers shared by the Airflow tests: the emulator's key as Connection extras, a signed
discovery with given credentials, and the ``oci`` form's fields as Airflow lists them."""

from __future__ import annotations

import configparser
from pathlib import Path
from typing import Any

import connector
from connector.emulator import EmulatorServer


def profile(server: EmulatorServer) -> dict[str, str]:
    """The emulator's API key as Connection extras (the OCI SDK's key names)."""
    assert server.config_file is not None
    parser = configparser.ConfigParser()
    parser.read(server.config_file)
    default = parser["DEFAULT"]
    return {
        "user": default["user"],
        "fingerprint": default["fingerprint"],
        "tenancy": default["tenancy"],
        "region": default["region"],
        "private_key_content": Path(default["key_file"]).read_text(),
    }


def lists_compartments(server: EmulatorServer, credentials: connector.Credentials) -> int:
    """Plan against the emulator with ``credentials`` (discovery signs real requests);
    returns the listings found."""
    settings = connector.load_config(
        values={"oci": {"endpoint": server.endpoint_template}, "output": {"uri": "unused"}}
    )
    plan = connector.plan(settings, 1, credentials=credentials)
    return sum(s.listings for s in plan.shards)


def form_fields() -> dict[str, Any]:
    """The ``oci`` form's extra fields as Airflow's providers manager lists them, by name."""
    from airflow.providers_manager import ProvidersManager

    widgets = ProvidersManager().connection_form_widgets
    return {w.field_name: w for k, w in widgets.items() if k.startswith("extra__oci__")}
