"""What every ``edge-node`` help shares: the formatter and the "Examples:" section.

An epilog built by :func:`epilog` has an ``Examples:`` section: one command a line, each runnable as
written from the repository root (``tests/cli/test_help_examples.py`` runs every one of them, with
:func:`examples` reading them back from the help text). A line may end in ``# a comment``.
"""

from __future__ import annotations

import argparse
import re

EXAMPLES_HEADER = "Examples:"


class HelpFormatter(argparse.HelpFormatter):
    """Wraps one-paragraph descriptions as argparse does; keeps text with line breaks (an epilog) as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def epilog(examples: list[str], *notes: str) -> str:
    """An epilog: ``notes`` (paragraphs, as written), then ``Examples:`` with one command a line."""
    parts = [note.strip("\n") for note in notes if note]
    parts.append(EXAMPLES_HEADER + "\n" + "\n".join(f"  {line}" for line in examples))
    return "\n\n".join(parts) + "\n"


def examples(help_text: str, programs: tuple[str, ...] = ("edge-node", "device-sim")) -> list[str]:
    """The example commands of a ``--help`` text: the lines of its ``Examples:`` section(s) that start
    with one of ``programs``, comments (``# ...``) dropped."""
    found: list[str] = []
    inside = False
    for line in help_text.splitlines():
        if re.match(r"^\s*examples?:\s*$", line, re.I):
            inside = True
            continue
        if inside and not line.strip():
            inside = False
            continue
        command = re.sub(r"\s+#.*$", "", line).strip()
        if inside and command.split(" ", 1)[0] in programs:
            found.append(command)
    return found
