"""Post-processing: a model's class scores to the probabilities and warnings a row shows, each rule once, and the
rows themselves (`Prediction`, `Failure`: what every stage yields, so this module imports none of them). The
calibration package loads only for a bundle that has `calibration` or `ood` fields.

The input checks ask whether this is a brain MRI slice at all, cheaply, on the decoded pixels: a classifier
answers every input with a confident label, including a holiday photograph. An MRI slice is stored grey (its
channels agree), its neighbouring pixels correlate strongly (noise's do not), and it is surrounded by air, which
images black (a photograph or chest film fills the frame). The model's own feature-space check (`warnings_for`)
catches subtler departures.

The writers (`WRITERS`: a table for people, JSON lines or CSV for scripts) stream a row per result and stay
well-formed whatever the names: names pass the one escaping rule (`errors.one_line`), so a row is one line and
never drives the terminal; CSV cells never start a spreadsheet formula; JSON never holds a bare NaN. Every JSON and
CSV row names the model file and engine that produced it: the device picks the file by measurement.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

import numpy as np

from tumor_edge.contracts.preprocessing import Preprocessing
from tumor_edge.errors import ConfigError, InputImageError, ModelError, TumorEdgeError, one_line, valid_unicode
from tumor_edge.runtime.readers.base import release_frames

# The input checks' thresholds, chosen with margin from measurements on MRI slices (real and synthetic) and on
# colour photographs, noise and blank images (tests/runtime/test_ood_checks.py holds the measured cases).
MAX_COLOUR = 12.0  # mean |R-G| + |G-B| + |B-R| / 3 over pixels, in grey levels; JPEG grey ~0-2
MIN_CONTRAST = 4.0  # standard deviation in grey levels; below: blank or constant
MIN_NEIGHBOUR_CORRELATION = 0.5  # lag-1 correlation of adjacent pixels; white noise ~0
MIN_DARK_FRACTION = 0.25  # share of the image's outer ring (6 %) in the darkest 15 % of its grey range


@dataclass(frozen=True)
class PixelStats:
    colour: float
    contrast: float
    neighbour_correlation: float
    dark_fraction: float


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 1.0


def pixel_stats(rgb: np.ndarray) -> PixelStats:
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        rgb = rgb[..., None].repeat(3, axis=-1)
    channels = rgb[..., :3].astype(np.float32)
    r, g, b = channels[..., 0], channels[..., 1], channels[..., 2]
    colour = float((np.abs(r - g) + np.abs(g - b) + np.abs(b - r)).mean() / 3)
    grey = channels.mean(axis=-1)
    contrast = float(grey.std())
    horizontal = _correlation(grey[:, :-1].ravel(), grey[:, 1:].ravel()) if grey.shape[1] > 1 else 1.0
    vertical = _correlation(grey[:-1].ravel(), grey[1:].ravel()) if grey.shape[0] > 1 else 1.0
    lo, hi = float(grey.min()), float(grey.max())
    ring = max(1, round(0.06 * min(grey.shape)))
    border = np.concatenate([grey[:ring].ravel(), grey[-ring:].ravel(), grey[:, :ring].ravel(),
                             grey[:, -ring:].ravel()])
    dark = float(np.mean(border <= lo + 0.15 * (hi - lo))) if hi > lo else 1.0
    return PixelStats(colour, contrast, min(horizontal, vertical), dark)


def input_warnings(rgb: np.ndarray, content_only: bool = False) -> list[str]:
    """Reasons (empty: nothing found) why `rgb` does not look like a brain MRI slice. `content_only`: only the
    checks that hold for a volume slice's own voxels before it is framed on a black canvas (which would give any
    constant or noise volume the dark surround of a head): blank or constant, and noise."""
    s = pixel_stats(rgb)
    if s.contrast < MIN_CONTRAST:
        return [f"blank or constant image (contrast {s.contrast:.1f} grey levels): not a scan"]
    if s.neighbour_correlation < MIN_NEIGHBOUR_CORRELATION:
        return [f"looks like noise (neighbouring pixels correlate {s.neighbour_correlation:.2f}; real images "
                f"> {MIN_NEIGHBOUR_CORRELATION})"]
    if content_only:
        return []
    if s.colour > MAX_COLOUR:
        return [f"colour image (channels differ by {s.colour:.0f} grey levels on average): MRI slices are grey; "
                f"is this a photograph?"]
    if s.dark_fraction < MIN_DARK_FRACTION:
        return [f"no dark background ({100 * s.dark_fraction:.0f} % of the image's edge near black): an MRI "
                f"slice shows the head surrounded by air"]
    return []


def flag_rates(score_flags: np.ndarray, images: np.ndarray) -> dict[str, float | int]:
    """How a fitted score (`score_flags`, one bool per image) and the input checks flag a set of uint8 images:
    the shares flagged by each and by either. One row shape for train's and export's OOD evaluations."""
    flagged = np.asarray(score_flags, dtype=bool)
    checks = np.array([bool(input_warnings(p)) for p in images], dtype=bool)
    return {"count": int(len(images)), "flagged": float(np.mean(flagged)),
            "input_checks_flagged": float(np.mean(checks)), "either_flagged": float(np.mean(flagged | checks))}


MAX_OOD_DIMS = 4096
MAHALANOBIS = "mahalanobis"

# How far a model's "probabilities" may stray from a distribution and still be one, per class: half a step of an
# 8-bit output quantized over [-1, 1] (1/254: a symmetric int8 scale is the widest an int8 model's softmax output
# gets) plus float16's rounding of a value below 1 (2**-11). Raw logits or a halved softmax are far outside.
PROBABILITY_SLACK_PER_CLASS = 1 / 254 + 2 ** -11
PROBABILITY_RANGE_SLACK = 1e-6  # a value just above 1 or below 0 is float rounding; more is not a probability


@dataclass(frozen=True)
class PostProcessing:
    """What a bundle's `calibration` and `ood` fields ask of every prediction (nothing, without them)."""

    temperature: float | None = None  # None: probabilities as the model gives them
    ood_centres: np.ndarray | None = None  # (classes, dims), for the Mahalanobis score
    ood_threshold: float | None = None
    ood_role: str | None = None  # the model output the OOD score reads
    input_checks: bool = True
    ood_score: str | None = None  # MAHALANOBIS, or a key of OUTPUT_SCORES (the output is the score); None: no fit

    @classmethod
    def from_fields(cls, calibration: Any = None, ood: Any = None) -> PostProcessing:
        """From metadata's `calibration` and `ood` objects; anything malformed is a ConfigError naming it."""
        temperature = None
        if calibration is not None:
            from tumor_edge.calibration.temperature import T_BOUNDS

            if not isinstance(calibration, Mapping):
                raise ConfigError("field 'calibration' must be an object")
            t = calibration.get("temperature")
            if not _finite(t) or not T_BOUNDS[0] <= t <= T_BOUNDS[1]:
                raise ConfigError(f"field 'calibration.temperature' must be a number from {T_BOUNDS[0]} to "
                                  f"{T_BOUNDS[1]}")
            temperature = float(t)
        if ood is None:
            return cls(temperature)
        from tumor_edge.calibration.mahalanobis import OOD_ROLE, OUTPUT_SCORE_ROLE, OUTPUT_SCORES

        if not isinstance(ood, Mapping):
            raise ConfigError("field 'ood' must be an object")
        score = ood.get("score")
        if score not in (MAHALANOBIS, *OUTPUT_SCORES):
            raise ConfigError(f"field 'ood.score' names {str(score)[:40]!r}; this tumor-edge knows "
                              f"{MAHALANOBIS!r}, {', '.join(repr(k) for k in OUTPUT_SCORES)}")
        centres = None
        threshold = ood.get("threshold")
        if score == MAHALANOBIS:
            try:
                centres = np.asarray(ood.get("centres"), dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise ConfigError("field 'ood.centres' must be a list of equal-length lists of numbers") from err
            if centres.ndim != 2 or not 1 <= centres.shape[1] <= MAX_OOD_DIMS or not np.all(np.isfinite(centres)):
                raise ConfigError("field 'ood.centres' must be a list of equal-length lists of numbers")
            if not _finite(threshold) or threshold < 0:
                raise ConfigError("field 'ood.threshold' must be a non-negative number")
        elif not _finite(threshold):
            raise ConfigError("field 'ood.threshold' must be a finite number")
        role = ood.get("output_role", OOD_ROLE if score == MAHALANOBIS else OUTPUT_SCORE_ROLE)
        if not isinstance(role, str):
            raise ConfigError("field 'ood.output_role' must be a string")
        return cls(temperature, centres, float(threshold), role, ood_score=str(score))

    @property
    def has_ood(self) -> bool:
        return self.ood_score is not None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def probability_problem(rows: np.ndarray | list) -> str | None:
    """Why class scores (one row per picture) are no probability distributions, or None when they are: each
    value in [0, 1], each row summing to 1 within PROBABILITY_SLACK_PER_CLASS per class. Rows that are not finite
    are not judged here: such a picture gets no label (`not_a_number`)."""
    rows = np.atleast_2d(np.asarray(rows, dtype=np.float64))
    if rows.shape[-1] == 0:
        return "no class scores"
    finite = rows[np.all(np.isfinite(rows), axis=-1)]
    if not finite.size:
        return None
    low, high = float(finite.min()), float(finite.max())
    sums = finite.sum(axis=-1)
    worst = float(sums[np.argmax(np.abs(sums - 1.0))])
    if low < -PROBABILITY_RANGE_SLACK or high > 1 + PROBABILITY_RANGE_SLACK:
        return f"values from {low:.3g} to {high:.3g}, outside [0, 1]"
    if abs(worst - 1.0) > PROBABILITY_SLACK_PER_CLASS * rows.shape[-1]:
        return f"a row summing to {worst:.6g}, not 1"
    return None


def calibrate(probs: np.ndarray, settings: PostProcessing) -> np.ndarray:
    """(N, classes) probabilities, temperature-scaled when the bundle records a temperature."""
    if settings.temperature is None or settings.temperature == 1.0:
        return probs
    from tumor_edge.calibration.temperature import apply_temperature

    return apply_temperature(probs, settings.temperature)


def ood_scores(outputs: Mapping[str, np.ndarray], settings: PostProcessing) -> np.ndarray | None:
    """(N,) out-of-distribution scores, or None without the fit or its output."""
    z = outputs.get(settings.ood_role) if settings.ood_role else None
    if z is None:
        return None
    if settings.ood_score != MAHALANOBIS:  # the model computed it: one number per picture
        return np.asarray(z, dtype=np.float64).reshape(len(z))
    from tumor_edge.calibration.mahalanobis import score_projected

    return score_projected(np.asarray(z).reshape(len(z), -1), settings.ood_centres)


def warnings_for(pixels: np.ndarray, score: float | None, settings: PostProcessing,
                 checked: list[str] | None = None) -> list[str]:
    """One picture's warnings: the input checks on its (model-sized, uint8 RGB) pixels, then the feature check.
    `checked`: the input checks' findings already made on these pixels (by a decode worker), not made again."""
    found = list(checked) if checked is not None else input_warnings(pixels) if settings.input_checks else []
    if score is not None and settings.ood_threshold is not None and score > settings.ood_threshold:
        what = "feature distance" if settings.ood_score == MAHALANOBIS else str(settings.ood_score).replace("_", " ")
        found.append(f"unlike the training scans ({what} {score:.3g} above the threshold "
                     f"{settings.ood_threshold:.3g} that passes most validation scans)")
    return found


# The rows: a `Prediction` per classified picture, a `Failure` per input that could not be classified (the
# prediction stream yields them; one corrupt scan never stops a batch). A failure keeps its message and its
# exception, but none of the local variables of the traceback's frames: they hold the partly decoded image. The
# traceback itself (file names and lines, for `--debug`) stays.

@dataclass(frozen=True)
class Prediction:
    """One classified picture: the winning label, every class's probability, and any further model outputs."""

    label: str
    index: int
    probabilities: dict[str, float]
    source: str | None = None
    frame: int | None = None  # 0-based frame of a multi-frame file, or slice of a volume along `axis`
    frame_count: int | None = None
    # Outputs beyond the class scores, by the role metadata gives them (e.g. "heatmap"): this picture's slice.
    outputs: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    # Why this picture may not be what the model knows (input checks, feature distance); empty when none.
    warnings: tuple[str, ...] = ()
    heatmap_png: str | None = None  # where `classify --heatmap DIR` wrote its overlay
    heatmap_method: str | None = None  # what drew that overlay's map (e.g. "occlusion 8x8", "exact CAM 8x8")
    abstained: bool = False  # with `abstain`: a warned picture is given no label (probabilities kept)
    axis: str | None = None  # a volume's slice: the plane it was cut in (`frame` is then the slice index)

    ok = True  # Failure.ok is False: lets stream consumers branch without isinstance

    @property
    def confidence(self) -> float:
        return self.probabilities[self.label]

    def top_k(self, k: int) -> list[tuple[str, float]]:
        return sorted(self.probabilities.items(), key=lambda kv: kv[1], reverse=True)[:k]

    def to_dict(self) -> dict:
        """The row `classify --json` prints (a volume's slice names its axis, slice and slice count)."""
        data = {"file": self.source, "label": self.label, "confidence": self.confidence,
                "probabilities": self.probabilities}
        if self.axis is not None:
            data.update(axis=self.axis, slice=self.frame, slice_count=self.frame_count)
        elif self.frame is not None:
            data.update(frame=self.frame, frames=self.frame_count)
        if self.abstained:
            data.update(label=None, confidence=None, abstained=True)
        if self.warnings:
            data["warnings"] = list(self.warnings)
        if self.heatmap_png is not None:
            data.update(heatmap_png=self.heatmap_png, heatmap_method=self.heatmap_method)
        if self.outputs:
            data["outputs"] = {role: np.asarray(value).tolist() for role, value in self.outputs.items()}
        return data


@dataclass(frozen=True)
class Failure:
    """An input that could not be classified: `message` is the one line to show (it names the input)."""

    source: str
    message: str
    error: BaseException | None = field(default=None, compare=False, repr=False)

    ok = False

    @property
    def reason(self) -> str:
        """The message without the file name it starts with (CSV gives the file its own column)."""
        return self.message.removeprefix(f"{self.source}: ")

    def to_dict(self) -> dict:
        return {"file": self.source, "error": self.message}

    def exception(self) -> TumorEdgeError:
        """The error to raise for callers that stop at the first bad input (an InputImageError unless the
        decoder raised another tumor-edge error)."""
        if isinstance(self.error, TumorEdgeError):
            return self.error
        return InputImageError(self.reason, self.source)


@dataclass(frozen=True)
class VolumeSummary:
    """The volume's class (None when no slice got a label), its mean probabilities, which slices were classified,
    which support the class, and what the reader noticed about the volume."""

    source: str
    axis: str
    label: str | None
    probabilities: dict[str, float]
    slices: tuple[int, ...]  # indices classified (labelled or not), along the axis
    supporting: tuple[int, ...]  # indices whose own label is `label`
    slice_count: int  # slices along the axis in the volume
    warnings: tuple[str, ...] = ()
    rule: str = ""

    @property
    def confidence(self) -> float | None:
        return None if self.label is None else self.probabilities[self.label]

    def support_text(self) -> str:
        if self.label is None:
            return f"no slice of {len(self.slices)} was given a label"
        listed = ", ".join(str(i) for i in self.supporting)
        return f"{self.label} in {self.axis} slices {listed} ({len(self.supporting)} of {len(self.slices)})"

    def to_dict(self, notice: str) -> dict:
        return {"file": self.source, "summary": "volume", "axis": self.axis, "label": self.label,
                "confidence": self.confidence, "probabilities": self.probabilities, "slices": list(self.slices),
                "supporting_slices": list(self.supporting), "slice_count": self.slice_count,
                "warnings": list(self.warnings), "rule": self.rule, "notice": notice}


class Model(Protocol):
    """What the prediction stages need of a model (a runtime Classifier): the pipeline and the volume run take
    one, so the classifier calls them and they never import it."""

    preprocessing: Preprocessing
    postprocessing: Any  # a postprocess.PostProcessing
    classes: list[str]

    def predictions(self, batch_pixels: np.ndarray, items: Sequence[tuple[str | None, int | None, int | None]],
                    checked: Sequence[list[str] | None] | None = None, abstain: bool = False,
                    notes: Sequence[Sequence[str]] | None = None) -> list[Prediction | Failure]: ...


# Called with each prediction and the pixels the model saw; returns the prediction to give (an explanation's).
OnPixels = Callable[[Prediction, np.ndarray], Prediction]


def failure_of(source: str, err: BaseException, doing: str = "decoding") -> Failure:
    """The Failure for an exception met while reading `source`: a tumor-edge error says itself, anything else
    (a reader's bug on a hostile file) in one line; the traceback's frames are released (`release_frames`)."""
    release_frames(err)
    if isinstance(err, TumorEdgeError):
        return Failure(source, str(err), err)
    if isinstance(err, MemoryError):
        return Failure(source, f"{source}: out of memory while {doing}", err)
    return Failure(source, f"{source}: unexpected {type(err).__name__} while {doing} ({str(err)[:200]})", err)


def not_a_number(source: str | None, frame: int | None, model: Path) -> Failure:
    """The row of a picture whose class scores are NaN or infinite: no label is better than a wrong one."""
    where = source or "image"
    where = where if frame is None else f"{where} [frame {frame}]"
    reason = "the model's output is not a number (NaN or infinite)"
    return Failure(source or "image", f"{where}: {reason} for this image; no label given",
                   ModelError(f"{reason} for {where}; no label given", model))


# ---- writing the rows -------------------------------------------------------------------------------------------

# OWASP "CSV injection": a cell starting with one of these is a formula to Excel, LibreOffice and Sheets (OWASP's
# other two, tab and carriage return, never start a cell: `one_line` escapes them).
FORMULA_STARTS = ("=", "+", "-", "@")


class OutputError(TumorEdgeError):
    """Results could not be written (disk full, a closed file); the batch cannot usefully go on."""


def csv_cell(value: object) -> str:
    """A text cell that a spreadsheet shows as text, on one line: names escaped by the one rule (`one_line`), then
    OWASP's leading single quote before a formula start."""
    text = one_line(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def slice_label(axis: str, index: int | None, count: int | None) -> str:
    """'axial 45/120': slice 45 (0-based, along the axis in RAS order) of the volume's 120."""
    return f"{axis} {index}/{count}"


def summary_label(summary: VolumeSummary) -> str:
    n = len(summary.slices)
    return f"volume: {summary.axis}, {n} slice{'s' if n != 1 else ''}"


class Writer:
    """Streams results to `out`; a failure is a row only where the format has one (JSON, CSV)."""

    def __init__(self, out: TextIO, classes: Sequence[str], top_k: int | None, file_width: int, notice: str = "",
                 model: tuple[str, str] = ("", "")):
        self.out = out
        self.classes = list(classes)
        self.top_k = top_k
        self.file_width = file_width
        self.notice = notice  # the research-use notice each volume summary carries
        self.model_file, self.engine = model  # what produced every row: named in each machine-readable row

    def header(self) -> None:
        pass

    def prediction(self, result: Prediction) -> None:
        """One picture's row (a volume's slice: `result.axis` is set, `result.frame` is the slice index)."""
        raise NotImplementedError

    def volume_summary(self, summary: VolumeSummary) -> None:
        raise NotImplementedError

    def failure(self, result: Failure) -> None:
        pass

    def _line(self, text: str) -> None:
        try:
            self.out.write(text + "\n")
            self.out.flush()
        except BrokenPipeError:
            raise  # the reader went away (`| head`): the command exits quietly
        except OSError as err:
            raise OutputError(f"cannot write the results ({(err.strerror or str(err)).lower()})") from err


class TableWriter(Writer):
    """file, predicted class, probability, then the other classes from most to least likely."""

    def header(self) -> None:
        self.label_width = max(5, *(len(c) for c in self.classes))
        self._line(f"{'file':<{self.file_width}}  {'class':<{self.label_width}}  {'prob':>6}  others")

    def prediction(self, result: Prediction) -> None:
        k = self.top_k or len(self.classes)
        others = ", ".join(f"{one_line(label)} {p:.3f}" for label, p in result.top_k(k)[1:])
        label, prob = ("-", "     -") if result.abstained else (one_line(result.label), f"{result.confidence:6.3f}")
        # Warnings stay on the result's own row: one line per result, whatever a pipe or a reader counts.
        warned = f"  [warning: {one_line('; '.join(result.warnings))}]" if result.warnings else ""
        where = one_line(result.source)
        if result.axis is not None:
            where += f" [{slice_label(result.axis, result.frame, result.frame_count)}]"
        elif result.frame is not None:
            where += f" [frame {result.frame} of {result.frame_count}]"
        self._line(f"{where:<{self.file_width}}  {label:<{self.label_width}}  {prob}  "
                   f"{others}".rstrip() + warned)

    def volume_summary(self, summary: VolumeSummary) -> None:
        k = self.top_k or len(self.classes)
        ranked = sorted(summary.probabilities.items(), key=lambda kv: kv[1], reverse=True)
        if summary.label is None:
            label, prob, others = "-", "     -", ""
        else:
            label, prob = one_line(summary.label), f"{summary.confidence:6.3f}"
            others = ", ".join([f"{one_line(c)} {p:.3f}" for c, p in ranked if c != summary.label][:k - 1])
        notes = "; ".join([summary.support_text(), *summary.warnings, self.notice])
        where = f"{one_line(summary.source)} [{summary_label(summary)}]"
        self._line(f"{where:<{self.file_width}}  {label:<{self.label_width}}  {prob}  {others}".rstrip()
                   + f"  [{one_line(notes)}]")


class JsonLinesWriter(Writer):
    """One JSON object a line; failures too ({"file", "error"}), so a script sees every input accounted for.
    NaN or infinity is refused (strict JSON parsers reject them): such a picture's row is a failure."""

    def _json(self, data: dict, produced: bool = True) -> None:
        data["file"] = valid_unicode(data.get("file"))
        if produced:
            data.update(model_file=valid_unicode(self.model_file), engine=self.engine)
        self._line(json.dumps(data, allow_nan=False))

    def prediction(self, result: Prediction) -> None:
        data = result.to_dict()
        if self.top_k:
            data["top_k"] = [[label, p] for label, p in result.top_k(self.top_k)]
        self._json(data)

    def volume_summary(self, summary: VolumeSummary) -> None:
        self._json(summary.to_dict(self.notice))

    def failure(self, result: Failure) -> None:
        self._json(result.to_dict(), produced=False)


class CsvWriter(Writer):
    """file, frame, label, confidence, a probability column per class, warnings (joined by "; "), then error
    (empty unless the file failed). Cells with a comma, quote, CR or LF are quoted (RFC 4180), so every name
    stays one cell. A volume's slice rows say `axial 45/120` in `frame`; its summary row says which slices carry
    its class there (`volume: axial, 9 slices; glioma in axial slices ...`), the notice in `warnings`."""

    def _row(self, values: list) -> None:
        buffer = io.StringIO()
        # QUOTE_MINIMAL quotes a cell holding any character of the line terminator: with "\r\n" both CR and LF
        # (with "" neither, and a name with a newline split the row).
        csv.writer(buffer, lineterminator="\r\n").writerow(values)
        self._line(buffer.getvalue()[:-2])

    def header(self) -> None:
        self._row(["file", "frame", "label", "confidence", *(csv_cell(c) for c in self.classes), "warnings",
                   "error", "model_file", "engine"])

    def prediction(self, result: Prediction) -> None:
        frame = "" if result.frame is None else result.frame
        if result.axis is not None:
            frame = slice_label(result.axis, result.frame, result.frame_count)
        label, confidence = ("", "") if result.abstained else (csv_cell(result.label), f"{result.confidence:.6f}")
        self._row([csv_cell(result.source), frame, label, confidence,
                   *(f"{result.probabilities[c]:.6f}" for c in self.classes),
                   csv_cell("; ".join(result.warnings)), "", *self._produced()])

    def _produced(self) -> list[str]:
        return [csv_cell(self.model_file), csv_cell(self.engine)]

    def volume_summary(self, summary: VolumeSummary) -> None:
        label = "" if summary.label is None else csv_cell(summary.label)
        confidence = "" if summary.confidence is None else f"{summary.confidence:.6f}"
        self._row([csv_cell(summary.source), csv_cell(f"{summary_label(summary)}; {summary.support_text()}"),
                   label, confidence, *(f"{summary.probabilities[c]:.6f}" for c in self.classes),
                   csv_cell("; ".join([*summary.warnings, self.notice])), "", *self._produced()])

    def failure(self, result: Failure) -> None:
        self._row([csv_cell(result.source), "", "", "", *([""] * len(self.classes)), "",
                   csv_cell(result.reason), "", ""])


WRITERS: dict[str, Callable[..., Writer]] = {
    "table": TableWriter,
    "json": JsonLinesWriter,
    "csv": CsvWriter,
}
