"""`ExportConfig`: everything an export takes. The CLI (export/commands.py) is a thin layer over it and reads its
choices and defaults from here and from the format table, so a new format or option appears in both at once."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from tumor_edge.contracts.formats import CONTAINERS, ENABLING_OPTIONS, ModelFormat, select
from tumor_edge.contracts.preprocessing import RESIZE_NAMES, SCALING_NAMES
from tumor_edge.errors import ConfigError

OUTPUT_CHOICES = ("auto", "probabilities", "logits")
LAYOUT_CHOICES = ("auto", "nchw", "nhwc")  # a foreign ONNX model's input layout (export/foreign_onnx.py)
INPUT_NAME = "image"  # of every ONNX file export writes: the bundle contract's (BundleMetadata.input_spec)


def needs_option(error: Exception, option: str) -> Exception:
    """Tag an error with the export option (an `ExportConfig` field) that fixes it; the CLI names its flag."""
    error.option = option
    return error


@dataclass
class ParityThresholds:
    """The tolerances a file must be proven within (defaults: the parity contract in the README), and how sure
    the proof must be."""

    max_accuracy_drop: float = 1.0  # percentage points below Keras
    max_auc_drop: float = 0.01  # macro one-vs-rest AUC below Keras
    min_agreement: float = 0.99  # top-1 agreement with Keras, for the precisions below
    agreement_precisions: tuple[str, ...] = ("fp32", "fp16")
    confidence: float = 0.95  # of the intervals the verdicts rest on (export/parity_stats.py)
    resamples: int = 2000  # paired bootstrap resamples


def _default_quantization():
    # quantize.py imports numpy: loaded when a config is made, not when the CLI reads this module's defaults.
    from tumor_edge.export.quantize import QuantizationConfig

    return QuantizationConfig()


@dataclass
class ExportConfig:
    """Everything `tumor-edge export` takes."""

    source: Path
    out: Path
    formats: tuple[str, ...] = CONTAINERS  # containers of the format table ("onnx", "tflite")
    int8: bool = False  # an ENABLING_OPTIONS entry: adds the table's rows enabled_by "int8"
    fp16: bool = False
    force: bool = False
    # What a model made outside tumor-edge needs said about it (a run folder says it itself).
    classes: list[str] | None = None
    image_size: int | None = None
    preprocess: str | None = None
    resize: str | None = None
    output: str = "auto"  # what the model outputs: one of OUTPUT_CHOICES
    layout: str = "auto"  # a foreign ONNX model's input: one of LAYOUT_CHOICES ("auto": from its input shape)
    # Images.
    calib_data: Path | None = None
    calib_count: int = 200  # training-split images for int8 calibration (stratified)
    select_count: int = 200  # validation images the calibration methods are compared on
    test_data: Path | None = None
    test_count: int | None = None  # None: the whole test split
    # Checks and recipes.
    parity: bool = True
    thresholds: ParityThresholds = field(default_factory=ParityThresholds)
    allow_unproven: bool = False  # accept a bundle whose parity the test set is too small to prove
    quantization: Any = field(default_factory=_default_quantization)  # export.quantize.QuantizationConfig
    tflite_full_integer: bool = False  # int8 TFLite with int8 I/O and an int8 softmax (accelerators)
    opset: int = 17
    seed: int = 0
    batch_size: int = 16
    isolate: bool = True  # False: every step in this process (a debugger can step into it); see export/plan.py
    overlap: bool = False  # TensorFlow-free rows beside the worker's: faster with two free cores, a higher peak
    show_progress: bool = True
    debug: bool = False  # let a converter's exception propagate with its traceback
    sign_key: Path | None = None  # EC private key (PEM) that signs a successful export (tumor_edge.signing)

    def __post_init__(self) -> None:
        self.source, self.out = Path(self.source), Path(self.out)
        self.formats = tuple(self.formats)
        unknown = [f for f in self.formats if f not in CONTAINERS]
        if unknown or not self.formats:
            raise ConfigError(f"formats must be among {', '.join(CONTAINERS)}, not {', '.join(unknown) or 'none'}")
        for name, choices in (("output", OUTPUT_CHOICES), ("layout", LAYOUT_CHOICES), ("preprocess", SCALING_NAMES),
                              ("resize", RESIZE_NAMES)):
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {value!r}")
        for name in ("calib_count", "select_count", "batch_size", "test_count"):  # test_count None: every image
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name.replace('_', ' ')} must be at least 1, not {value}")

    @property
    def options(self) -> frozenset[str]:
        """The enabling options switched on ("int8", "fp16"): attributes named as the table's `enabled_by`."""
        return frozenset(o for o in ENABLING_OPTIONS if getattr(self, o, False))

    def selected(self) -> list[ModelFormat]:
        """The table rows this export makes, in dependency (table) order."""
        return select(self.formats, self.options)

    @classmethod
    def default(cls, name: str) -> Any:
        """A field's default, for the CLI's option defaults."""
        for f in fields(cls):
            if f.name == name:
                return f.default_factory() if f.default is MISSING else f.default
        raise KeyError(name)
