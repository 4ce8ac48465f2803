"""The device-side API: `Classifier.from_bundle(path).predict("scan.jpg")`, `.classify("head.nii.gz")`.

Files are read by the readers' registry (`runtime/readers/`): `classify` and `iter_results` take anything a reader
claims, volumes included (`scans`). One prediction path for images: files are decoded by `batch.decode_file`
(the runtime's `load_rgb_frames` -> resize) and classified batch by batch in `batch.iter_predictions`;
`predict`, `predict_batch` and export's parity (`probabilities_for_files`) all go through it, so a multi-frame
file is read the same way everywhere. A bundle's model file is checked against the sha256 its metadata records
before it is loaded.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Union

import numpy as np
from PIL import Image

from tumor_edge.contracts.bundle import (
    METADATA_FILE,
    ONNX_META_KEY,
    BundleMetadata,
    check_binding,
    check_external_locations,
    check_member_files,
    check_model_file,
    loads_strict,
)
from tumor_edge.errors import BundleIntegrityError, ConfigError, ModelError, first_line
from tumor_edge.runtime.backends import Backend, BackendOptions, engine_of, open_backend
from tumor_edge.runtime.backends.external_data import external_data_locations
from tumor_edge.runtime.failure import Failure
from tumor_edge.runtime.pixels import pil_to_rgb, to_uint8
from tumor_edge.runtime.preprocess import resize_rgb, scale
from tumor_edge.runtime.trust import TrustSettings, calibrate, ood_scores, warnings_for

if TYPE_CHECKING:
    from tumor_edge.runtime.scans import ScanItem, ScanResult

ImageInput = Union[str, Path, Image.Image, np.ndarray]
SCORES = "scores"  # the role of the class-score output (tumor_edge.contracts.bundle.OutputSpec)


@dataclass(frozen=True)
class Prediction:
    """One classified image: the winning label, every class's probability, and any further model outputs."""

    label: str
    index: int
    probabilities: dict[str, float]
    source: str | None = None
    frame: int | None = None  # 0-based frame of a multi-frame file (DICOM series), None for single images
    frame_count: int | None = None
    # Outputs beyond the class scores, by the role metadata gives them (e.g. "heatmap"): this image's slice.
    outputs: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    # Why this image may not be what the model knows (input checks, feature distance); empty when none.
    warnings: tuple[str, ...] = ()
    heatmap_png: str | None = None  # where `classify --heatmap DIR` wrote its overlay
    heatmap_method: str | None = None  # what drew that overlay's map (e.g. "occlusion 8x8", "exact CAM 8x8")
    abstained: bool = False  # `classify --abstain`: a warned image is given no label (probabilities kept)

    ok = True  # Failure.ok is False: lets stream consumers branch without isinstance

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]

    def top_k(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:k]

    def to_dict(self) -> dict:
        data = {"file": self.source, "label": self.label, "confidence": self.confidence,
                "probabilities": self.probabilities}
        if self.frame is not None:
            data["frame"] = self.frame
            data["frames"] = self.frame_count
        if self.abstained:
            data.update(label=None, confidence=None, abstained=True)
        if self.warnings:
            data["warnings"] = list(self.warnings)
        if self.heatmap_png is not None:
            data["heatmap_png"] = self.heatmap_png
            data["heatmap_method"] = self.heatmap_method
        if self.outputs:
            data["outputs"] = {role: np.asarray(value).tolist() for role, value in self.outputs.items()}
        return data


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# How far a model's "probabilities" may stray from a distribution and still be one, per class: half a step of an
# 8-bit output quantized over [-1, 1] (1/254: a symmetric int8 scale is the widest an int8 model's softmax output
# gets) plus float16's rounding of a value below 1 (2**-11). A row's sum may be off by that many times its class
# count (4 classes: 0.018); raw logits, a 1.39e10, or a halved softmax are far outside.
PROBABILITY_SLACK_PER_CLASS = 1 / 254 + 2 ** -11
PROBABILITY_RANGE_SLACK = 1e-6  # a value just above 1 or below 0 is float rounding; more is not a probability


