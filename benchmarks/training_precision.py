"""Training step time of InceptionV3 under each Keras precision policy, on this machine, in one process.

    python -m benchmarks.training_precision [--image-size 96] [--batch 16] [--steps 6] [--rounds 3]
        [--policies float32,mixed_bfloat16] [--out benchmarks/results/training-precision]

One model per policy is built and traced first; then timed rounds alternate between the policies, so a
shared machine's changing load hits each alike (compare the ratio, not the absolute times). This is what
`--mixed-precision auto` rests on: on a CPU, bfloat16 only where it measured faster. On a GPU machine, add
mixed_float16 and --xla to the run. Writes <out>.json and <out>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def build(policy: str, size: int, xla: bool):
    import keras

    keras.mixed_precision.set_global_policy(policy)
    base = keras.applications.InceptionV3(include_top=False, weights=None, input_shape=(size, size, 3))
    inputs = keras.Input((size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inputs))
    outputs = keras.layers.Dense(4, activation="softmax", dtype="float32")(x)
    model = keras.Model(inputs, outputs)
    model.compile("adam", "categorical_crossentropy", jit_compile=xla)
    keras.mixed_precision.set_global_policy("float32")
    return model


def main() -> None:
    import numpy as np

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--policies", default="float32,mixed_bfloat16")
    parser.add_argument("--xla", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/training-precision"))
    args = parser.parse_args()
    from tumor_edge.machine import cpu_flag_set, machine_info

    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (args.batch * args.steps, args.image_size, args.image_size, 3)).astype(np.float32)
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, len(x))]
    load_before = os.getloadavg()
    models, trace_s = {}, {}
    for policy in args.policies.split(","):
        t0 = time.perf_counter()
        models[policy] = build(policy, args.image_size, args.xla)
        models[policy].fit(x[: args.batch], y[: args.batch], batch_size=args.batch, epochs=1, verbose=0)
        trace_s[policy] = round(time.perf_counter() - t0, 1)
    per_step: dict[str, list[float]] = {p: [] for p in models}
    for _ in range(args.rounds):
        for policy, model in models.items():
            t0 = time.perf_counter()
            model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0)
            per_step[policy].append((time.perf_counter() - t0) / args.steps)
    median = {p: round(statistics.median(v), 3) for p, v in per_step.items()}
    reference = median.get("float32") or next(iter(median.values()))
    flags = cpu_flag_set()
    record = {"image_size": args.image_size, "batch": args.batch, "xla": args.xla, "median_s_per_step": median,
              "relative_to_float32": {p: round(v / reference, 2) for p, v in median.items()},
              "all_s_per_step": per_step, "first_step_s": trace_s,
              "bf16_flags": sorted(f for f in flags if "bf16" in f or f.startswith("amx")),
              "cpu_model": machine_info().get("cpu_model"), "load_before": [round(v, 2) for v in load_before],
              "load_after": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    md = [f"# InceptionV3 training step by precision policy ({time.strftime('%Y-%m-%d')})", "",
          f"{record['cpu_model']}; bfloat16-related flags: {', '.join(record['bf16_flags']) or 'none'}; "
          f"{args.image_size} px, batch {args.batch}, XLA {'on' if args.xla else 'off'}", "",
          "| policy | s/step (median) | vs float32 |", "|---|---|---|",
          *[f"| {p} | {median[p]} | {record['relative_to_float32'][p]}x |" for p in median], "",
          f"load average before/after: {record['load_before']} / {record['load_after']} on {os.cpu_count()} CPUs "
          "(rounds alternate between policies: compare the ratio)"]
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
