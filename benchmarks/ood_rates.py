"""Out-of-distribution warning rates of a bundle: detection on generated non-MRI sets, false alarms on held-out
scans, through the runtime's own prediction path (tumor_edge.runtime.measure_ood_rates).

    python -m benchmarks.ood_rates BUNDLE DATA [--count 100] [--seed 0] [--name LABEL]

DATA is a dataset root (Testing/<class>/...) or a folder of <class>/ folders: its scans are the in-distribution
set (false alarms) and the source of the inverted-scans set. The generated sets (uniform noise, constant grey,
colour fields, chest-X-ray-like radiographs, inverted scans) are synthetic and seeded. Writes
benchmarks/results/ood-rates-<stamp>-<name>.json and .md with the CPU and the load average.
"""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _load(values) -> str:
    return "unknown" if not values else " ".join(f"{v:.2f}" for v in values)


def render(record: dict) -> str:
    r = record["rates"]
    lines = [f"# OOD warning rates: {record['name']}", "",
             f"Bundle `{record['bundle']}` (file `{record['model']}`, feature-space check: "
             f"{'yes' if r['feature_check'] else 'no: input checks only'}); held-out scans from `{record['data']}`.",
             f"{record['machine']['cpu']} ({record['machine']['isa']}); load average "
             f"{_load(record['load_average'][0])} -> {_load(record['load_average'][1])}; {record['seconds']:.0f} s; "
             f"seed {r['seed']}, {r['per_set']} images a generated set.", "",
             "| set | images | warned | by input checks | by feature distance |", "|---|---|---|---|---|"]

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f} %"

    for name, s in r["sets"].items():
        lines.append(f"| {name} (generated: detection) | {s['count']} | {pct(s['flagged'])} | "
                     f"{pct(s['input_checks_flagged'])} | {pct(s['feature_flagged'])} |")
    t = r["test"]
    lines.append(f"| held-out scans (false alarms) | {t['count']} | {pct(t['flagged'])} | "
                 f"{pct(t['input_checks_flagged'])} | {pct(t['feature_flagged'])} |")
    lines += ["", "Generated sets are synthetic. Research tool, not a diagnostic device."]
    return "\n".join(lines) + "\n"


def main() -> None:
    import time

    from tumor_edge.machine import host, load_average
    from tumor_edge.runtime import Classifier, labelled_files, measure_ood_rates

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--count", type=int, default=100, help="images per generated set")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="bundle", help="label for the result files")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    classifier = Classifier.from_bundle(args.bundle)
    files, _, problems = labelled_files(args.data, list(classifier.classes))
    if not files:
        raise SystemExit(f"error: {'; '.join(problems)}")
    before, started = load_average(), time.perf_counter()
    rates = measure_ood_rates(classifier, files, count=args.count, seed=args.seed)
    record = {"name": args.name, "bundle": str(args.bundle), "model": classifier.metadata.default_model(),
              "data": str(args.data), "rates": rates, "machine": host(), "seconds": time.perf_counter() - started,
              "load_average": [before, load_average()],
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d-%H%M")
    args.out.mkdir(parents=True, exist_ok=True)
    base = args.out / f"ood-rates-{stamp}-{args.name}"
    base.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    base.with_suffix(".md").write_text(render(record))
    print(render(record))
    print(f"written: {base}.json, {base}.md")


if __name__ == "__main__":
    main()
