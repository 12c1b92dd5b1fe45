"""The command line's two consoles (stdout for results, stderr for progress and messages).

On a terminal they are rich's, sized to the window. When the output is not a terminal (a pipe, a
file, a SLURM log) nothing is wrapped or truncated: ``cpbench list | cat`` prints every dataset
name whole, however wide the table, and a long line stays one line for ``grep``. rich alone would
size a pipe to the terminal the command was started from (or ``$COLUMNS``, else 80 columns) and cut
table cells to fit.
"""

from __future__ import annotations

from rich.console import Console, ConsoleDimensions

UNLIMITED = 1_000_000  # columns of a console that is not a terminal: tables take their natural width


class Output(Console):
    """A rich Console that never wraps or truncates when its file is not a terminal (unless given a
    ``width``; rich would take ``$COLUMNS`` as one)."""

    def __init__(self, *args, width: int | None = None, **kwargs) -> None:
        super().__init__(*args, width=width, **kwargs)
        self.given_width = width

    @property
    def size(self) -> ConsoleDimensions:
        size = Console.size.fget(self)
        if self.given_width is None and not self.is_terminal:
            return ConsoleDimensions(UNLIMITED, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        Console.size.fset(self, new_size)
