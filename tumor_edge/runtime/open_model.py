"""The open stage: a bundle's model, read once, checked, and handed to its engine as the bytes that were checked.

Each listed file (the model, its external data or companion files) is read into memory once from a descriptor
opened without following a symbolic link (`read_model_files`), hashed from those bytes and compared with the sha256
metadata.json records; the same bytes go to the engine (onnxruntime's `InferenceSession(bytes)` with the external
data in memory, LiteRT's `model_content`). Nothing is opened again by path, so a file exchanged after the check
cannot be what runs. With a trust setting (`BackendOptions.trust`, else $TUMOR_EDGE_TRUST; `trust=False` opens
unchecked, for export's own parity) the signature is checked against the digests of exactly these bytes and of
the metadata.json bytes the record was parsed from (tumor_edge.signing.trust.check_loaded).

Memory: the model is held once by Python while its engine copies it (a model is held twice during the load, then
once). The schema bounds a model file at MAX_MODEL_BYTES; a model too large for that would have to be copied,
hashed as it is copied, into a private file only this user can write, and loaded from there.
"""

from __future__ import annotations

import os
from pathlib import Path

from tumor_edge.contracts.bundle import (
    BundleMetadata,
    ModelFiles,
    check_binding,
    check_external_locations,
    read_model_files,
)
from tumor_edge.errors import ModelError
from tumor_edge.runtime.backends import Backend, BackendOptions, backend_factory, engine_of
from tumor_edge.runtime.backends.external_data import external_data_locations
from tumor_edge.signing import TRUST_ENV


def read_bundle_model(bundle_dir: Path, name: str, metadata: BundleMetadata) -> ModelFiles:
    """The listed model `name` and its member files, read once and proved against metadata.json; an .onnx model
    may name no external data its entry does not list (onnxruntime would read it unchecked)."""
    engine = engine_of(Path(bundle_dir) / name)  # an unknown format or a missing engine is said first
    files = read_model_files(bundle_dir, name, metadata)
    if engine == "onnxruntime":
        try:
            locations = external_data_locations(files.data)
        except ModelError as err:
            raise ModelError(err.reason, files.path) from err
        check_external_locations(bundle_dir, metadata.models[name], locations)
    return files


def open_bundle_model(bundle_dir: Path, name: str, metadata: BundleMetadata,
                      options: BackendOptions | None = None) -> Backend:
    """Load a model listed in a bundle from the bytes `read_bundle_model` checked; with `options.trust`, only
    once its signature covers those bytes and metadata.json's. What the file carries about itself must agree with
    the metadata (classes, preprocessing, output roles: `check_binding`): relabelling metadata never produces a
    result."""
    options = options or BackendOptions()
    files = read_bundle_model(bundle_dir, name, metadata)
    trust = options.trust
    if trust is None and os.environ.get(TRUST_ENV) is not None:
        from tumor_edge.signing.trust import trust_from_env

        trust = trust_from_env()
    if trust:
        from tumor_edge.signing.trust import check_loaded

        check_loaded(Path(bundle_dir), trust, metadata, files.digests)
    backend = backend_factory(engine_of(files.path))(files.path, options, files=files)
    check_binding(metadata, backend.metadata_props(), files.path)
    return backend
