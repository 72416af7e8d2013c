"""``bench/gpu_check.sh --cpu-smoke``: the GPU check runs end to end on the CPU with tiny models, so it is not broken
when a GPU arrives (slow: a few compiled tiny models; ``pytest -m slow tests/test_gpu_check.py``).

CI has no mirrors of the official code: the first test points the script at missing mirrors and checks that the
correctness part says it skipped and that arvision's own fp32 / bf16 / compiled paths ran and filled the JSON and
the table.  Where the mirrors are present (``bench/official_speed.py``'s default paths), the second test checks
the tiny models' fp32 tokens against the official samplers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.sh"
MIRRORS = [Path("/work/.mirror/FoundationVision+VAR/repo"), Path("/work/.mirror/FoundationVision+LlamaGen/repo")]


def run_check(out: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run([str(SCRIPT), "--cpu-smoke", "--out", str(out), *flags], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=1800)


@pytest.mark.slow
def test_cpu_smoke_without_official_code(tmp_path):
    # aot_eager: the compiled variant goes through torch.compile's tracing of the same step functions without
    # generating C++ (inductor's compile of four graphs takes minutes on a 2-core machine)
    res = run_check(tmp_path, "--var-mirror", str(tmp_path / "none"), "--llamagen-mirror", str(tmp_path / "none"),
                    "--compile-backend", "aot_eager", "--time-budget", "3000")  # a busy CI machine is slow
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "correctness skipped: official code not found" in res.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["mode"] == "cpu-smoke" and report["device"] == "cpu"
    assert report["machine"]["cpu_model"] and "sse2" in report["machine"]["cpu_flags"]
    assert report["wall_seconds"] > 0 and report["within_time_budget"] is True
    for family in ("var", "llamagen"):
        fam = report["families"][family]
        assert "not found" in fam["correctness"]["skipped"]
        rows = {(r["variant"], r["batch_size"]): r for r in fam["speed"]}
        assert set(rows) == {(v, b) for v in ("fp32", "bf16", "compiled") for b in (1, 4)}, sorted(rows)
        for (variant, _), r in rows.items():
            assert r["images_per_second"] > 0 and r["seconds_per_image"] > 0
            assert r["images_per_second"] == pytest.approx(1 / r["seconds_per_image"])
            assert r["precision"] == ("float32" if variant == "fp32" else "bfloat16")
            assert r["weights_dtype"] == r["precision"] and len(r["tokens_sha256"]) == 64
        assert rows[("fp32", 1)]["model_family"] == family
    table = (tmp_path / "gpu_check.md").read_text()
    assert table.count("| var |") == 6 and table.count("| llamagen |") == 6
    assert "correctness skipped" in table and report["machine"]["cpu_model"] in table


@pytest.mark.slow
@pytest.mark.skipif(not all((m / "HEAD").is_file() for m in MIRRORS), reason="no local mirrors of the official code")
def test_cpu_smoke_tokens_equal_the_official_code(tmp_path):
    res = run_check(tmp_path, "--variants", "--time-budget", "3000")  # correctness and the official timings only
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    for family, checks in (("var", ("sampled",)), ("llamagen", ("sampled", "greedy"))):
        c = report["families"][family]["correctness"]
        for name in checks:
            assert c[name]["identical"] is True and c[name]["tokens"] > 0, (family, name, c[name])
        official = [r for r in report["families"][family]["speed"] if r["variant"] == "official fp32"]
        assert [r["batch_size"] for r in official] == [1, 4] and all(r["images_per_second"] > 0 for r in official)
