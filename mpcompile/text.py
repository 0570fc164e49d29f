"""Model-provided strings made safe to show: no terminal control, no bidi reordering, no formulas.

A model is untrusted input, and its strings (node, value and graph names, op types, domains,
metadata, doc strings) reach terminals, spreadsheets and browsers. ``printable`` escapes the
characters that a terminal acts on or that reorder text (C0 and C1 controls, DEL, the bidi
embeddings, overrides and isolates) as ``\\xNN``/``\\uNNNN``; ``markup`` also escapes rich's
``[style]`` markup; ``csv_cell`` also stops a spreadsheet from reading a cell as a formula.
"""

from __future__ import annotations

import re

# C0 controls (tab and newline included: they break one-line messages and table cells), DEL, C1
# controls, and the bidi embeddings/overrides (U+202A-202E) and isolates (U+2066-2069).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# A spreadsheet evaluates a cell starting with one of these (tab and CR start DDE payloads too).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``text`` as a string with every control and bidi character written as an escape."""
    return _UNSAFE.sub(_escape_char, str(text))


def markup(text: object) -> str:
    """``printable(text)`` with rich markup escaped: safe inside a string rich renders as markup."""
    from rich.markup import escape

    return escape(printable(text))


def csv_cell(text: str) -> str:
    """A CSV cell no spreadsheet runs as a formula: ``'`` before a formula character, controls escaped.

    The formula check comes first, so a leading tab or CR is neutralised, then escaped.
    """
    if text.startswith(_FORMULA_START):
        text = "'" + text
    return printable(text)
