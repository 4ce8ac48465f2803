"""Click commands `demo-data` and `demo` (only click at import time)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("demo-data")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--per-class", type=click.IntRange(min=2), default=200, show_default=True,
              help="Images per class, Training and Testing together.")
@click.option("--size", type=click.IntRange(32, 2048), default=256, show_default=True,
              help="Typical image edge in pixels; each image's width and height vary around it.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same volumes: same files.")
@click.option("--volume", "volumes", multiple=True, type=click.Path(path_type=Path),
              help="A T1 NIfTI volume (head or skull-stripped brain) to slice too; repeatable.")
@click.option("--test-volume", default=None,
              help="Name (file stem) of the volume held out for Testing [the first: mni152].")
@click.option("--test-fraction", type=click.FloatRange(0.05, 0.9), default=0.25, show_default=True)
@click.option("--no-builtin", is_flag=True, help="Use only the --volume files, not the packaged templates.")
@click.option("--force", is_flag=True, help="Replace demo data already in OUT.")
def demo_data(out: Path, per_class: int, size: int, seed: int, volumes: tuple[Path, ...], test_volume: str | None,
              test_fraction: float, no_builtin: bool, force: bool) -> None:
    """Write synthetic demo data to OUT: real MRI anatomy with simulated tumours, in the public dataset layout.

    Slices of the MNI152 template (nilearn) and the Colin27 head (Debian mricron-data, when installed) in
    three planes, with gliomas, meningiomas and pituitary masses drawn where each grows. Testing comes from
    anatomy Training never saw. Synthetic: for trying the pipeline, not for judging a model.
    """
    from tumor_edge.demo.generate import DemoDataConfig, generate

    config = DemoDataConfig(out=out, per_class=per_class, size=size, seed=seed, volumes=volumes,
                            test_fraction=test_fraction, test_volume=test_volume, builtin=not no_builtin,
                            force=force)
    plan = generate(config)
    n_train, n_test = config.counts
    held = (f"Testing from volume '{plan.test_source.name}'" if plan.test_source is not None
            else "Testing from a held-out slab of slice positions")
    click.echo(f"wrote {len(config.classes) * (n_train + n_test)} synthetic scans to {out} "
               f"({n_train} Training + {n_test} Testing per class; {held}); see {out / 'DATASET.md'}")


@click.command()
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("demo-workdir"), show_default=True,
              help="Where every artefact goes; rerunning reuses the stages already complete there.")
@click.option("--profile", type=click.Choice(["auto", "cpu", "gpu"]), default="auto", show_default=True,
              help="Sizes: 'cpu' for a small CPU; 'gpu' trains larger; auto picks.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Redo every stage, even those already complete.")
def demo(workdir: Path, profile: str, seed: int, force: bool) -> None:
    """End to end on synthetic demo data: generate, train, export (int8 too), classify, benchmark, summarise.

    The data is SYNTHETIC (real MRI templates, simulated tumours): this shows the pipeline working, not a
    model fit for patients. `tumor-edge train PATH` on a real dataset is the real thing.
    """
    from tumor_edge.demo.pipeline import DemoConfig, run_demo

    run_demo(DemoConfig(workdir=workdir, profile=profile, seed=seed, force=force))
