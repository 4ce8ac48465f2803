"""For sites that run Spark: the same per-scan function as a Spark pandas UDF (`predict_batch_udf`), so a Spark
job scores with the same opened-once, verified bundle and gets the same `classify --csv` rows.

    from pyspark.sql import functions as F
    from tumor_edge.batch.scorer import ScoreSettings
    from tumor_edge.batch.spark import rows_udf

    score = rows_udf(ScoreSettings("/shared/bundles/inception299", threads=1))
    files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load("/shared/scans")
    rows = F.from_json(score(F.regexp_replace("path", "^file:", "")), "array<map<string,string>>")
    out = files.select(F.explode(rows).alias("row"))  # the content column is never read

Each input gives one JSON array of its rows (a 2-D scan: one row; a volume: its slices and summary); paths must
be readable by every executor (a shared mount). Needs pyspark (the `spark` extra) and Java 17+.
"""

from __future__ import annotations

import json

from tumor_edge.batch.scorer import ScoreSettings, local_record


def rows_udf(settings: ScoreSettings, batch_size: int = 64):
    """A Spark column function: a column of local paths -> a column of JSON arrays of each input's rows."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql.types import StringType

    def make_predict_fn():
        import numpy as np

        from tumor_edge.batch.scorer import Scorer

        scorer = Scorer(settings)  # once per Python worker: the bundle opened and verified once

        def predict(paths: np.ndarray) -> np.ndarray:
            records = [local_record(str(p)) for p in paths]
            by_input: dict[str, list] = {}
            for row in scorer.rows(records):
                by_input.setdefault(row["input_path"], []).append(row)
            return np.array([json.dumps(by_input.get(r["input_path"], []), default=str) for r in records],
                            dtype=object)

        return predict

    return predict_batch_udf(make_predict_fn, return_type=StringType(), batch_size=batch_size)

