"""The device-side API: `Classifier.from_bundle(path).predict("scan.jpg")`, `.classify("head.nii.gz")`.

A Classifier is a model file plus the metadata that says how to feed it and read its outputs. Every call that
takes files is a thin caller of the one prediction path (below), so a file is decoded, checked and labelled the
same way everywhere: `classify`, `serve` and export's parity all run it. A bundle's model file goes through the
open stage (`open_bundle_model`, below) before it is loaded.

The path: decode -> input checks -> inference -> post-processing -> optional work on the pixels the model saw ->
a row. Files are decoded in a few threads a bounded distance ahead of inference, so memory stays flat however many
files there are; results come in input order. An unreadable input becomes a `Failure` in the stream, so one
corrupt scan never stops a batch; model errors raise. The path takes anything with the Classifier's
`preprocessing`, `postprocessing` and `predictions` (`postprocess.Model`).
"""

from __future__ import annotations

import functools
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image

from tumor_edge.contracts.bundle import (
    METADATA_FILE,
    ONNX_META_KEY,
    SCORES,
    BundleMetadata,
    check_binding,
    check_external_locations,
    loads_strict,
    read_model_files,
)
from tumor_edge.errors import ConfigError, ModelError, TumorEdgeError
from tumor_edge.runtime.backends import Backend, BackendOptions, backend_factory, engine_row, hw_of, open_backend
from tumor_edge.runtime.backends.onnxruntime_backend import external_data_locations
from tumor_edge.runtime.postprocess import (
    Failure,
    Model,
    OnPixels,
    PostProcessing,
    Prediction,
    VolumeSummary,
    calibrate,
    failure_of,
    input_warnings,
    not_a_number,
    ood_scores,
    probability_problem,
    softmax,
    warnings_for,
)
from tumor_edge.runtime.preprocess import Preprocessing, load_rgb_frames, resize_rgb, scale
from tumor_edge.runtime.readers import is_volume
from tumor_edge.runtime.readers.base import check_frames
from tumor_edge.runtime.readers.pillow import pil_to_rgb, to_uint8
from tumor_edge.signing import TRUST_ENV

ImageInput = Union[str, Path, Image.Image, np.ndarray]

DEFAULT_WORKERS = 2


@dataclass
class ScanResult:
    """One path's results: its predictions (one per image, frame or slice), its volume summary (volumes only),
    and its failures (an unreadable file: no predictions; a volume broken half-way: some, then a failure)."""

    source: str
    predictions: list[Prediction] = field(default_factory=list)
    summary: VolumeSummary | None = None
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def label(self) -> str | None:
        """The volume's label, else the (first) prediction's; None when nothing was labelled."""
        if self.summary is not None:
            return self.summary.label
        labelled = [p for p in self.predictions if not p.abstained]
        return labelled[0].label if labelled else None

    def exception(self) -> TumorEdgeError:
        return self.failures[0].exception()


@dataclass(frozen=True)
class Decoded:
    """The outcome of decoding one file: its frames' pixels, or why it failed."""

    source: str
    pixels: list[tuple[np.ndarray, int | None, int | None]]  # (uint8 HxWx3, frame, frame_count)
    failure: Failure | None = None
    checked: list[list[str]] | None = None  # each frame's input-check findings, when made while decoding


def decode_file(path: str | Path, spec: Preprocessing, frames: str | int = "middle") -> Decoded:
    """Decode and resize one 2-D file for the model, never raising for a bad file."""
    source = str(path)
    try:
        decoded = load_rgb_frames(Path(path), frames)
        pixels = [(resize_rgb(f.image, spec), f.index if f.count > 1 else None, f.count if f.count > 1 else None)
                  for f in decoded]
        return Decoded(source, pixels)
    except Exception as err:  # a decoder bug on a hostile file must not end the batch either
        return Decoded(source, [], failure_of(source, err))


