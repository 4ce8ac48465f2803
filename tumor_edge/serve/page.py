"""The documents the server serves: the web page at `/` and the OpenAPI 3.1 description at /openapi.json.

The page: drop or choose a scan, see the class, probabilities, warnings and heatmap. Everything is inline (no CDN,
no fonts, no second request but the API call), so it works on an offline device. The Content-Security-Policy
allows exactly this page's script and style (by hash) and requests to this server only; server data is written
with textContent, never as HTML.

The OpenAPI document is written out: four routes do not need a schema generator, and the document is the contract
clients code against.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Sequence
from typing import Any

from tumor_edge import RESEARCH_NOTICE, __version__
from tumor_edge.serve.config import ServeConfig

STYLE = """
body{font:15px/1.45 system-ui,sans-serif;margin:0;background:#f6f7f9;color:#1d232b}
header,main,footer{max-width:760px;margin:0 auto;padding:12px 18px}
h1{font-size:20px;margin:8px 0}
.notice{background:#fff4d6;border:1px solid #e5c55d;border-radius:6px;padding:8px 12px}
#drop{border:2px dashed #8a96a8;border-radius:10px;padding:28px;text-align:center;background:#fff;cursor:pointer}
#drop.over{background:#e8f0ff;border-color:#3461c1}
#status{color:#4a5566;min-height:1.4em;margin:8px 0}
#error{color:#a1141a;font-weight:600;white-space:pre-wrap}
#result[hidden],#tokenbox[hidden],#figure[hidden]{display:none}
#label{font-size:26px;font-weight:700}
table{border-collapse:collapse;width:100%;margin:8px 0}
td{padding:3px 6px}
td.bar{width:55%}
td.bar div{height:12px;background:#3461c1;border-radius:3px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
#figure{position:relative;display:inline-block;max-width:100%}
#figure img,#figure canvas{max-width:100%;display:block}
#heatmap{position:absolute;left:0;top:0;width:100%;height:100%;opacity:.45;pointer-events:none}
ul#warnings{color:#8a4b00}
""".strip()

SCRIPT = r"""
const cfg = JSON.parse(document.getElementById('config').textContent);
const $ = (id) => document.getElementById(id);
if (cfg.token_required) $('tokenbox').hidden = false;

function clearResult() {
  $('error').textContent = ''; $('result').hidden = true; $('probs').replaceChildren();
  $('warnings').replaceChildren(); $('figure').hidden = true; $('heatmapnote').textContent = '';
  const hm = $('heatmap'); hm.getContext('2d').clearRect(0, 0, hm.width, hm.height); hm.hidden = true;
}
function showError(text) { $('status').textContent = ''; $('error').textContent = text; }

function preview(file) {
  const img = $('preview');
  img.onload = () => { $('figure').hidden = false; };
  img.onerror = () => { $('figure').hidden = true; };  // DICOM and TIFF: no browser preview
  img.src = URL.createObjectURL(file);
}

function colour(v) {  // 0..1 -> a blue-to-red ramp
  const r = Math.round(255 * Math.min(1, 2 * v)), b = Math.round(255 * Math.min(1, 2 * (1 - v)));
  return [r, Math.round(255 * (1 - Math.abs(2 * v - 1))), b];
}

function drawHeatmap(h) {
  const canvas = $('heatmap'), ctx = canvas.getContext('2d');
  if (!Array.isArray(h) || !h.length || !Array.isArray(h[0])) return;
  const rows = h.length, cols = h[0].length, flat = h.flat();
  const lo = Math.min(...flat), hi = Math.max(...flat), span = hi > lo ? hi - lo : 1;
  canvas.width = cols; canvas.height = rows;
  const img = ctx.createImageData(cols, rows);
  for (let y = 0; y < rows; y++) for (let x = 0; x < cols; x++) {
    const [r, g, b] = colour((h[y][x] - lo) / span), i = 4 * (y * cols + x);
    img.data[i] = r; img.data[i + 1] = g; img.data[i + 2] = b; img.data[i + 3] = 255;
  }
  ctx.putImageData(img, 0, 0); canvas.hidden = false; $('figure').hidden = false;
}

function render(r) {
  $('label').textContent = r.label;
  $('confidence').textContent = (100 * r.confidence).toFixed(1) + ' %';
  $('file').textContent = r.file;
  const rows = Object.entries(r.probabilities).sort((a, b) => b[1] - a[1]);
  for (const [name, p] of rows) {
    const tr = document.createElement('tr'); tr.className = 'prob'; tr.dataset.cls = name;
    const c = document.createElement('td'); c.textContent = name;
    const bar = document.createElement('td'); bar.className = 'bar';
    const fill = document.createElement('div'); fill.style.width = (100 * p).toFixed(1) + '%'; bar.append(fill);
    const num = document.createElement('td'); num.className = 'num'; num.textContent = p.toFixed(3);
    tr.append(c, bar, num); $('probs').append(tr);
  }
  const warnings = [...(r.warnings || [])];
  if (r.frames) warnings.push('frame ' + r.frame + ' of ' + r.frames + ' (middle frame of a multi-frame file)');
  for (const w of warnings) {
    const li = document.createElement('li'); li.textContent = w; $('warnings').append(li);
  }
  if (r.heatmap) {
    drawHeatmap(r.heatmap);
    $('heatmapnote').textContent = 'Map: ' + (r.heatmap_method || 'class activation map') + '; red: most evidence '
      + 'for ' + r.label + '. Research tool, not a diagnostic device.';
  }
  $('result').hidden = false;
}

async function send(file) {
  clearResult();
  $('status').textContent = 'classifying ' + file.name + ' ...';
  preview(file);
  const form = new FormData(); form.append('file', file, file.name);
  const headers = {};
  const token = $('token').value.trim();
  if (token) headers['Authorization'] = 'Bearer ' + token;
  let resp, data;
  try { resp = await fetch('v1/classify?heatmap=1&frames=middle', {method: 'POST', body: form, headers}); }
  catch (e) { showError('cannot reach the server: ' + e); return; }
  try { data = await resp.json(); } catch (e) { showError('the server answered ' + resp.status); return; }
  if (!resp.ok) { showError(data.error || ('the server answered ' + resp.status)); return; }
  render(Array.isArray(data) ? data[0] : data);
  $('status').textContent = 'done';
}

const drop = $('drop'), input = $('choose');
drop.addEventListener('click', () => input.click());
drop.addEventListener('dragover', (e) => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', (e) => {
  e.preventDefault(); drop.classList.remove('over');
  if (e.dataTransfer.files.length) send(e.dataTransfer.files[0]);
});
input.addEventListener('change', () => { if (input.files.length) send(input.files[0]); input.value = ''; });
""".strip()

TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>tumor-edge</title><link rel="icon" href="data:,"><style>{style}</style></head>
<body>
<header><h1>tumor-edge: brain-MRI slice classifier</h1>
<p class="notice" id="notice">{notice}</p></header>
<main>
<p>Classes: {classes}. Drop a scan (JPEG, PNG, BMP, TIFF or DICOM) on the box, or click it to choose one.
The scan is classified on this server and not kept.</p>
<div id="drop" role="button" tabindex="0">Drop a scan here or click to choose
<input type="file" id="choose" hidden></div>
<p id="tokenbox" hidden><label>Bearer token: <input id="token" type="password" autocomplete="off"></label></p>
<div id="status" aria-live="polite"></div><div id="error" role="alert"></div>
<section id="result" hidden>
<div><span id="label"></span> <span id="confidence"></span></div>
<div>file: <span id="file"></span></div>
<table><tbody id="probs"></tbody></table>
<ul id="warnings"></ul>
</section>
<div id="figure" hidden><img id="preview" alt="the uploaded scan"><canvas id="heatmap" hidden></canvas></div>
<p id="heatmapnote"></p>
</main>
<footer><p class="notice">{notice}</p></footer>
<script type="application/json" id="config">{config}</script>
<script>{script}</script>
</body></html>
"""


def _hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


PAGE_CSP = ("default-src 'none'; connect-src 'self'; img-src 'self' data: blob:; "
            f"style-src {_hash(STYLE)}; script-src {_hash(SCRIPT)}; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'")


def render_page(classes: Sequence[str], token_required: bool) -> str:
    config = json.dumps({"classes": list(classes), "token_required": token_required}).replace("<", "\\u003c")
    return TEMPLATE.format(style=STYLE, script=SCRIPT, notice=html.escape(RESEARCH_NOTICE),
                           classes=html.escape(", ".join(classes)), config=config)

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
