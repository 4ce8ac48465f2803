"""Load test of `tumor-edge serve`: N requests from C concurrent clients over loopback, bounded in count and time.

Starts a real server process (`tumor-edge serve --port 0`), waits for /healthz, then C client threads share a
counter of N requests; each uploads a PNG scan with keep-alive (http.client) and records status and latency. The
server's resident memory (/proc/PID/status VmRSS) is sampled every 0.1 s. Two phases:

- `steady`: a queue as deep as the clients (`--queue C`): every request must succeed (200).
- `overload`: a queue of 2: the server must shed load with 503 + Retry-After and nothing else.

Pass: no status other than 200 (and 503 in `overload`), no client error, and memory flat (the median RSS of the
last tenth of the run within 10 % + 16 MiB of the first tenth after warm-up). Writes
benchmarks/results/serve-<date>-<model>.json and .md. Example:

    python -m benchmarks.serve_load                     # the tests' tiny quadrant model: server overhead
    python -m benchmarks.serve_load --model BUNDLE      # a real bundle: end-to-end latency
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image

from tumor_edge.machine import load_average, machine_info, machine_summary

REPO = Path(__file__).resolve().parents[1]

URL_LINE = re.compile(r"on http://127\.0\.0\.1:(\d+)/")
RSS_GROWTH_LIMIT = (0.10, 16 << 20)  # relative, absolute bytes


def scan_png(size: int = 512, seed: int = 0) -> bytes:
    """A grey slice-like PNG (a bright blob on noise), the size of a typical MRI slice export."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (size, size), dtype=np.uint8)
    y, x = np.ogrid[:size, :size]
    image[(y - size * 0.35) ** 2 + (x - size * 0.6) ** 2 < (size * 0.12) ** 2] = 220
    buffer = io.BytesIO()
    Image.fromarray(np.stack([image] * 3, -1)).save(buffer, format="PNG")
    return buffer.getvalue()


def start_server(model: Path, queue: int, concurrency: int, workdir: Path) -> tuple[subprocess.Popen, int, Path]:
    log = workdir / f"server-q{queue}.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "TMPDIR": str(workdir)}
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tumor_edge.cli", "serve", "--model", str(model), "--port",
                                 "0", "--queue", str(queue), "--concurrency", str(concurrency)],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        match = URL_LINE.search(log.read_text(errors="replace"))
        if match:
            port = int(match.group(1))
            for _ in range(600):
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    conn.request("GET", "/healthz")
                    if conn.getresponse().status == 200:
                        return proc, port, log
                except OSError:
                    time.sleep(0.05)
            break
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"server did not start: {log.read_text(errors='replace')}")


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_phase(name: str, model: Path, requests: int, clients: int, queue: int, concurrency: int,
              max_seconds: float, workdir: Path, body: bytes) -> dict:
    proc, port, log = start_server(model, queue, concurrency, workdir)
    lock = threading.Lock()
    issued = [0]
    records: list[tuple[float, int, float]] = []  # (start offset s, status or -1, latency s)
    errors: list[str] = []
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    t0 = time.monotonic()

    def sampler() -> None:
        while not stop.is_set():
            rss = rss_bytes(proc.pid)
            if rss:
                samples.append((time.monotonic() - t0, rss))
            stop.wait(0.1)

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        while True:
            with lock:
                if issued[0] >= requests or time.monotonic() - t0 > max_seconds:
                    return
                issued[0] += 1
            start = time.monotonic()
            try:
                conn.request("POST", "/v1/classify?filename=scan.png", body,
                             {"Content-Type": "application/octet-stream"})
                resp = conn.getresponse()
                payload = resp.read()
                status = resp.status
                if status == 200 and "label" not in json.loads(payload):
                    status = -2
                if status == 503:
                    time.sleep(min(float(resp.headers.get("Retry-After", "1")), 1.0) * 0.05)
            except Exception as err:  # noqa: BLE001  (any client-side failure is a recorded failure)
                status = -1
                with lock:
                    errors.append(f"{type(err).__name__}: {err}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            with lock:
                records.append((start - t0, status, time.monotonic() - start))

    sampler_thread = threading.Thread(target=sampler, daemon=True)
    sampler_thread.start()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max_seconds + 60)
    wall = time.monotonic() - t0
    stop.set()
    sampler_thread.join(5)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    statuses: dict[str, int] = {}
    for _, status, _ in records:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    ok = [lat for _, status, lat in records if status == 200]
    allowed = {"200", "503"} if name == "overload" else {"200"}
    unexpected = {s: n for s, n in statuses.items() if s not in allowed}
    rss = [r for _, r in samples]
    tenth = max(1, len(rss) // 10)
    first = statistics.median(rss[tenth:2 * tenth]) if len(rss) >= 3 * tenth else None  # after warm-up
    last = statistics.median(rss[-tenth:]) if rss else None
    flat = bool(first and last and last - first <= max(RSS_GROWTH_LIMIT[0] * first, RSS_GROWTH_LIMIT[1]))
    pct = (lambda q: round(float(np.percentile(ok, q)) * 1000, 2)) if ok else (lambda q: None)
    return {
        "phase": name, "requests": len(records), "clients": clients, "queue": queue, "concurrency": concurrency,
        "wall_s": round(wall, 2), "statuses": statuses, "client_errors": errors[:10],
        "unexpected": unexpected, "throughput_rps": round(len(ok) / wall, 2) if wall else None,
        "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": pct(100)},
        "rss_mib": {"start": round(rss[0] / 2**20, 1) if rss else None,
                    "after_warmup": round(first / 2**20, 1) if first else None,
                    "end": round(last / 2**20, 1) if last else None,
                    "max": round(max(rss) / 2**20, 1) if rss else None, "samples": len(rss)},
        "rss_flat": flat,
        "passed": not unexpected and not errors and flat and len(records) == requests,
        "server_log_tail": log.read_text(errors="replace").splitlines()[-3:],
    }


