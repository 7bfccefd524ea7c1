"""Helpers shared by test modules (fixtures are in conftest.py)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from connector.emulator import EmulatorServer

DATE = "2026-11-27"
WORLD = {
    "seed": 21,
    "compartments": 40,
    "regions": ("us-ashburn-1", "eu-frankfurt-1"),
    "platform_images": 20,
    "custom_scale": 0.3,
}


def write_config(tmp_path: Path, server: EmulatorServer, **sections: dict[str, Any]) -> Path:
    """A config pointing at the emulator; ``sections`` override or add keys."""
    base = emulator_config(
        server,
        fetch={"concurrency": 8, "page_size": 1000},
        output={"uri": str(tmp_path / "lake"), "snapshot_date": DATE},
    )
    return write_toml(tmp_path / "config.toml", base, sections)


def emulator_config(
    server: EmulatorServer, **sections: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """Settings that point at ``server`` (every subscribed region), then ``sections``."""
    oci = {
        "config_file": str(server.config_file),
        "endpoint": server.endpoint_template,
        "regions": ["subscribed"],
    }
    return {"oci": oci, **sections}


def write_toml(
    path: Path, base: dict[str, dict[str, Any]], sections: Mapping[str, Mapping[str, Any]]
) -> Path:
    """``base`` with ``sections`` laid over it key by key, written as TOML to ``path``."""
    merged = {name: dict(values) for name, values in base.items()}
    for name, values in sections.items():
        merged.setdefault(name, {}).update(values)
    lines = []
    for name, values in merged.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return orjson.dumps(value).decode()
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


class FakeClock:
    """A clock that moves only when told to: minutes of throttling in no time."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
