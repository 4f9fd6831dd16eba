"""Tables for people: aligned text columns for the terminal and markdown tables for reports, shared by every
command that prints one."""
from __future__ import annotations


def text_table(rows: list[list[str]]) -> list[str]:
    """Rows (the first is the header) as left-aligned columns, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