def markdown(record: dict) -> str:
    lines = [f"# tumor-edge serve load test, {record['date']}", "",
             f"Model: `{record['model']}` ({record['model_note']}); upload: {record['upload_bytes']} byte PNG "
             f"{record['upload_size']}x{record['upload_size']}; {record['requests']} requests from "
             f"{record['clients']} concurrent clients over loopback.", "",
             f"Machine: {record['machine_summary']}. Load average before/after: {record['load_before']} / "
             f"{record['load_after']}.", "",
             "| phase | queue | statuses | throughput (req/s) | p50 ms | p90 ms | p99 ms | RSS MiB start / "
             "after warm-up / end / max | flat | passed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for p in record["phases"]:
        lat, rss = p["latency_ms"], p["rss_mib"]
        lines.append(f"| {p['phase']} | {p['queue']} | {p['statuses']} | {p['throughput_rps']} | {lat['p50']} | "
                     f"{lat['p90']} | {lat['p99']} | {rss['start']} / {rss['after_warmup']} / {rss['end']} / "
                     f"{rss['max']} | {p['rss_flat']} | {p['passed']} |")
    lines += ["", "Research tool, not a diagnostic device.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="bundle (default: the tests' quadrant model)")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="per phase")
    parser.add_argument("--upload-size", type=int, default=512)
    parser.add_argument("--note", default="a real bundle", help="what the model is, for the record")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="serve-load-"))
    model, note = args.model, args.note
    if model is None:
        from tests.runtime.models import make_bundle

        model, note = make_bundle(workdir / "quadrant"), "the tests' 32 px quadrant ONNX model: server overhead"
    body = scan_png(args.upload_size)
    load_before = load_average()
    phases = [run_phase("steady", model, args.requests, args.clients, args.clients, args.concurrency,
                        args.max_seconds, workdir, body),
              run_phase("overload", model, args.requests, args.clients, 2, args.concurrency, args.max_seconds,
                        workdir, body)]
    info = machine_info()
    stamp = datetime.now(timezone.utc)
    record = {"date": stamp.isoformat(timespec="seconds"), "model": str(model), "model_note": note,
              "upload_bytes": len(body), "upload_size": args.upload_size, "requests": args.requests,
              "clients": args.clients, "load_before": load_before, "load_after": load_average(),
              "machine": info, "machine_summary": machine_summary(info), "phases": phases}
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "quadrant" if args.model is None else Path(model).name
    base = args.out / f"serve-{stamp:%Y-%m-%dT%H%M}-{tag}"
    base.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    base.with_suffix(".md").write_text(markdown(record))
    print(markdown(record))
    return 0 if all(p["passed"] for p in phases) else 1


if __name__ == "__main__":
    sys.exit(main())