def _decoded_in_order(paths: Iterable[str | Path], decode: Callable[[str | Path], Decoded], workers: int,
                      lookahead: int) -> Iterator[Decoded]:
    """Decode in `workers` threads at most `lookahead` files ahead, yielding in input order."""
    if workers <= 0:
        yield from map(decode, paths)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tumor-edge-decode") as pool:
        pending: deque = deque()
        try:
            for path in paths:
                pending.append(pool.submit(decode, path))
                if len(pending) >= lookahead:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # the consumer stopped early (Ctrl-C, break): drop queued work
                future.cancel()


def iter_predictions(model: Model, paths: Iterable[str | Path] | str | Path, batch_size: int = 16,
                     frames: str | int = "middle", workers: int | None = None, abstain: bool = False,
                     on_pixels: OnPixels | None = None) -> Iterator[Prediction | Failure]:
    """A Prediction or a Failure for each 2-D image (each frame with frames="all"), in input order.

    Results come a batch at a time; a failure waits for the batch its neighbours are in, so the order holds.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a whole number of at least 1, not {batch_size!r}")
    check_frames(frames)
    if isinstance(paths, (str, Path)):
        paths = [paths]  # one file, not its name's characters
    workers = DEFAULT_WORKERS if workers is None else workers
    if isinstance(paths, Sequence) and len(paths) <= 1:
        workers = 0  # one file: a thread pool would only add start-up time
    spec = model.preprocessing
    # In the workers the input checks overlap inference; inline they would only move their float temporaries
    # ahead of the engine's run, into the process's peak.
    check = model.postprocessing.input_checks and workers > 0

    def decode(path: str | Path) -> Decoded:
        decoded = decode_file(path, spec, frames)
        if check and decoded.failure is None:
            return replace(decoded, checked=[input_warnings(pixels) for pixels, _, _ in decoded.pixels])
        return decoded

    queue: list[tuple[Failure | tuple[np.ndarray, tuple[str, int | None, int | None], list[str] | None]]] = []

    def flush() -> Iterator[Prediction | Failure]:
        ready = [item for item in queue if not isinstance(item, Failure)]
        if ready:
            results = zip(model.predictions(np.stack([p for p, _, _ in ready]), [i for _, i, _ in ready],
                                            [found for _, _, found in ready], abstain), ready)
        for item in queue:
            if isinstance(item, Failure):
                yield item
                continue
            result, (seen, _, _) = next(results)
            yield on_pixels(result, seen) if on_pixels is not None and result.ok else result
        queue.clear()

    for decoded in _decoded_in_order(paths, decode, workers, lookahead=max(2 * batch_size, 2 * workers)):
        if decoded.failure is not None:
            queue.append(decoded.failure)
            if len(queue) == 1:  # nothing waiting on inference: report it now
                yield from flush()
            continue
        found = decoded.checked or [None] * len(decoded.pixels)
        for (pixels, frame, count), checked in zip(decoded.pixels, found):
            queue.append((pixels, (decoded.source, frame, count), checked))
            if sum(not isinstance(item, Failure) for item in queue) >= batch_size:
                yield from flush()
    yield from flush()


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


def check_model_io(backend: Backend, metadata: BundleMetadata) -> None:
    """Refuse a model whose declared input disagrees with the preprocessing its metadata promises, or that lacks
    an output role the metadata names."""
    spec = metadata.preprocessing
    shape = list(backend.input_shape or [])
    if shape and len(shape) != 4:
        raise ModelError(f"model input has rank {len(shape)} ({shape}); expected NHWC images", backend.path)
    if len(shape) == 4 and isinstance(shape[3], int) and shape[3] != 3:
        layout = " (channels-first? bundles are NHWC)" if shape[1] == 3 else ""
        raise ModelError(f"model input {shape} does not take 3-channel NHWC images{layout}", backend.path)
    h, w = hw_of(backend.input_shape)
    if (h is not None and h != spec.height) or (w is not None and w != spec.width):
        raise ModelError(f"model input is {h}x{w} but its metadata says {spec.height}x{spec.width}",
                         backend.path)
    count = len(backend.output_names)
    for role, spec in metadata.outputs.items():
        if spec.index >= count:
            raise ModelError(f"metadata puts output '{role}' at index {spec.index}, but the model has {count} "
                             f"output{'s' if count != 1 else ''}", backend.path)


class Classifier:
    """A model file plus the metadata that says how to feed it and read its outputs."""

    def __init__(self, backend: Backend, metadata: BundleMetadata):
        self.backend = backend
        self.metadata = metadata
        self.classes = list(metadata.classes)
        self.preprocessing = metadata.preprocessing
        self.output_specs = metadata.outputs  # role -> OutputSpec, "scores" first
        check_model_io(backend, metadata)
        try:
            self.postprocessing = PostProcessing.from_fields(metadata.calibration, metadata.ood)
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
        """The model file running."""
        return self.backend.path

    # ---- inference and post-processing: pixels in, rows out ------------------------------------------------

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
                elif problem := probability_problem(value):
                    raise ModelError(f"its class scores are declared probabilities in {METADATA_FILE} but are "
                                     f"not ({problem}); no result shown", self.backend.path)
                value = calibrate(value, self.postprocessing)
            elif value.ndim == 0 or value.shape[0] != n:
                raise ModelError(f"model output '{role}' has shape {value.shape}, not one row per image",
                                 self.backend.path)
            out[role] = value
        return out

    def predictions(self, batch_pixels: np.ndarray, items: Sequence[tuple[str | None, int | None, int | None]],
                    checked: Sequence[list[str] | None] | None = None, abstain: bool = False,
                    notes: Sequence[Sequence[str]] | None = None) -> list[Prediction | Failure]:
        """A row per model-sized picture; `items` gives each one's (source, frame, frame_count). A picture whose
        class scores are not finite becomes a Failure; with `abstain`, a warned one gets no label.
        `checked`: each picture's input-check findings when a decode worker already made them (None: made here).
        `notes`: warnings each picture's reader gave (a volume slice's), shown before the checks' findings."""
        outputs = self.infer_outputs(batch_pixels)
        extra = {role: value for role, value in outputs.items() if role != SCORES}
        distances = ood_scores(extra, self.postprocessing)
        results: list[Prediction | Failure] = []
        for i, (source, frame, count) in enumerate(items):
            row = outputs[SCORES][i]
            if not np.all(np.isfinite(row)):
                results.append(not_a_number(source, frame, self.backend.path))
                continue
            warnings = warnings_for(batch_pixels[i], None if distances is None else float(distances[i]),
                                    self.postprocessing, None if checked is None else checked[i])
            if notes is not None and self.postprocessing.input_checks:
                warnings = [*notes[i], *warnings]
            index = int(np.argmax(row))
            results.append(Prediction(self.classes[index], index, {c: float(p) for c, p in zip(self.classes, row)},
                                      source, frame, count, {role: value[i] for role, value in extra.items()},
                                      tuple(warnings), abstained=abstain and bool(warnings)))
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

    # ---- the public calls: thin callers of the pipeline ------------------------------------------------------

    def predict(self, item: ImageInput) -> Prediction:
        """One image (path, Pillow image or array); a multi-frame file gives its middle frame."""
        return self.predict_batch([item])[0]

    def predict_batch(self, items: Sequence[ImageInput]) -> list[Prediction]:
        """All items must be readable (the first bad file raises InputImageError); `iter_predictions` is the
        fault-tolerant streaming variant. Files go through the same decoding as `iter_predictions`."""
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
        """Stream a Prediction or a Failure per 2-D image, in input order, batch by batch; bad files never stop it.

        `frames`: "middle" or "all" frames of multi-frame files. `workers`: decoding threads (default 2; 0 decodes
        inline). Model errors (not file errors) still raise.
        """
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

    def classify(self, path: str | Path, frames: str | int = "middle", axis: str = "axial",
                 slices: str | int = "middle", batch_size: int = 16, abstain: bool = False) -> ScanResult:
        """Any scan a reader claims (`runtime/readers/`): an image file, a multi-frame file, a NIfTI volume or a
        DICOM series folder. Gives its predictions (per image, frame or slice), a volume's summary, and its
        failures instead of raising for a bad file (`ScanResult.exception()` to raise one). Model errors raise."""
        result = ScanResult(str(path))
        for item in self.iter_results([path], frames, axis, slices, batch_size, 0, abstain):
            if isinstance(item, (Prediction, Failure)):
                (result.predictions if item.ok else result.failures).append(item)
            else:
                result.summary = item
        return result

    def iter_results(self, paths: Iterable[str | Path] | str | Path, frames: str | int = "middle",
                     axis: str = "axial", slices: str | int = "middle", batch_size: int = 16,
                     workers: int | None = None, abstain: bool = False,
                     on_pixels: OnPixels | None = None) -> Iterator[Prediction | Failure | VolumeSummary]:
        """Stream results for images and volumes alike, in input order: a Prediction per image (frame, slice),
        a Failure per unreadable input, and after a volume's slices its VolumeSummary (as `classify` prints);
        runs of 2-D files are streamed in batches, each volume sliced, classified and summarised in its turn.
        `abstain`: a warned picture gets no label (and a warned slice does not count in its volume's summary).
        `on_pixels(prediction, pixels)`: called with each prediction and the pixels the model saw; what it
        returns is yielded (`classify --heatmap` draws its overlay there, without decoding the file again)."""
        if isinstance(paths, (str, Path)):
            paths = [paths]
        run: list[str | Path] = []

        def images() -> Iterator[Prediction | Failure | VolumeSummary]:
            yield from iter_predictions(self, list(run), batch_size, frames, workers, abstain, on_pixels)
            run.clear()

        for path in paths:
            if not is_volume(path):
                run.append(path)
                continue
            if run:
                yield from images()
            from tumor_edge.runtime.volume import classify_volume  # a JPEG never loads the volume code

            yield from classify_volume(self, path, axis, slices, batch_size, abstain, on_pixels=on_pixels)
        if run:
            yield from images()


