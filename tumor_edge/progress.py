"""One progress bar for all long work (export, parity, bench, batch classify): on stderr, so stdout stays clean
for results that scripts parse."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

import click

T = TypeVar("T")


def progress(items: Iterable[T], label: str, length: int | None = None, enabled: bool = True) -> Iterator[T]:
    """Yield items while drawing a bar on stderr (click hides the bar, not the label, when not a terminal)."""
    if not enabled:
        yield from items
        return
    with click.progressbar(items, length=length, label=label, file=sys.stderr, show_pos=True,
                           show_eta=True, width=30) as bar:
        yield from bar
