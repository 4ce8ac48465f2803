"""Small real ONNX models and bundles for the runtime tests, built with `onnx.helper` (no TensorFlow).

The "quadrant" model's class is the brightest image quadrant (top-left glioma, top-right meningioma,
bottom-left notumor, bottom-right pituitary), so a test image whose answer is known is easy to draw. Helpers only;
the tests that use them live in the other test_runtime*/test_classify* files.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from PIL import Image

from tumor_edge.contracts.bundle import ONNX_META_KEY, OPTIMIZED_SUFFIX, BundleMetadata, describe_file
from tumor_edge.runtime.preprocess import Preprocessing

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
SIZE = 32


def quadrant_weights(size: int) -> np.ndarray:
    """(size*size*3, 4): each class sums one quadrant's pixels, scaled so a bright quadrant wins clearly."""
    half = size // 2
    masks = np.zeros((4, size, size, 3), dtype=np.float32)
    masks[0, :half, :half] = masks[1, :half, half:] = masks[2, half:, :half] = masks[3, half:, half:] = 1.0
    return (masks.reshape(4, -1).T / (half * half * 3) * 0.05).astype(np.float32)


def quadrant_model(size: int = SIZE, metadata: BundleMetadata | None = None, output: str = "probabilities",
                   input_shape: list | None = None, classes: int = 4) -> onnx.ModelProto:
    """image float32 [N, size, size, 3] (0..255) -> Reshape -> MatMul -> Add -> (Softmax) -> [N, classes]."""
    weights = quadrant_weights(size)
    if classes != 4:
        weights = np.concatenate([weights, np.zeros((weights.shape[0], classes - 4), np.float32)], axis=1)
    nodes = [
        helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "W"], ["mm"]),
        helper.make_node("Add", ["mm", "B"], ["logits"] if output == "probabilities" else ["probs"]),
    ]
    if output == "probabilities":
        nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1))
    initializers = [
        helper.make_tensor("flat_shape", TensorProto.INT64, [2], [-1, size * size * 3]),
        helper.make_tensor("W", TensorProto.FLOAT, list(weights.shape), weights.flatten().tolist()),
        helper.make_tensor("B", TensorProto.FLOAT, [classes], [0.0] * classes),
    ]
    shape = input_shape or ["N", size, size, 3]
    graph = helper.make_graph(
        nodes, "quadrant",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", classes])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tumor-edge-tests")
    model.ir_version = 8
    if metadata is not None:
        entry = model.metadata_props.add()
        entry.key = ONNX_META_KEY
        entry.value = json.dumps(metadata.to_dict())
    onnx.checker.check_model(model)
    return model


def broken_quadrant_model(kind: str, metadata: BundleMetadata, size: int = SIZE) -> onnx.ModelProto:
    """The quadrant model broken as a bad int8 conversion breaks a file: "collapsed" (logits shrunk a hundredfold
    and rounding noise of the same size added: near-uniform outputs whose label follows the noise), "permuted"
    (each class reads the next class's quadrant), "constant" (no weights, a bias that always names the first
    class)."""
    model = quadrant_model(size, metadata)
    weights = quadrant_weights(size)
    bias = np.zeros(4, np.float32)
    if kind == "collapsed":
        noise = np.random.default_rng(0).standard_normal(weights.shape).astype(np.float32)
        weights = (weights + 3 * weights.max() * noise) / 100
    elif kind == "permuted":
        weights = np.roll(weights, 1, axis=1)
    elif kind == "constant":
        weights, bias = np.zeros_like(weights), np.array([3, 0, 0, 0], np.float32)
    else:
        raise ValueError(kind)
    for init in model.graph.initializer:
        if init.name in ("W", "B"):
            init.CopyFrom(helper.make_tensor(init.name, TensorProto.FLOAT, list(init.dims),
                                             (weights if init.name == "W" else bias).flatten().tolist()))
    return model