def check_probabilities(probs: np.ndarray, path: Path) -> None:
    """Refuse class scores declared "probabilities" that are not: each value in [0, 1], each row summing to 1
    within PROBABILITY_SLACK_PER_CLASS per class. Rows that are not finite are left to `predictions`, which gives
    those images no label. Raises a one-line ModelError naming the model file, so nothing is shown."""
    finite = probs[np.all(np.isfinite(probs), axis=-1)]
    if not finite.size:
        return
    low, high = float(finite.min()), float(finite.max())
    sums = finite.sum(axis=-1, dtype=np.float64)
    worst = float(sums[np.argmax(np.abs(sums - 1.0))])
    slack = PROBABILITY_SLACK_PER_CLASS * probs.shape[-1]
    if low < -PROBABILITY_RANGE_SLACK or high > 1 + PROBABILITY_RANGE_SLACK or abs(worst - 1.0) > slack:
        raise ModelError(f"its class scores are declared probabilities in {METADATA_FILE} but are not (values "
                         f"{low:.3g} to {high:.3g}, a row summing to {worst:.3g}); no result shown", path)


def metadata_from_props(props: dict[str, str], path: Path) -> BundleMetadata:
    """The tumor-edge metadata an exported .onnx carries in its metadata_props."""
    raw = props.get(ONNX_META_KEY)
    if not raw:
        raise ModelError("this .onnx file carries no tumor-edge metadata; pass its bundle folder instead", path)
    try:
        data = loads_strict(raw)
    except json.JSONDecodeError as err:
        raise ModelError(f"its tumor-edge metadata is not valid JSON ({err})", path) from err
    except ConfigError as err:
        raise ModelError(f"invalid tumor-edge metadata: {err.reason}", path) from err
    return BundleMetadata.from_dict(data, path)


def read_onnx_metadata(path: Path) -> BundleMetadata:
    """The tumor-edge metadata of a lone .onnx file (loads it without optimisation just to read it)."""
    return metadata_from_props(open_backend(path, BackendOptions(optimization="none")).metadata_props(), Path(path))


def check_input_shape(backend: Backend, metadata: BundleMetadata) -> None:
    """Refuse a model whose declared input disagrees with the preprocessing its metadata promises."""
    spec = metadata.preprocessing
    shape = list(backend.input_shape or [])
    if shape and len(shape) != 4:
        raise ModelError(f"model input has rank {len(shape)} ({shape}); expected NHWC images", backend.path)
    if len(shape) == 4 and isinstance(shape[3], int) and shape[3] != 3:
        layout = " (channels-first? bundles are NHWC)" if shape[1] == 3 else ""
        raise ModelError(f"model input {shape} does not take 3-channel NHWC images{layout}", backend.path)
    h, w = backend.input_hw()
    if (h is not None and h != spec.height) or (w is not None and w != spec.width):
        raise ModelError(f"model input is {h}x{w} but its metadata says {spec.height}x{spec.width}",
                         backend.path)


def check_outputs(backend: Backend, metadata: BundleMetadata) -> None:
    """Every output role the metadata names must exist in the model."""
    count = len(backend.output_names)
    for role, spec in metadata.outputs.items():
        if spec.index >= count:
            raise ModelError(f"metadata puts output '{role}' at index {spec.index}, but the model has {count} "
                             f"output{'s' if count != 1 else ''}", backend.path)


def open_bundle_model(bundle_dir: Path, name: str, metadata: BundleMetadata,
                      options: BackendOptions | None = None) -> Backend:
    """Load a model listed in a bundle, checked to be the file the metadata describes (confined to the folder,
    same size, same sha256) and to agree with what the file carries about itself (classes, preprocessing, output
    roles: `check_binding`): a tampered or truncated model, or relabelling metadata, never produces a result.

    The cheap checks come first; the sha256 runs on a second thread while the engine loads this device's cached
    optimised form of the recorded hash (never the unchecked file: see `open_backend`'s `source_check`), and the
    backend is returned only once the hash has matched."""
    options = options or BackendOptions()
    engine = engine_of(Path(bundle_dir) / name)  # an unknown format or a missing engine is said first
    path, digest = check_model_file(bundle_dir, name, metadata, check_hash=False)
    entry = metadata.models[name]
    if not options.verify_hashes:
        if engine == "onnxruntime":
            check_external_locations(bundle_dir, entry, external_data_locations(path))
        backend = open_backend(path, options, sha256=entry.identity() or None)
    else:
        from tumor_edge.runtime.background import Background

        hashing = Background(_check_sha256, bundle_dir, name, metadata, path, digest, engine)
        backend = open_backend(path, options, sha256=entry.identity(), source_check=hashing.result)
    check_binding(metadata, backend.metadata_props(), path)
    return backend


