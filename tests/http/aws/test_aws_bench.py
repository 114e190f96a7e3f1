"""bench/http_publish.py works against a hub (its figures are for `make bench`, not here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from awshub import AwsHub

ROOT = Path(__file__).resolve().parents[3]


def test_http_publish_bench_measures_both_endpoints(aws: AwsHub, tmp_path: Path) -> None:
    out = tmp_path / "http.json"
    env = dict(os.environ)
    env["THINGHUB_ROOT_ACCESS_KEY_ID"] = aws.root_key.access_key_id
    env["THINGHUB_ROOT_ACCESS_KEY_SECRET"] = aws.root_key.secret
    target = f"{aws.host}:{aws.http_port}:{aws.port}"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.http_publish", "--target", target, "--seconds", "0.5",
         "--connections", "4", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    publish, healthz = result["publish"], result["healthz"]
    assert publish["requests"] > 0 and publish["errors"] == 0, publish
    assert healthz["requests"] > 0 and healthz["errors"] == 0, healthz
    assert publish["delivered"] > 0 and publish["probes"] > 0
    assert publish["receipt_p50_ms"] is not None and publish["receipt_p99_ms"] is not None
    assert "req/s" in proc.stdout