def integer_quadrant_model(metadata: BundleMetadata, bits: int = 8, size: int = SIZE
                           ) -> tuple[onnx.ModelProto, np.ndarray, float]:
    """The quadrant model as an int8 file runs it: pixels quantized to uint8 as they are (scale 1), weights to
    signed `bits`-bit integers, onnxruntime's MatMulInteger (u8 x s8, int32 sums), one float scale on the logits.
    Returns (model, integer weights, weight scale)."""
    weights = quadrant_weights(size)
    scale = float(np.abs(weights).max()) / (2 ** (bits - 1) - 1)
    integers = np.rint(weights / scale).astype(np.int8)
    nodes = [
        helper.make_node("Reshape", ["image", "flat_shape"], ["flat"]),
        helper.make_node("QuantizeLinear", ["flat", "one", "zero_u8"], ["flat_u8"]),
        helper.make_node("MatMulInteger", ["flat_u8", "W_s8"], ["sums"]),
        helper.make_node("Cast", ["sums"], ["sums_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["sums_f", "w_scale"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    initializers = [
        helper.make_tensor("flat_shape", TensorProto.INT64, [2], [-1, size * size * 3]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        helper.make_tensor("zero_u8", TensorProto.UINT8, [], [0]),
        helper.make_tensor("W_s8", TensorProto.INT8, list(integers.shape), integers.flatten().tolist()),
        helper.make_tensor("w_scale", TensorProto.FLOAT, [], [scale]),
    ]
    graph = helper.make_graph(nodes, "quadrant_int8",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", size, size, 3])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 4])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tumor-edge-tests")
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key = ONNX_META_KEY
    entry.value = json.dumps(metadata.to_dict())
    onnx.checker.check_model(model)
    return model, integers, scale


def optimized_model_name(name: str) -> str:
    """The name an optimised twin of an .onnx model file has (a bundle listing one is refused)."""
    return name.removesuffix(".onnx") + OPTIMIZED_SUFFIX


def add_file(bundle: Path, model: onnx.ModelProto, name: str = "model_int8.onnx", precision: str = "int8") -> Path:
    """List one more ONNX file in a bundle's metadata.json."""
    onnx.save(model, bundle / name)
    metadata = BundleMetadata.read(bundle)
    metadata.models[name] = describe_file(bundle / name, "onnx", precision)
    metadata.write(bundle)
    return bundle / name


def quadrant_metadata(size: int = SIZE, output: str = "probabilities") -> BundleMetadata:
    return BundleMetadata(list(CLASSES), Preprocessing(size, size), output=output)


def make_bundle(folder: Path, size: int = SIZE, output: str = "probabilities", model_size: int | None = None,
                name: str = "model_fp32.onnx") -> Path:
    """A bundle folder: the quadrant model (its input `model_size`, default `size`) + metadata.json."""
    folder.mkdir(parents=True, exist_ok=True)
    metadata = quadrant_metadata(size, output)
    model_path = folder / name
    onnx.save(quadrant_model(model_size or size, metadata, output), model_path)
    metadata.models = {name: describe_file(model_path, "onnx", "fp32")}
    metadata.write(folder)
    return folder


def quadrant_image(quadrant: int, size: int = 64, grey: bool = True) -> np.ndarray:
    """uint8 (size, size, 3): dim noise with one bright quadrant (0..3 in CLASSES order)."""
    rng = np.random.default_rng(quadrant)
    image = rng.integers(10, 40, (size, size), dtype=np.uint8)
    half = size // 2
    rows = slice(0, half) if quadrant in (0, 1) else slice(half, size)
    cols = slice(0, half) if quadrant in (0, 2) else slice(half, size)
    image[rows, cols] = 220
    return np.stack([image] * 3, axis=-1) if grey else image


def save_quadrant(path: Path, quadrant: int, size: int = 64, **save_args) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(quadrant_image(quadrant, size)).save(path, **save_args)
    return path


def png_bomb(path: Path, width: int = 20_000, height: int = 20_000) -> Path:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = zlib.compress(b"\x00" * 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


def write_dicom(path: Path, frames: np.ndarray, photometric: str = "MONOCHROME2",
                window: tuple[float, float] | None = None, rescale: tuple[float, float] | None = None,
                preamble: bool = True, pixel_data: bool = True, voi_function: str | None = None) -> Path:
    """A real DICOM file (pydicom) of 16-bit grey frames: (H, W) or (F, H, W)."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    frames = np.asarray(frames)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "MR"
    ds.PatientName = "Synthetic^Test"
    if pixel_data:
        signed = frames.dtype.kind == "i"
        ds.Rows, ds.Columns = frames.shape[-2:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        if frames.ndim == 3:
            ds.NumberOfFrames = frames.shape[0]
        ds.PixelData = frames.astype(np.int16 if signed else np.uint16).tobytes()
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_function:
        ds.VOILUTFunction = voi_function
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    path.parent.mkdir(parents=True, exist_ok=True)
    if preamble:
        ds.save_as(path, enforce_file_format=True)
    else:
        pydicom.dcmwrite(path, ds, enforce_file_format=False)
    return path