# The open stage: each listed file is read once (`read_model_files`), checked, and the same bytes go to the engine:
# nothing is opened again by path, so a file exchanged after the check cannot be what runs. A trust setting
# (`BackendOptions.trust`, else $TUMOR_EDGE_TRUST; `trust=False`: export's own parity) checks the signature against
# the digests of exactly these bytes and of the metadata.json bytes the record was parsed from.

def open_bundle_model(bundle_dir: Path, name: str, metadata: BundleMetadata,
                      options: BackendOptions | None = None) -> Backend:
    """Load a model listed in a bundle from its bytes and its member files', read once and proved against
    metadata.json; with `options.trust`, only once its signature covers those bytes and metadata.json's. An .onnx
    model may name no external data its entry does not list (onnxruntime would read it unchecked). What the file
    carries about itself must agree with the metadata (classes, preprocessing, output roles: `check_binding`):
    relabelling metadata never produces a result."""
    options = options or BackendOptions()
    engine = engine_row(Path(bundle_dir) / name).name  # an unknown format or a missing engine is said first
    files = read_model_files(bundle_dir, name, metadata)
    if engine == "onnxruntime":
        check_external_locations(bundle_dir, metadata.models[name], external_data_locations(files.data, files.path))
    trust = options.trust
    if trust is None and os.environ.get(TRUST_ENV) is not None:
        from tumor_edge.signing.trust import trust_from_env

        trust = trust_from_env()
    if trust:
        from tumor_edge.signing.trust import check_loaded

        check_loaded(Path(bundle_dir), trust, metadata, files.digests)
    backend = backend_factory(engine)(files.path, options, files=files)
    check_binding(metadata, backend.metadata_props(), files.path)
    return backend
