"""A real two-node Ray cluster on one machine (Ray's own `cluster_utils.Cluster`, both nodes on 127.0.0.1): the
second node is killed while the job runs; the job completes (or completes on rerun) with every input exactly
once, labelled as `classify` labels the same files."""

from __future__ import annotations

import csv
import io
import threading
import time
from pathlib import Path

from tests.batch.conftest import cli, read_rows
from tumor_edge.batch.job import JobConfig, run
from tumor_edge.batch.scorer import ScoreSettings
from tumor_edge.errors import TumorEdgeError


def _rows_from(results: Path, worker_prefix: str) -> int:
    import pyarrow.parquet as pq

    count = 0
    for part in results.glob("part-*.parquet"):
        count += sum(w.startswith(worker_prefix) for w in pq.read_table(part, columns=["worker"]).column(0).to_pylist())
    return count


def test_second_node_killed_mid_run(ray_sandbox, bundle, scans, tmp_path):
    from ray.cluster_utils import Cluster

    folder, expected = scans
    results = tmp_path / "results"
    cluster = Cluster(initialize_head=True, head_node_args={"node_ip_address": "127.0.0.1", "num_cpus": 1,
                                                             "include_dashboard": False})
    try:
        second = cluster.add_node(node_ip_address="127.0.0.1", num_cpus=1)
        cluster.wait_for_nodes()
        prefix = f"node {second.node_id[:8]}"
        killed: dict = {}

        def kill_second_node_once_it_has_scored() -> None:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and not _rows_from(results, prefix):
                time.sleep(0.05)
            killed["rows_before"] = _rows_from(results, prefix)
            killed["parts_before"] = len(list(results.glob("part-*.parquet")))
            cluster.remove_node(second, allow_graceful=False)

        killer = threading.Thread(target=kill_second_node_once_it_has_scored)
        config = JobConfig(str(folder), str(results), ScoreSettings(str(bundle)), address=cluster.address,
                           workers=2, rows_per_task=2)
        killer.start()
        runs = 1
        try:
            status = run(config)
        except TumorEdgeError as err:  # Ray gave up on the lost node's tasks: the rerun finishes
            assert "run the same command again" in str(err)
            killer.join()
            runs, status = 2, run(config)
        killer.join()
        print(f"second node killed after {killed['rows_before']} of its rows ({killed['parts_before']} parts); "
              f"the job completed in {runs} run(s)")
    finally:
        cluster.shutdown()

    assert status == 0
    assert killed["rows_before"] > 0, "the second node never scored before it was killed"
    assert killed["parts_before"] < len(expected) // 2, "the node was killed after the job ended"
    rows = read_rows(results)
    assert sorted(r["input_path"] for r in rows) == sorted(expected)  # every input exactly once
    classify = cli("classify", str(folder), "--model", str(bundle), "--csv")
    theirs = {row["file"]: row["label"] for row in csv.DictReader(io.StringIO(classify.stdout))}
    assert {r["input_path"]: r["label"] for r in rows} == theirs == expected
