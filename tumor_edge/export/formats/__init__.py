"""One converter module per row of the format table (`tumor_edge.contracts.formats.FORMATS`).

Each module has `convert(ctx, dst) -> dict`: write the file at `dst` from what the `ExportContext` offers (the
Keras model, the SavedModel, a file made by an earlier row, calibration pixels) and return the facts about how it
was made, which the bundle's metadata records for that file. Keys starting with "_" are kept out of the file's
metadata entry (bulky reports the exporter files elsewhere). A converter raises on failure; the exporter turns
that into a failed row, never a crash.
"""
