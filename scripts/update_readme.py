"""Regenerate what is generated from the code (`make readme`): the README's column tables, one
per dataset (connector/schema.py), its configuration table and configs/example.toml
(connector/config.py)."""

from __future__ import annotations

import re
from pathlib import Path

from connector import config, schema

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLE = ROOT / "configs" / "example.toml"


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with what is between ``<!-- name:start -->`` and ``<!-- name:end -->`` replaced."""
    return re.sub(
        rf"<!-- {name}:start -->\n.*?<!-- {name}:end -->",
        lambda _: f"<!-- {name}:start -->\n{content}\n<!-- {name}:end -->",
        text,
        flags=re.S,
    )


def main() -> None:
    text = README.read_text()
    text = replace_block(text, "columns", schema.markdown_table())
    for name, columns in schema.DATASETS.items():
        if name != "images":  # the images table keeps its original marker, "columns"
            text = replace_block(text, f"{name}-columns", schema.markdown_table(columns))
    text = replace_block(text, "config", config.markdown_table())
    README.write_text(text)
    EXAMPLE.write_text(config.example_toml())


if __name__ == "__main__":
    main()
