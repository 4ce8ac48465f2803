"""`tumor-edge data check ROOT`: dataset checks without TensorFlow."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def data() -> None:
    """Inspect dataset folders."""


@data.command()
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--no-duplicates", is_flag=True, help="Skip the Training/Testing duplicate search.")
def check(root: Path, no_duplicates: bool) -> None:
    """Check ROOT's layout, count images, list unreadable files and Training/Testing duplicates.

    Exits 1 when a problem needs fixing (duplicates alone are reported, not an error).
    """
    from tumor_edge.data.dedup import check_dataset

    report = check_dataset(root, find_duplicates=not no_duplicates)
    click.echo("\n".join(report.summary_lines()))
    if report.problems:
        raise SystemExit(1)
