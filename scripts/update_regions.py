"""Regenerate connector/oci/_region_table.py from the installed official OCI SDK.

The connector must not depend on the SDK at run time, yet must know every region and realm the
SDK knows and build the same Compute and Identity endpoints. This script copies the SDK's
tables (``oci.regions_definitions``) and the endpoint templates that ``ComputeClient`` and
``IdentityClient`` hand to their base client, captured by constructing each client with its
``BaseClient`` replaced by a recorder (so nothing is parsed out of source text).

Run it after upgrading ``oci`` in requirements.lock: ``make regions``. The contract test
``tests/test_regions.py`` fails while the table is stale.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any
from unittest import mock

TARGET = Path(__file__).resolve().parent.parent / "connector" / "oci" / "_region_table.py"
# A config the SDK's validate_config accepts; the clients never send anything.
DUMMY_CONFIG = {
    "region": "us-ashburn-1",
    "tenancy": "ocid1.tenancy.oc1..aaaaaaaa",
    "user": "ocid1.user.oc1..aaaaaaaa",
    "fingerprint": "00:11:22:33:44:55:66:77:88:99:aa:bb:cc:dd:ee:ff",
    "key_file": "unused.pem",
}


def _client_kwargs(module: Any, client_class: str) -> dict[str, Any]:
    """The keyword arguments a service client passes to its BaseClient."""
    with mock.patch.object(module, "BaseClient") as recorder:
        getattr(module, client_class)(DUMMY_CONFIG, signer=object())
    kwargs: dict[str, Any] = dict(recorder.call_args.kwargs)
    return kwargs


def _service(
    sdk_service: str, kwargs: dict[str, Any], service_endpoints: dict[str, str]
) -> dict[str, Any]:
    """What the connector needs to build one service's endpoint as the SDK does."""
    name = kwargs.get("endpoint_service_name")
    # A region containing a dot is a whole domain to the SDK: https://<name>.<domain> when the
    # client names its endpoint service, else the legacy per-service format.
    domain_template = f"https://{name}.{{domain}}" if name else service_endpoints[sdk_service]
    return {
        "template": kwargs["service_endpoint_template"],
        "templates_per_realm": dict(kwargs.get("service_endpoint_template_per_realm") or {}),
        "dual_stack_by_default": bool(kwargs.get("service_uses_dualstack_endpoints_by_default")),
        "domain_template": domain_template,
        "base_path": kwargs["base_path"],
    }


def literal(value: Any, indent: int = 0) -> str:
    """``value`` as Python source, one entry a line, sorted, as ruff formats it."""
    if isinstance(value, dict):
        if not value:
            return "{}"
        pad = " " * (indent + 4)
        items = "".join(
            f"{pad}{json.dumps(k)}: {literal(v, indent + 4)},\n" for k, v in sorted(value.items())
        )
        return "{\n" + items + " " * indent + "}"
    if isinstance(value, bool):
        return repr(value)
    return json.dumps(value)


def render() -> str:
    """The generated module's text."""
    import oci
    import oci.core.compute_client
    import oci.identity.identity_client
    import oci.resource_search.resource_search_client
    from oci import regions_definitions, service_endpoints

    services = {
        "compute": _service(
            "compute",
            _client_kwargs(oci.core.compute_client, "ComputeClient"),
            service_endpoints.SERVICE_ENDPOINTS,
        ),
        "identity": _service(
            "identity",
            _client_kwargs(oci.identity.identity_client, "IdentityClient"),
            service_endpoints.SERVICE_ENDPOINTS,
        ),
        "query": _service(
            "resource_search",
            _client_kwargs(oci.resource_search.resource_search_client, "ResourceSearchClient"),
            service_endpoints.SERVICE_ENDPOINTS,
        ),
    }

    return f'''"""Regions, realms and endpoint templates, generated from the official OCI SDK.

Do not edit: regenerate with ``make regions`` (scripts/update_regions.py).
"""

SDK_VERSION = {json.dumps(oci.__version__)}

# Short code (regionKey) -> region identifier.
SHORT_NAMES: dict[str, str] = {literal(dict(regions_definitions.REGIONS_SHORT_NAMES))}

# Region identifier -> realm.
REGION_REALMS: dict[str, str] = {literal(dict(regions_definitions.REGION_REALMS))}

# Realm -> second-level domain.
REALMS: dict[str, str] = {literal(dict(regions_definitions.REALMS))}

# Service -> how its clients build their endpoint.
SERVICES: dict[str, dict[str, object]] = {literal(services)}
'''


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the table is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET.name} is stale: run make regions", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
