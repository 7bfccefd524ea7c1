"""A page's records, found without parsing the page as a whole.

A ListImages page is a JSON array. Its top-level elements are found by tracking strings and
brackets alone, so that one record that cannot be parsed (nested too deep, bad UTF-8, a lone
surrogate) is rejected on its own while the others are converted; only a page whose own
structure is broken (cut short, not an array) is refused whole.
"""

from __future__ import annotations

import re

from connector.limits import MiB

_WHITESPACE = b" \t\r\n"
_STRUCTURE = re.compile(rb'[\[\]{},"]')
_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"', re.DOTALL)
RAW_KEPT = 1 * MiB
"""Of a record that cannot be parsed, the rejects file keeps this much of its text."""


def array_elements(body: bytes) -> list[bytes] | None:
    """The top-level elements of a JSON array, as bytes, without parsing them.

    Only strings (with their escapes) and brackets are tracked, so an element that is itself
    invalid (nesting too deep, bad UTF-8, a lone surrogate) is still found, and can be parsed or
    rejected on its own. None when the array's own structure is broken: not an array, a string
    or bracket left open (the body was cut short), an empty element, or text after the end.
    """
    start = _skip(body, 0)
    if start >= len(body) or body[start : start + 1] != b"[":
        return None
    elements: list[bytes] = []
    depth = 0
    position = element_start = start + 1
    while True:
        found = _STRUCTURE.search(body, position)
        if found is None:
            return None
        char = body[found.start() : found.start() + 1]
        if char == b'"':
            string = _STRING.match(body, found.start())
            if string is None:
                return None  # a string left open
            position = string.end()
            continue
        position = found.end()
        if char in b"[{":
            depth += 1
        elif char in b"]}":
            if depth:
                depth -= 1
                continue
            if char != b"]":
                return None
            last = body[element_start : found.start()].strip(_WHITESPACE)
            if last:
                elements.append(last)
            elif elements:
                return None  # a trailing comma
            return elements if _skip(body, position) == len(body) else None
        elif depth == 0:  # a comma between elements
            element = body[element_start : found.start()].strip(_WHITESPACE)
            if not element:
                return None
            elements.append(element)
            element_start = position


def _skip(body: bytes, position: int) -> int:
    while position < len(body) and body[position] in _WHITESPACE:
        position += 1
    return position


def raw_text(element: bytes) -> str:
    """A record that cannot be parsed, as text for the rejects file (bad bytes escaped)."""
    text = element[:RAW_KEPT].decode("utf-8", "backslashreplace")
    if len(element) > RAW_KEPT:
        text += f"… ({len(element)} bytes in all)"
    return text
