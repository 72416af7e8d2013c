"""The switch that makes CI prove parity: with ARVISION_REQUIRE_REFERENCES set, a parity test whose reference
folder is missing fails instead of skipping (``.ci/run`` sets it whenever the vectors exist)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO_ROOT

ONE_PARITY_TEST = "tests/test_parity_vectors.py::test_from_official_loads_strictly_and_infers_architecture[var_tiny]"


def _pytest(tmp_path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("ARVISION_")}
    environ.update(ARVISION_VECTORS=str(tmp_path / "absent"), **env)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", ONE_PARITY_TEST],
                          cwd=REPO_ROOT, env=environ, capture_output=True, text=True, timeout=300)


def test_missing_vectors_skip_with_where_they_were_looked_for(tmp_path):
    run = _pytest(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "skipped" in run.stdout and "passed" not in run.stdout.splitlines()[-1]
    assert str(tmp_path / "absent") in run.stdout


def test_missing_vectors_fail_when_references_are_required(tmp_path):
    run = _pytest(tmp_path, ARVISION_REQUIRE_REFERENCES="1")
    assert run.returncode != 0, run.stdout + run.stderr
    assert "ARVISION_REQUIRE_REFERENCES is set" in run.stdout
    assert "skipped" not in run.stdout.splitlines()[-1]


def test_ci_script_requires_references_when_the_vectors_exist():
    script = (REPO_ROOT / ".ci" / "run").read_text()
    assert "ARVISION_REQUIRE_REFERENCES=1" in script and "../shared/vectors" in script
