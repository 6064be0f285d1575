"""Examples out of the repository's Markdown, exactly as written there, so
that a test runs what a reader copies and the two cannot drift."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int                  # of the first line inside the fence
    lang: str
    text: str


def blocks(path: Path) -> list[Block]:
    out, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2), i + 1
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            i += 1
        out.append(Block(path, start + 1, lang, "\n".join(lines[start:i]) + "\n"))
        i += 1
    return out


def block_after(path: Path, marker: str) -> Block:
    """The first fenced block after the line that holds ``marker``."""
    text = path.read_text()
    at = text.index(marker)
    line = text.count("\n", 0, at) + 1
    return next(b for b in blocks(path) if b.line > line)


@dataclass(frozen=True)
class Command:
    where: str                 # "docs/COMPOSE.md:79"
    text: str                  # as written, without a console's "$ " prompt


def xenlab_commands(path: Path) -> list[Command]:
    """Every line of a shell or console block that runs `xenlab`."""
    out = []
    for block in blocks(path):
        if block.lang not in ("sh", "console", "bash", "shell"):
            continue
        for n, line in enumerate(block.text.splitlines()):
            if block.lang == "console":
                if not line.startswith("$ "):
                    continue                 # output, not a command
                line = line[2:]
            if line.startswith("xenlab "):
                out.append(Command(f"{path.relative_to(ROOT)}:{block.line + n}", line))
    return out
