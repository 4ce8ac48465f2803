"""Foreign ONNX classifiers (PyTorch's `torch.onnx.export`, other toolkits): read, check, and turn into the
bundle contract (float32 NHWC input, probabilities out, dynamic batch where the graph allows it).

Why a graph rewrite rather than runtime code: the runtime feeds every model the same NHWC float batch and never
imports onnx, so layout, softmax and batch are settled here, once, with the `onnx` helper API:
- an NCHW model gets a Transpose at its input (NHWC -> NCHW); an NHWC model is left as is;
- a logit model gets a Softmax at its output, as a Keras logit model does (export/source.py says why);
- a fixed batch dimension is made symbolic, then proven by running two images at once against each alone;
  a graph that hard-codes its batch (a Reshape to [1, -1]) keeps it, and the runtime feeds it one image at a
  time (runtime/batch.py);
- the model's own opset is kept (no converter runs), and export stamps the tumor-edge metadata_props as it does
  on Keras-made files.
The reference parity compares against is the ORIGINAL file through onnxruntime (`OnnxModel`): the model's own
fp32 outputs, not a re-implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tumor_edge.calibration.mahalanobis import OUTPUT_SCORE_ROLE
from tumor_edge.errors import ConfigError, ModelError, first_line
from tumor_edge.export.config import INPUT_NAME, LAYOUT_CHOICES, needs_option

ONNX_SUFFIXES = (".onnx",)
PROBABILITIES = "probabilities"
BATCH_DIM = "batch"
BATCH_TOLERANCE = 1e-4  # batch-of-2 outputs against one-by-one outputs (float32 reordering only)


@dataclass(frozen=True)
class OnnxFacts:
    """What export found out about a foreign ONNX file, kept with the source and recorded in metadata."""

    input_name: str
    output_name: str
    layout: str  # "nchw" | "nhwc"
    layout_decided_by: str
    height: int | None  # None where the file leaves it dynamic
    width: int | None
    batch: int | None  # None: dynamic already; else the fixed batch the file declares
    opset: int
    outputs: int  # output width, None-free (checked against the classes)


def _dim(d) -> int | None:
    return d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None


def load_checked(path: Path):
    """The ONNX model, after onnx.checker; a one-line ModelError otherwise."""
    import onnx

    if not path.is_file():
        raise ModelError("model file not found", path)
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # DecodeError, ValidationError, OSError...
        raise ModelError(f"not a valid ONNX model ({first_line(err, 240)})", path) from err
    return model


def inspect_onnx(path: Path, n_classes: int, image_size: int | None, layout: str = "auto") -> OnnxFacts:
    """Check one 4-D float image input, one (batch, classes) output and the image size; find the layout."""
    import onnx

    if layout not in LAYOUT_CHOICES:
        raise ConfigError(f"the layout must be one of {', '.join(LAYOUT_CHOICES)}, not {layout!r}")
    model = load_checked(path)
    initialisers = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise ModelError(f"expected one image input, the model has {len(inputs)}", path)
    tensor = inputs[0].type.tensor_type
    if tensor.elem_type != onnx.TensorProto.FLOAT:
        raise ModelError(f"the model's input is {onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)}, not "
                         "float32", path)
    dims = [_dim(d) for d in tensor.shape.dim] if tensor.HasField("shape") else []
    if len(dims) != 4:
        raise ModelError(f"expected a 4-D image input (N, C, H, W) or (N, H, W, C), the model's has rank "
                         f"{len(dims)}", path)
    if layout == "auto":
        nchw, nhwc = dims[1] == 3, dims[3] == 3
        if nchw == nhwc:
            raise needs_option(ModelError(f"cannot tell the input layout from its shape {_shape(dims)}: say "
                                         "channels-first or channels-last", path), "layout")
        layout, decided = ("nchw" if nchw else "nhwc"), f"input shape {_shape(dims)}"
    else:
        decided = "stated"
    channels, height, width = (dims[1], dims[2], dims[3]) if layout == "nchw" else (dims[3], dims[1], dims[2])
    if channels not in (3, None):
        raise ModelError(f"the model takes {channels}-channel input ({layout.upper()} {_shape(dims)}); bundles "
                         "are RGB", path)
    input_size(height, width, image_size, path)
    if len(model.graph.output) != 1:
        raise ModelError(f"the model has {len(model.graph.output)} outputs; export needs one (batch, classes)",
                         path)
    out = model.graph.output[0]
    out_dims = [_dim(d) for d in out.type.tensor_type.shape.dim]
    if len(out_dims) != 2:
        raise ModelError(f"the model's output has shape {_shape(out_dims)}; expected (batch, classes)", path)
    if out_dims[1] is not None and out_dims[1] != n_classes:
        raise needs_option(ModelError(f"the model has {out_dims[1]} outputs but {n_classes} classes were given", path),
                          "classes")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return OnnxFacts(inputs[0].name, out.name, layout, decided, height, width, dims[0], opset, n_classes)


def input_size(height: int | None, width: int | None, image_size: int | None, path: Path) -> tuple[int, int]:
    """A model's input size: its own where its input fixes it, else the image size given; a one-line error when
    the two differ or neither says."""
    for got in (height, width):
        if got is not None and image_size is not None and got != image_size:
            raise needs_option(ModelError(f"the model takes {height}x{width} images but the image size given is "
                                         f"{image_size}", path), "image_size")
    if (height is None or width is None) and image_size is None:
        raise needs_option(ModelError("the model's input size is not fixed: give the image size", path), "image_size")
    return height or image_size, width or image_size


def _shape(dims) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


class OnnxModel:
    """The original file through onnxruntime, fed NHWC float batches in the model's input scale (as the
    Keras reference is fed): the parity reference and the output probe. `predict` mirrors the part of Keras'
    `Model.predict` the reference code uses; `with_softmax()` gives probabilities for a logit model."""

    def __init__(self, path: Path, facts: OnnxFacts):
        import onnxruntime as ort

        self.path, self.facts, self.softmax = Path(path), facts, False
        so = ort.SessionOptions()
        so.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as err:
            raise ModelError(f"onnxruntime cannot load this model ({first_line(err, 240)})", path) from err

    @property
    def outputs(self):
        """Keras-like: outputs[0].shape[-1] is the class count."""
        return [np.zeros((0, self.facts.outputs))]

    def with_softmax(self) -> OnnxModel:
        clone = object.__new__(OnnxModel)
        clone.__dict__.update(self.__dict__, softmax=True)
        return clone

    def predict(self, batch: np.ndarray, batch_size: int = 32, verbose: int = 0) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        if self.facts.layout == "nchw":
            batch = batch.transpose(0, 3, 1, 2)
        n, step = len(batch), self.facts.batch or batch_size  # a fixed-batch file is fed as it declares
        if self.facts.batch and n % step:  # its last images padded once, the padding's outputs dropped
            batch = np.concatenate([batch, np.zeros((step - n % step, *batch.shape[1:]), np.float32)])
        rows = [self.session.run([self.facts.output_name], {self.facts.input_name: np.ascontiguousarray(
            batch[start:start + step])})[0] for start in range(0, len(batch), step)]
        out = np.concatenate(rows)[:n].astype(np.float32) if rows else np.zeros((0, self.facts.outputs), np.float32)
        if self.softmax:
            z = out - out.max(axis=1, keepdims=True)
            out = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        return out


# ------------------------------------------------------------------------------------------ the bundle's file


def to_bundle_model(src: Path, dst: Path, facts: OnnxFacts, append_softmax: bool, ood_score: str | None = None
                    ) -> dict[str, Any]:
    """Write the bundle-contract form of `src` at `dst`; return the facts metadata records for the file.
    `ood_score` (a key of calibration.mahalanobis.OUTPUT_SCORES) adds that score as output 1."""
    import onnx
    from onnx import helper

    model = load_checked(src)
    graph = model.graph
    initialisers = {i.name for i in graph.initializer}
    original_input = next(i for i in graph.input if i.name not in initialisers)
    dims, first = original_input.type.tensor_type.shape.dim, 2 if facts.layout == "nchw" else 1  # height, then width
    h = facts.height if facts.height is not None else dims[first].dim_param or "height"
    w = facts.width if facts.width is not None else dims[first + 1].dim_param or "width"
    if facts.layout == "nchw":
        image = helper.make_tensor_value_info(INPUT_NAME if INPUT_NAME not in _names(graph) else "image_nhwc",
                                              onnx.TensorProto.FLOAT, [facts.batch or BATCH_DIM, h, w, 3])
        transpose = helper.make_node("Transpose", [image.name], [original_input.name], perm=[0, 3, 1, 2],
                                     name="tumor_edge_nhwc_to_nchw")
        position = list(graph.input).index(original_input)
        graph.input.remove(original_input)
        graph.input.insert(position, image)
        graph.node.insert(0, transpose)
    output = graph.output[0]
    score_output = _score_output(model, output.name, ood_score, facts) if ood_score else None
    if append_softmax:
        probs = helper.make_tensor_value_info(PROBABILITIES if PROBABILITIES not in _names(graph)
                                              else "tumor_edge_probabilities", onnx.TensorProto.FLOAT,
                                              [facts.batch or BATCH_DIM, facts.outputs])
        graph.node.append(helper.make_node("Softmax", [output.name], [probs.name], axis=1,
                                           name="tumor_edge_softmax"))
        graph.output.remove(output)
        graph.output.insert(0, probs)
    if score_output is not None:
        graph.output.append(score_output)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    batch = "dynamic"
    if facts.batch is not None:
        dynamic = _dynamic_batch(model)
        why = _check_dynamic(dynamic, dst.parent / (dst.stem + ".dynamic-trial.onnx"))
        if why is None:
            onnx.save(dynamic, str(dst))
            batch = f"dynamic (the file fixed it at {facts.batch}; proven with a batch of 2)"
        else:
            batch = f"fixed {facts.batch} ({why}): the runtime feeds {facts.batch} image(s) at a time"
    return {"converter": "onnx graph rewrite (tumor-edge)", "opset": facts.opset, "source_layout": facts.layout,
            "layout_decided_by": facts.layout_decided_by, "batch": batch, "softmax_appended": append_softmax,
            "input_transposed": facts.layout == "nchw", "ood_output": ood_score}


def _score_output(model, scores: str, kind: str, facts: OnnxFacts):
    """Nodes computing the OOD score from the class scores (logits or probabilities), numpy twin in
    calibration.mahalanobis.output_score; returns the new graph output (one number per image)."""
    import onnx
    from onnx import helper

    op = {"logit_energy": "ReduceLogSumExp", "max_probability": "ReduceMax"}[kind]
    reduced = "tumor_edge_ood_reduced"
    if facts.opset >= 18:  # axes became an input in opset 18
        axes = helper.make_tensor("tumor_edge_ood_axes", onnx.TensorProto.INT64, [1], [1])
        model.graph.initializer.append(axes)
        node = helper.make_node(op, [scores, axes.name], [reduced], keepdims=0, name="tumor_edge_ood_reduce")
    else:
        node = helper.make_node(op, [scores], [reduced], axes=[1], keepdims=0, name="tumor_edge_ood_reduce")
    name = OUTPUT_SCORE_ROLE if OUTPUT_SCORE_ROLE not in _names(model.graph) else "tumor_edge_ood_score"
    model.graph.node.extend([node, helper.make_node("Neg", [reduced], [name], name="tumor_edge_ood_score")])
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, [facts.batch or BATCH_DIM])


def _names(graph) -> set[str]:
    return {v.name for v in [*graph.input, *graph.output, *graph.value_info]} | {
        o for n in graph.node for o in n.output}


def _dynamic_batch(model):
    """A copy whose input and output batch dimensions are symbolic, its inferred shapes dropped (they pin the
    old batch); onnxruntime re-infers them at load."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    initialisers = {i.name for i in copy.graph.initializer}
    for value in [*(i for i in copy.graph.input if i.name not in initialisers), *copy.graph.output]:
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        dim.dim_param = BATCH_DIM
    del copy.graph.value_info[:]
    return copy


def _check_dynamic(model, trial: Path) -> str | None:
    """None when two images at once give what each gives alone, else why the batch must stay fixed."""
    import onnx
    import onnxruntime as ort

    try:
        onnx.save(model, str(trial))
        so = ort.SessionOptions()
        so.log_severity_level = 4
        session = ort.InferenceSession(str(trial), so, providers=["CPUExecutionProvider"])
        shape = [d if isinstance(d, int) else 16 for d in session.get_inputs()[0].shape]
        shape[0] = 2
        batch = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
        name = session.get_inputs()[0].name
        pair = session.run(None, {name: batch})[0]
        alone = np.concatenate([session.run(None, {name: batch[i:i + 1]})[0] for i in range(2)])
    except Exception as err:  # onnxruntime: the graph's shapes do not allow it
        return f"the graph does not run a batch of 2: {first_line(err, 120)}"
    finally:
        trial.unlink(missing_ok=True)
    if pair.shape != alone.shape or not np.allclose(pair, alone, atol=BATCH_TOLERANCE, rtol=BATCH_TOLERANCE):
        return "a batch of 2 gives other outputs than one image at a time"
    return None
