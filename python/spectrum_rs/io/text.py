"""Names from model and results files, written where a reader takes characters for
structure. A safetensors header may name a tensor with any UTF-8 text, line breaks
included, and a results file may carry such names too: written as they are, a name like
``"model.layers.0.x\\n- ^.*$\\n# .weight"`` would add a line ``- ^.*$`` to the
unfrozen-parameters YAML, which unfreezes every parameter. This module writes such
characters as escapes, whatever the source of the name:

* :func:`printable` for log lines, warnings, messages and YAML comments: control and
  format characters (C0, DEL, C1 with NEL, U+2028/U+2029, bidirectional overrides, ...)
  as ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``;
* :func:`name_regex` for a YAML line that a trainer reads as a regular expression: the
  same characters as regex escapes that match them, so the line still matches the real
  parameter, and the other regex metacharacters escaped too (a name with ``|.*`` must not
  match every parameter); a name of letters, digits, ``_`` and ``.`` is written as it is;
* :func:`yaml_scalar` for a YAML list item: plain when YAML reads it back as the same
  string, double-quoted otherwise (docs/method.md §4.4).
"""

from __future__ import annotations

import re
import unicodedata

# Regex metacharacters the reference's bare form escapes: all but ".", which the
# reference leaves as it is (it then matches any character, docs/method.md §4.4).
_REGEX_SPECIAL = frozenset("\\^$*+?{}[]|()")
# A plain YAML scalar that reads back as the same string: it starts with a character that
# is no YAML indicator and cannot start a number, and holds no space, ":", "#" or quote.
_PLAIN = re.compile(r"[A-Za-z_^\\][A-Za-z0-9_.\\^$/=+-]*")
# Plain words YAML 1.1 or 1.2 would read as a boolean or null instead of a string.
_NOT_STRINGS = frozenset({"y", "n", "yes", "no", "true", "false", "on", "off", "null"})


def unsafe(ch: str) -> bool:
    """Whether a reader may take ``ch`` for structure, or not see it: control characters
    (with DEL and NEL), format characters (zero-width, bidirectional overrides, BOM),
    surrogates, private-use and unassigned code points, and the Unicode line and paragraph
    separators, which YAML and some terminals take for line breaks."""
    category = unicodedata.category(ch)
    return category[0] == "C" or category in ("Zl", "Zp")


def _escape(ch: str) -> str:
    n = ord(ch)
    if n < 0x100:
        return f"\\x{n:02x}"
    if n < 0x10000:
        return f"\\u{n:04x}"
    return f"\\U{n:08x}"


def printable(text: str) -> str:
    """``text`` with every :func:`unsafe` character written as a backslash escape: safe
    on one line of a log, a message or a YAML comment."""
    if text.isprintable():
        return text
    return "".join(_escape(ch) if unsafe(ch) else ch for ch in text)


def name_regex(name: str, strict: bool) -> str:
    """A regular expression that matches the parameter ``name`` at the start, written in
    printable characters. ``strict``: every metacharacter escaped (``re.escape``); else the
    reference's form, in which dots stay unescaped (and so match any character) and only
    the other metacharacters are escaped, which leaves ordinary names unchanged."""
    out = []
    for ch in name:
        if unsafe(ch):
            out.append(_escape(ch))  # \xNN, \uNNNN, \UNNNNNNNN: re matches the character itself
        elif strict:
            out.append(re.escape(ch))
        else:
            out.append("\\" + ch if ch in _REGEX_SPECIAL else ch)
    return "".join(out)


def yaml_scalar(text: str) -> str:
    """``text`` as a YAML scalar that reads back as exactly ``text``: as it is when YAML
    takes it for a plain string, else double-quoted. ``text`` must be printable (see
    :func:`name_regex`); a character that is not is escaped anyway."""
    if _PLAIN.fullmatch(text) and text.lower() not in _NOT_STRINGS:
        return text
    body = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(_escape(ch) if unsafe(ch) else ch for ch in body) + '"'
