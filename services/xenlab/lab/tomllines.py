"""Where each key of a TOML document sits: the line numbers tomllib does not
give, so that an error in a lab file names the line it is on.

``key_lines(text)`` finds each table's header line and its keys'
positions: ``()`` is the top level, ``("lab",)`` a ``[lab]`` table,
``("domain", 0)`` the first ``[[domain]]``. A key whose value is an array
also has the line each of its items starts on. The text must be valid TOML (parse it with tomllib first);
only top-level tables and their direct keys are located: a key inside an
inline table, or under a dotted table header, is left out.
"""
from __future__ import annotations

from dataclasses import dataclass, field

Table = tuple


@dataclass(frozen=True)
class KeyPosition:
    line: int
    items: tuple[int, ...] = ()     # an array value: the line each item starts on


@dataclass
class TomlLines:
    keys: dict[Table, dict[str, KeyPosition]] = field(default_factory=lambda: {(): {}})
    headers: dict[Table, int] = field(default_factory=dict)   # each table's header line

    def table(self, table: Table) -> dict[str, KeyPosition]:
        return self.keys.get(table, {})

    def line(self, table: Table, key: str | None = None) -> int | None:
        """The line of ``key`` in ``table``, or of the table's header; None
        when it was not found."""
        if key is None:
            return self.headers.get(table)
        position = self.table(table).get(key)
        return position.line if position is not None else None


class _Scanner:
    def __init__(self, text: str):
        self.text = text
        self.i = 0
        self.line = 1

    def peek(self, n: int = 1) -> str:
        return self.text[self.i:self.i + n]

    def advance(self, n: int = 1) -> None:
        self.line += self.text.count("\n", self.i, self.i + n)
        self.i += n

    def skip_blank(self, newlines: bool) -> None:
        """Spaces, and comments; newlines too when asked (inside an array)."""
        while self.i < len(self.text):
            c = self.text[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.advance()
            elif c == "#":
                end = self.text.find("\n", self.i)
                self.advance((len(self.text) if end < 0 else end) - self.i)
            else:
                return

    def skip_string(self) -> None:
        quote = self.peek()
        if self.peek(3) == quote * 3:
            end = self.text.find(quote * 3, self.i + 3)
            while quote == '"' and end > 0 and _escaped(self.text, end):
                end = self.text.find(quote * 3, end + 1)
            end = len(self.text) if end < 0 else end + 3
            # """a"""" is a string ending in a quote: the closing run may be longer.
            while end < len(self.text) and self.text[end] == quote:
                end += 1
            self.advance(end - self.i)
            return
        j = self.i + 1
        while j < len(self.text) and self.text[j] != quote and self.text[j] != "\n":
            j += 2 if quote == '"' and self.text[j] == "\\" else 1
        self.advance(j + 1 - self.i)

    def skip_value(self) -> tuple[int, ...]:
        """Past one value; an array's item lines."""
        c = self.peek()
        if c in "\"'":
            self.skip_string()
            return ()
        if c == "[":
            return self.skip_array()
        if c == "{":
            self.skip_inline_table()
            return ()
        while self.i < len(self.text) and self.text[self.i] not in ",]}\n#":
            self.advance()
        return ()

    def skip_array(self) -> tuple[int, ...]:
        self.advance()
        items = []
        while self.i < len(self.text):
            self.skip_blank(newlines=True)
            if self.peek() == "]":
                self.advance()
                break
            items.append(self.line)
            self.skip_value()
            self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.advance()
        return tuple(items)

    def skip_inline_table(self) -> None:
        depth = 0
        while self.i < len(self.text):
            c = self.peek()
            if c in "\"'":
                self.skip_string()
                continue
            self.advance()
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return

    def key(self) -> str:
        """A key up to its '=' (quoted parts kept as written, then unquoted if simple)."""
        start = self.i
        while self.i < len(self.text) and self.text[self.i] != "=":
            if self.peek() in "\"'":
                self.skip_string()
            else:
                self.advance()
        raw = self.text[start:self.i].strip()
        self.advance()                       # the '='
        return _unquote(raw)

    def header(self) -> tuple[str, bool]:
        """A table header's name, and whether it is an array of tables."""
        double = self.peek(2) == "[["
        self.advance(2 if double else 1)
        start = self.i
        while self.i < len(self.text) and self.text[self.i] != "]":
            if self.peek() in "\"'":
                self.skip_string()
            else:
                self.advance()
        name = _unquote(self.text[start:self.i].strip())
        self.advance(2 if double else 1)
        return name, double


def _escaped(text: str, at: int) -> bool:
    backslashes = 0
    while at - backslashes - 1 >= 0 and text[at - backslashes - 1] == "\\":
        backslashes += 1
    return backslashes % 2 == 1


def _unquote(key: str) -> str:
    if len(key) >= 2 and key[0] == key[-1] and key[0] in "\"'" and "." not in key[1:-1]:
        return key[1:-1]
    return key


def key_lines(text: str) -> TomlLines:
    scan = _Scanner(text)
    table: Table = ()
    counts: dict[str, int] = {}
    out = TomlLines()
    while scan.i < len(text):
        scan.skip_blank(newlines=True)
        if scan.i >= len(text):
            break
        if scan.peek() == "[":
            line = scan.line
            name, array = scan.header()
            if array:
                table = (name, counts.get(name, 0))
                counts[name] = table[1] + 1
            else:
                table = (name,)
            out.headers.setdefault(table, line)
            out.keys.setdefault(table, {})
            continue
        line = scan.line
        key = scan.key()
        scan.skip_blank(newlines=False)
        items = scan.skip_value()
        out.keys.setdefault(table, {}).setdefault(key, KeyPosition(line, items))
    return out
