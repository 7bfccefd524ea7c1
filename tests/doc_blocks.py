"""The fenced code blocks of a documentation page, for the tests that check what the docs show."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import ROOT

PARTIAL = "<!-- partial -->"
"""Put on the line before a ```toml block that is deliberately not a whole configuration (a
fragment to merge into one): the configuration test leaves it out."""


@dataclass(frozen=True)
class Block:
    """A fenced code block of a page: its language, its text, and where it starts."""

    path: Path
    line: int
    language: str
    text: str
    marked_partial: bool

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


FENCE = re.compile(
    r"^(?P<indent> *)```(?P<language>\w*)[^\n]*\n(?P<text>.*?)^(?P=indent)```", re.M | re.S
)


def blocks(path: Path) -> Iterator[Block]:
    text = path.read_text(encoding="utf-8")
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        indent = len(match.group("indent"))
        body = "\n".join(part[indent:] for part in match.group("text").split("\n"))
        yield Block(path, line, match.group("language"), body, before == PARTIAL)
