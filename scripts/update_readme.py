"""Regenerate the README's column table from connector/schema.py (`make readme`)."""

from __future__ import annotations

import re
from pathlib import Path

from connector import schema

README = Path(__file__).resolve().parent.parent / "README.md"


def main() -> None:
    text = README.read_text()
    table = schema.markdown_table()
    updated = re.sub(
        r"<!-- columns:start -->\n.*?<!-- columns:end -->",
        lambda _: f"<!-- columns:start -->\n{table}\n<!-- columns:end -->",
        text,
        flags=re.S,
    )
    README.write_text(updated)


if __name__ == "__main__":
    main()