def _check_sha256(bundle_dir: Path, name: str, metadata: BundleMetadata, path: Path, recorded: str,
                  engine: str = "onnxruntime") -> None:
    """The sha256 half of `check_model_file`, streamed through one reused buffer (it runs on a second thread, see
    `digest_file`), then the model's external data: every location the (now verified) model names must be listed,
    and each listed file must match its sha256. A mismatch is reported by `check_model_file` itself, which hashes
    again and raises its one-line BundleIntegrityError: the message has one home, and the rare failure may cost a
    second read."""
    from tumor_edge.runtime.backends.optimized import digest_file

    entry = metadata.models[name]
    try:
        actual = digest_file(path)
    except OSError as err:
        raise ModelError(f"cannot read the model ({first_line(err)})", path) from err
    if actual != recorded:
        check_model_file(bundle_dir, name, metadata, check_hash=True)
        raise BundleIntegrityError("changed while it was checked; refusing to run it", path)
    if engine == "onnxruntime":
        check_external_locations(bundle_dir, entry, external_data_locations(path))
    for member in entry.files.values():
        member_file = Path(bundle_dir) / member.name
        try:
            intact = digest_file(member_file) == member.sha256
        except OSError as err:
            raise ModelError(f"cannot read {entry.file}'s data ({first_line(err)})", member_file) from err
        if not intact:
            check_member_files(bundle_dir, entry, check_hash=True)
            raise BundleIntegrityError("changed while it was checked; refusing to run it", member_file)


