#!/usr/bin/env python
"""Would decoding JPEGs at reduced DCT scale (Pillow's `Image.draft`) change what a model sees?

    python benchmarks/decode_draft.py --bundle BUNDLE --data FOLDER [--json OUT]

`draft` lets libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale (the largest that still covers the model's size),
after which the bundle's own resize runs on the smaller picture: for a 512 px scan and a 96 px model, decoding and
resizing cost 2.2x less (0.74 vs 1.66 ms CPU, AMD Zen 5; the entropy decode is not scaled). It is a different
filter, though: libjpeg's scaled inverse DCT then a nearly 1:1 resize,
instead of the bundle's antialiased resize over every pixel. This script measures, on every JPEG under --data,
against the full decode the bundle's preprocessing specifies:
  draft        the natural draft request (the model's size)
  draft-2x     a gentler request (twice the model's size: at most 1/2 scale for scans under 4x the model's size)
  tf-islow     TensorFlow's libjpeg, accurate integer IDCT (another decoder, same algorithm: the floor)
  tf-ifast     TensorFlow's libjpeg, fast integer IDCT: what a different JPEG decoder does to the same file
(the last two only where TensorFlow is installed), each as: pixel differences at the model's input (max, mean,
99th percentile), and each of the bundle's ONNX files' probabilities (max and mean |difference|, top-1 agreement).
The decoder-to-decoder rows are the yardstick: a change within their order would not change what a model sees
beyond what moving a bundle between JPEG decoders does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="a folder of JPEG scans (searched recursively)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import onnxruntime as ort
    from PIL import Image

    from tumor_edge.runtime import RESIZE_METHODS, BundleMetadata

    meta = BundleMetadata.read(args.bundle)
    spec = meta.preprocessing
    size, method = (spec.width, spec.height), RESIZE_METHODS[spec.resize]
    files = sorted(p for p in args.data.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))

    def resized(image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert("RGB").resize(size, method))

    def drafted(path: Path, factor: int) -> np.ndarray:
        image = Image.open(path)
        image.draft(None, (factor * size[0], factor * size[1]))
        return resized(image)

    variants = {"full": lambda p: resized(Image.open(p)), "draft": lambda p: drafted(p, 1),
                "draft-2x": lambda p: drafted(p, 2)}
    try:
        import tensorflow as tf

        def tf_decode(path: Path, dct: str) -> np.ndarray:
            return resized(Image.fromarray(tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3,
                                                             dct_method=dct).numpy()))

        variants["tf-islow"] = lambda p: tf_decode(p, "INTEGER_ACCURATE")
        variants["tf-ifast"] = lambda p: tf_decode(p, "INTEGER_FAST")
    except ImportError:
        pass
    pixels = {name: np.stack([fn(p) for p in files]) for name, fn in variants.items()}
    full = pixels["full"].astype(np.int16)
    result: dict = {"bundle": str(args.bundle), "data": str(args.data), "images": len(files),
                    "model_size": list(size), "resize": spec.resize,
                    "source_sizes": sorted({Image.open(p).size for p in files})[::max(1, len(files) // 5)],
                    "pixels": {}, "models": {}}
    for name, values in pixels.items():
        if name != "full":
            diff = np.abs(values.astype(np.int16) - full)
            result["pixels"][name] = {"max": int(diff.max()), "mean": round(float(diff.mean()), 3),
                                      "p99": float(np.percentile(diff, 99))}
    for model in sorted(n for n in meta.models if n.endswith(".onnx")):
        session = ort.InferenceSession(str(args.bundle / model), providers=["CPUExecutionProvider"])
        name_in = session.get_inputs()[0].name

        def probs(x: np.ndarray, session=session, name_in=name_in) -> np.ndarray:
            return np.concatenate([session.run(None, {name_in: x[i:i + 32].astype(np.float32)})[0]
                                   for i in range(0, len(x), 32)])

        reference = probs(pixels["full"])
        rows = {}
        for name, values in pixels.items():
            if name != "full":
                p = probs(values)
                rows[name] = {"max_abs_prob": round(float(np.abs(p - reference).max()), 4),
                              "mean_abs_prob": round(float(np.abs(p - reference).mean()), 5),
                              "top1_agree": f"{int((p.argmax(1) == reference.argmax(1)).sum())}/{len(p)}"}
        result["models"][model] = rows
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
