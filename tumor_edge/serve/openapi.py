"""The OpenAPI 3.1 description of the API, served at /openapi.json (written out: four routes do not need a
schema generator, and the document is the contract clients code against)."""

from __future__ import annotations

from typing import Any

from tumor_edge import RESEARCH_NOTICE, __version__
from tumor_edge.serve.config import ServeConfig

_ERROR = {"description": "JSON with the reason", "content": {"application/json": {"schema": {
    "$ref": "#/components/schemas/Error"}}}}


def openapi_document(config: ServeConfig) -> dict[str, Any]:
    secured = [{"bearer": []}] if config.token else []
    prediction = {
        "type": "object", "required": ["file", "label", "confidence", "probabilities"],
        "description": "The object `tumor-edge classify --json` prints for one image (or frame).",
        "properties": {
            "file": {"type": "string", "description": "the uploaded file's name"},
            "label": {"type": "string"}, "confidence": {"type": "number"},
            "probabilities": {"type": "object", "additionalProperties": {"type": "number"}},
            "frame": {"type": "integer", "description": "0-based frame of a multi-frame DICOM"},
            "frames": {"type": "integer"},
            "model": {"$ref": "#/components/schemas/ModelSource"},
            "heatmap": {"type": "array", "items": {"type": "array", "items": {"type": "number"}},
                        "description": "the predicted class's map of evidence (rows of cells, 0-1); research "
                                       "aid, not a lesion outline"},
            "heatmap_method": {"type": "string", "description": "what drew the map, e.g. 'exact CAM 8x8' or "
                                                                "'occlusion 8x8'"},
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "tumor-edge", "version": __version__, "description": RESEARCH_NOTICE},
        "paths": {
            "/v1/classify": {"post": {
                "summary": "Classify one scan (JPEG, PNG, BMP, TIFF, DICOM)",
                "description": f"The scan as the raw body or as the `file` field of a multipart form; at most "
                               f"{config.max_body_mb:g} MiB and {config.max_inferences} inferences (413 beyond). "
                               f"503 with Retry-After when the queue or the upload places are full, without when "
                               f"the server is shutting down; 403 when a browser marks it as sent by another site's "
                               f"page; 500 when the model fails or its scores are not probabilities.",
                "security": secured,
                "parameters": [
                    {"name": "frames", "in": "query", "schema": {"enum": ["middle", "all"]},
                     "description": "multi-frame files: the middle frame (one object) or all (an array)"},
                    {"name": "filename", "in": "query", "schema": {"type": "string"},
                     "description": "the name to report for a raw body"},
                    {"name": "heatmap", "in": "query", "schema": {"enum": ["0", "1"], "default": "0"},
                     "description": "1: a map of evidence even when the model has no class activation map of "
                                    "4x4 cells or more (occlusion through the model: tens of inferences), for "
                                    "one frame only (400 with frames=all); the exact map, when the model has "
                                    "one, always comes"},
                ],
                "requestBody": {"required": True, "content": {
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {"schema": {"type": "object", "properties": {
                        "file": {"type": "string", "format": "binary"}}}},
                }},
                "responses": {
                    "200": {"description": "the prediction", "content": {"application/json": {"schema": {
                        "oneOf": [{"$ref": "#/components/schemas/Prediction"},
                                  {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}}]}}}},
                    **{code: _ERROR for code in ("400", "401", "403", "408", "413", "421", "422", "500", "503")},
                },
            }},
            "/v1/model": {"get": {
                "summary": "The bundle's metadata, the model file and providers in use, and its model card",
                "security": secured,
                "responses": {"200": {"description": "model description",
                                      "content": {"application/json": {"schema": {"type": "object"}}}},
                              "401": _ERROR, "421": _ERROR},
            }},
            "/healthz": {"get": {"summary": "Liveness", "security": [],
                                 "responses": {"200": {"description": "ok"}}}},
            "/": {"get": {"summary": "The web page", "security": [],
                          "responses": {"200": {"description": "HTML"}}}},
        },
        "components": {
            "schemas": {"Prediction": prediction, "ModelSource": {
                "type": "object", "description": "the model file (as the bundle names it) and engine that answered",
                "properties": {"file": {"type": "string"}, "engine": {"type": "string"}}}, "Error": {
                "type": "object", "required": ["error"],
                "properties": {"error": {"type": "string"}, "file": {"type": "string"}}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
