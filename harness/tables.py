"""Tables that read at any width: the columns a table is read for are never cut.

rich fits a table wider than the console by shrinking every column until its cells end in an
ellipsis, numbers included: at 100 columns ``bench compare`` showed the out-of-fold Dice it exists
for as ``…``. ``print_table`` splits the columns across tables instead. The decisive columns and
the key (the columns that name a row) make the first table, the other columns join it in their
order of priority while it fits the console, and the rest go into continuation tables printed
below, each keyed again, so no cell is cut and nothing is lost. Widths are rich's own measurements.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Collection, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from harness.errors import BenchError

# Columns one space apart, each header underlined on its own: the narrowest box that still shows
# where a column starts (rich's SIMPLE_HEAD takes three characters between columns, and the six
# decisive columns of a leaderboard would not fit 80).
COMPACT = box.Box(
    "    \n"
    "    \n"
    " ─  \n"
    "    \n"
    " ─  \n"
    " ─  \n"
    "    \n"
    "    \n"
)
CONTINUED = "(continued)"
_UNBOUNDED = 1_000_000  # wider than any table: measures what a table needs, not what the console allows

Cell = str | Text  # a str is shown as it is (no markup); a Text keeps its style

FORMATS = ("table", "csv", "markdown", "json")  # --format of every command that prints a table


def check_format(text: str) -> str:
    """``--format``'s value, or one line naming the choices."""
    if text not in FORMATS:
        raise BenchError(f"--format {text}: expected {', '.join(FORMATS[:-1])} or {FORMATS[-1]}")
    return text


def as_markdown(headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> str:
    """A pipe table, for pages: every column, a cell's lines joined by "; "."""
    def cell(value: Cell) -> str:
        return "; ".join(str(value).splitlines()).replace("|", "\\|")

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(cell, row)) + " |" for row in rows])


def as_csv(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """``headers`` and ``rows`` as csv text (values as they are: numbers stay numbers for scripts)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows([str(value) if isinstance(value, Text) else value for value in row] for row in rows)
    return text.getvalue()


def print_table(console: Console, title: str, headers: Sequence[str], rows: Sequence[Sequence[Cell]], *,
                key: Collection[str], decisive: Collection[str] = (), left: Collection[str] = (),
                wide: bool = False) -> None:
    """Print ``rows`` under ``headers`` as one table when it fits ``console``, else as a first table of
    the ``key`` and ``decisive`` columns and as many others as fit, then continuation tables of the
    ``key`` and the next columns.

    ``left`` columns hold text and align left; when even the key and decisive columns are wider than
    the console, those of them that hold text (names) fold onto more lines. The other key and
    decisive columns hold numbers: they are never shrunk, so in that case the lines run past the
    console's width rather than cut a number. ``wide``: one table of every column at full width,
    however wide (the terminal wraps it).
    """
    every = list(range(len(headers)))
    if wide:
        _print(console, title, _table(console, headers, rows, every, left, fixed=every))
        return
    keys = [i for i in every if headers[i] in key]
    first = [i for i in every if headers[i] in key or headers[i] in decisive]
    fixed = [i for i in first if headers[i] not in left]

    def fits(columns: list[int]) -> bool:
        return _width(console, _plain_table(headers, rows, columns, left, fixed)) <= console.width

    for number, columns in enumerate(_split(first, keys, [i for i in every if i not in first], fits)):
        _print(console, CONTINUED if number else title, _table(console, headers, rows, columns, left, fixed))


def _split(first: list[int], keys: list[int], others: list[int],
           fits: Callable[[list[int]], bool]) -> list[list[int]]:
    """The columns of each table: every other column joins the last table while it fits, else
    starts the next one beside the key (a column wider than the console alone still gets a table)."""
    tables = [first]
    for column in others:
        grown = sorted([*tables[-1], column])
        if fits(grown):
            tables[-1] = grown
        else:
            tables.append(sorted([*keys, column]))
    return tables


def _table(console: Console, headers: Sequence[str], rows: Sequence[Sequence[Cell]], columns: list[int],
           left: Collection[str], fixed: list[int]) -> Table:
    """The rich table of ``columns``. When it is wider than the console, the columns that are not
    ``fixed`` fold, to no narrower than their header, and the table is given the width that leaves:
    rich would otherwise shrink every column, ``fixed`` ones included, to fit the console."""
    table = _plain_table(headers, rows, columns, left, fixed)
    if _width(console, table) > console.width:
        headers_only = [[cell if i in fixed else "" for i, cell in enumerate(row)] for row in rows]
        narrowest = _width(console, _plain_table(headers, headers_only, columns, left, fixed))
        table.width = max(console.width, narrowest)
    return table


def _plain_table(headers: Sequence[str], rows: Sequence[Sequence[Cell]], columns: list[int],
                 left: Collection[str], fixed: list[int]) -> Table:
    """``columns`` in the compact box, the ones not ``fixed`` free to fold (never an ellipsis)."""
    multiline = any("\n" in str(row[i]) for row in rows for i in columns)  # such rows are ruled apart
    table = Table(box=COMPACT, show_edge=False, padding=0, show_lines=multiline)
    for i in columns:
        table.add_column(Text(headers[i]), justify="left" if headers[i] in left else "right",
                         no_wrap=i in fixed, overflow="fold")
    for row in rows:
        table.add_row(*(row[i] if isinstance(row[i], Text) else Text(row[i]) for i in columns))
    return table


def _width(console: Console, table: Table) -> int:
    """The width ``table`` takes when nothing in it is folded or shrunk, as rich measures it."""
    return console.measure(table, options=console.options.update_width(_UNBOUNDED)).maximum


def _print(console: Console, title: str, table: Table) -> None:
    """Print ``title`` wrapped to the console's width, even on a console that soft-wraps (``bench``'s
    keeps a long line of text whole), then ``table`` whole: a line wider than the console (``wide``,
    or numbers that cannot fit) runs on rather than being cropped at the console's edge."""
    console.print(Text(title, style="table.title"), soft_wrap=False)
    console.print(table, crop=False, soft_wrap=False)
