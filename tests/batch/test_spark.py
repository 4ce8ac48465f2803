"""The Spark recipe: `predict_batch_udf` around the same per-scan function gives the same rows as classify, in a
real local Spark session. Skipped (with the reason) where pyspark or Java is absent."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys

import pytest

from tests.runtime.models import CLASSES, save_quadrant
from tumor_edge.batch.scorer import ScoreSettings

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("pyspark") is None,
                       reason="pyspark is not installed (the `spark` extra, not in `all`)"),
    pytest.mark.skipif(shutil.which("java") is None, reason="no Java (Spark needs Java 17+)"),
]


def test_spark_udf_scores_like_classify(bundle, tmp_path, monkeypatch):
    from pyspark.sql import SparkSession

    from tumor_edge.batch.scorer import rows_udf

    paths = [str(save_quadrant(tmp_path / "scans" / f"{i}.png", i)) for i in range(4)]
    (tmp_path / "scans" / "broken.png").write_bytes(b"not a png")
    paths.append(str(tmp_path / "scans" / "broken.png"))
    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)  # the executors' Python: this one, with tumor-edge
    spark = (SparkSession.builder.master("local[1]").appName("tumor-edge-batch-test")
             .config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
             .config("spark.ui.enabled", "false").getOrCreate())
    try:
        frame = spark.createDataFrame([(p,) for p in paths], ["path"])
        score = rows_udf(ScoreSettings(str(bundle)), batch_size=2)
        out = frame.select("path", score("path").alias("rows")).collect()
    finally:
        spark.stop()

    rows = {r["path"]: json.loads(r["rows"]) for r in out}
    assert [rows[p][0]["label"] for p in paths[:4]] == CLASSES
    assert len(rows[paths[4]]) == 1 and rows[paths[4]][0]["error"] and rows[paths[4]][0]["label"] == ""