class Classifier:
    """A model file plus the metadata that says how to feed it and read its outputs."""

    def __init__(self, backend: Backend, metadata: BundleMetadata):
        self.backend = backend
        self.metadata = metadata
        self.classes = list(metadata.classes)
        self.preprocessing = metadata.preprocessing
        self.output_specs = metadata.outputs  # role -> OutputSpec, "scores" first
        check_input_shape(backend, metadata)
        check_outputs(backend, metadata)
        try:  # calibration temperature and OOD fit from the bundle (none in older bundles)
            self.trust = TrustSettings.from_fields(metadata.calibration, metadata.ood)
        except ConfigError as err:
            raise ModelError(f"invalid tumor-edge metadata: {err.reason}", backend.path) from err

    @classmethod
    def from_bundle(cls, path: str | Path, model_file: str | None = None,
                    options: BackendOptions | None = None) -> Classifier:
        """A bundle folder (optionally naming one of its files), a bundle's model file, or a lone .onnx."""
        path = Path(path)
        if not path.exists():
            raise ModelError("no such bundle or model file", path)
        if path.is_dir():
            metadata = BundleMetadata.read(path)
            if model_file is None:  # the device's checked and measured choice (tumor_edge.runtime.choice)
                from tumor_edge.runtime.choice import pick_model

                model_file = pick_model(path, metadata, functools.partial(cls.from_bundle, path, options=options),
                                        options)
            return cls(open_bundle_model(path, model_file, metadata, options), metadata)
        if model_file:
            raise ModelError("a model file name picks a file inside a bundle folder, and this is a file already",
                             path)
        if (path.parent / METADATA_FILE).is_file():
            metadata = BundleMetadata.read(path.parent)
            return cls(open_bundle_model(path.parent, path.name, metadata, options), metadata)
        if path.suffix.lower() == ".onnx":
            backend = open_backend(path, options)
            # The session just created holds the metadata_props: no second load to read them.
            return cls(backend, metadata_from_props(backend.metadata_props(), path))
        raise ModelError(f"no {METADATA_FILE} beside this model file; pass the bundle folder", path)

    @property
    def model_path(self) -> Path:
        """The file actually running (the cached optimised form of the requested one, when there is one)."""
        return self.backend.loaded_path

    # ---- pixels in, outputs out ------------------------------------------------------------------------

    def infer_outputs(self, batch_pixels: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 (N, H, W, 3) -> every output by role: "scores" as probabilities (N, classes), the others raw."""
        raw = self.backend.run(scale(batch_pixels, self.preprocessing))
        n = len(batch_pixels)
        out: dict[str, np.ndarray] = {}
        for role, spec in self.output_specs.items():
            value = raw[spec.index]
            if role == SCORES:
                if value.ndim != 2 or value.shape != (n, len(self.classes)):
                    raise ModelError(f"model gives output of shape {value.shape} but its metadata names "
                                     f"{len(self.classes)} classes", self.backend.path)
                if spec.type == "logits":
                    value = softmax(value)
                else:
                    check_probabilities(value, self.backend.path)
                value = calibrate(value, self.trust)
            elif value.ndim == 0 or value.shape[0] != n:
                raise ModelError(f"model output '{role}' has shape {value.shape}, not one row per image",
                                 self.backend.path)
            out[role] = value
        return out

    def infer(self, batch_pixels: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) -> probabilities (N, classes)."""
        return self.infer_outputs(batch_pixels)[SCORES]

    def to_prediction(self, probs: np.ndarray, source: str | None, frame: int | None = None,
                      frame_count: int | None = None, outputs: dict[str, np.ndarray] | None = None,
                      warnings: Sequence[str] = ()) -> Prediction:
        index = int(np.argmax(probs))
        return Prediction(self.classes[index], index, {c: float(p) for c, p in zip(self.classes, probs)},
                          source, frame, frame_count, dict(outputs or {}), tuple(warnings))

    _to_prediction = to_prediction  # older name, kept for callers

    def predictions(self, batch_pixels: np.ndarray, items: Sequence[tuple[str | None, int | None, int | None]],
                    checked: Sequence[list[str] | None] | None = None) -> list[Prediction | Failure]:
        """Classify a batch of model-sized pixels; `items` gives each image's (source, frame, frame_count). An
        image whose class scores are not finite becomes a Failure: no label is better than a wrong one.
        `checked`: each image's input-check findings when a decode worker already made them (None: made here)."""
        outputs = self.infer_outputs(batch_pixels)
        extra = {role: value for role, value in outputs.items() if role != SCORES}
        distances = ood_scores(extra, self.trust)
        results: list[Prediction | Failure] = []
        for i, (source, frame, count) in enumerate(items):
            row = outputs[SCORES][i]
            if not np.all(np.isfinite(row)):  # a broken model must give no label (nor a bare NaN in JSON)
                where = source or "image"
                where = where if frame is None else f"{where} [frame {frame}]"
                results.append(Failure(source or "image", f"{where}: the model's output is not a number (NaN or "
                                                          "infinite) for this image; no label given",
                                       ModelError("the model's output is not a number (NaN or infinite) for "
                                                  f"{where}; no label given", self.backend.path)))
                continue
            warnings = warnings_for(batch_pixels[i], None if distances is None else float(distances[i]), self.trust,
                                    None if checked is None else checked[i])
            results.append(self.to_prediction(row, source, frame, count,
                                              {role: value[i] for role, value in extra.items()}, warnings))
        return results

    def _array_pixels(self, item: Image.Image | np.ndarray) -> np.ndarray:
        spec = self.preprocessing
        if isinstance(item, Image.Image):
            return resize_rgb(pil_to_rgb(item), spec)
        array = np.asarray(item)
        if array.dtype != np.uint8:
            if not np.issubdtype(array.dtype, np.integer):
                raise ConfigError("array input must be integer pixels (uint8 RGB, or a 16-bit grey scan); "
                                  "scale float images to 0..255 uint8 yourself")
            array = to_uint8(array)  # 16-bit scans: min-max, as for 16-bit image files
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise ConfigError(f"array input must be (H, W), (H, W, 3) or (H, W, 4), not {array.shape}")
        if array.shape[:2] != spec.size:
            return resize_rgb(Image.fromarray(np.ascontiguousarray(array[..., :3])), spec)
        return array[..., :3]

    # ---- the public calls -------------------------------------------------------------------------------

    def predict(self, item: ImageInput) -> Prediction:
        """One image (path, Pillow image or array); a multi-frame file gives its middle frame."""
        return self.predict_batch([item])[0]

    def predict_batch(self, items: Sequence[ImageInput]) -> list[Prediction]:
        """All items must be readable (the first bad file raises InputImageError); `iter_predictions` is the
        fault-tolerant streaming variant. Files go through the same decoding as `iter_predictions`."""
        from tumor_edge.runtime.batch import decode_file

        if isinstance(items, (str, Path, Image.Image, np.ndarray)):
            items = [items]
        if not items:
            return []
        pixels, sources = [], []
        for item in items:
            if isinstance(item, (str, Path)):
                decoded = decode_file(item, self.preprocessing, "middle")
                if decoded.failure is not None:
                    raise decoded.failure.exception()
                pixels.append(decoded.pixels[0][0])
                sources.append((decoded.source, None, None))
            else:
                pixels.append(self._array_pixels(item))
                sources.append((None, None, None))
        results = self.predictions(np.stack(pixels), sources)
        for result in results:
            if not result.ok:
                raise result.exception()
        return results

    def iter_predictions(self, paths: Iterable[str | Path] | str | Path, batch_size: int = 16,
                         frames: str = "middle", workers: int | None = None) -> Iterator[Prediction | Failure]:
        """Stream a Prediction or a Failure per image, in input order, batch by batch; bad files never stop it.

        `frames`: "middle" or "all" frames of multi-frame DICOM files. `workers`: decoding threads (default 2;
        0 decodes inline). Model errors (not file errors) still raise.
        """
        from tumor_edge.runtime.batch import iter_predictions

        return iter_predictions(self, paths, batch_size=batch_size, frames=frames, workers=workers)

    def probabilities_for_files(self, paths: Iterable[str | Path], batch_size: int = 16) -> np.ndarray:
        """Probabilities (N, classes) for image files, in order, through `iter_predictions` exactly as
        `classify` runs them (export's parity and `verify --data` use this). The first unreadable file raises
        its InputImageError: a parity number over a silently shortened list would be wrong."""
        rows = []
        for result in self.iter_predictions(paths, batch_size=batch_size, frames="middle"):
            if not result.ok:
                raise result.exception()
            rows.append([result.probabilities[c] for c in self.classes])
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(self.classes))

    predict_proba_files = probabilities_for_files  # older name, kept for callers

    def classify(self, path: str | Path, frames: str | int = "middle", axis: str = "axial",
                 slices: str | int = "middle", batch_size: int = 16, abstain: bool = False) -> ScanResult:
        """Any scan a reader claims (`runtime/readers/`): an image file, a multi-frame file, a NIfTI volume or a
        DICOM series folder. Gives its predictions (per image, frame or slice), a volume's summary, and its
        failures instead of raising for a bad file (`ScanResult.exception()` to raise one). Model errors raise."""
        from tumor_edge.runtime.scans import ScanOptions, classify_scan  # here: an image-only run never loads it

        return classify_scan(self, path, ScanOptions(frames, axis, slices, batch_size, 0, abstain))

    def iter_results(self, paths: Iterable[str | Path] | str | Path, frames: str | int = "middle",
                     axis: str = "axial", slices: str | int = "middle", batch_size: int = 16,
                     workers: int | None = None, abstain: bool = False) -> Iterator[ScanItem]:
        """Stream results for images and volumes alike, in input order: a Prediction per image (frame, slice),
        a Failure per unreadable input, and after a volume's slices its VolumeSummary (as `classify` prints)."""
        from tumor_edge.runtime.scans import ScanOptions, iter_scan_results

        return iter_scan_results(self, paths, ScanOptions(frames, axis, slices, batch_size, workers, abstain))
