"""`--exit-with-stdin`: a worker or trainer started by a host ends when its stdin closes (the host died), and only
when asked to — run as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER_ROOT = Path(__file__).resolve().parents[1]
BUNDLE = WORKER_ROOT.parents[2] / "bundle"
# Generous for a loaded 2-core machine: the lifeline itself reacts within milliseconds.
EXIT_DEADLINE_S = 15


def start(tmp_path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "AUTOLORA_WORKER_TOKEN": "lifeline-test-token", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "AUTOLORA_BUNDLE": str(tmp_path / "no-bundle")}
    return subprocess.Popen([sys.executable, "-m", "autolora_worker", *args], cwd=WORKER_ROOT, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def listening(process: subprocess.Popen) -> int:
    line = process.stdout.readline()
    if not line:
        process.kill()
        pytest.fail(f"worker did not start: {process.stderr.read()}")
    return json.loads(line)["port"]


@pytest.mark.slow
def test_a_worker_asked_to_exits_when_its_stdin_closes_and_one_not_asked_keeps_serving(tmp_path):
    asked = start(tmp_path, "serve", "--port", "0", "--device", "cpu", "--exit-with-stdin")
    not_asked = start(tmp_path, "serve", "--port", "0", "--device", "cpu")
    try:
        listening(asked), listening(not_asked)
        # As when a host dies: every pipe it held closes, so the worker's goodbye on stderr has no reader either.
        for stream in (asked.stdin, asked.stdout, asked.stderr):
            stream.close()
        not_asked.stdin.close()
        assert asked.wait(timeout=EXIT_DEADLINE_S) == 0
        # Started by hand or under nohup, a worker's stdin says nothing about a host: it keeps serving.
        with pytest.raises(subprocess.TimeoutExpired):
            not_asked.wait(timeout=2)
    finally:
        for process in (asked, not_asked):
            process.kill()
            process.wait()


@pytest.mark.slow
@pytest.mark.skipif(not (BUNDLE / "manifest.json").exists(),
                    reason="needs bundle/manifest.json of the committed bundle; restore it with git checkout -- bundle")
def test_a_trainer_asked_to_exits_mid_run_when_its_stdin_closes(tmp_path):
    # 40 pairs of 50 steps each would take many minutes; the trainer must stop long before.
    process = start(tmp_path, "gates", "eval", "--gates", str(BUNDLE / "gates" / "gates.safetensors"), "--pairs", "40",
                    "--steps", "50", "--bundle", str(BUNDLE), "--device", "cpu", "--json", "--exit-with-stdin")
    try:
        for line in process.stderr:  # whatever the libraries say first, then the trainer's own progress
            if "eval pair 1/40" in line:
                break
        else:
            pytest.fail(f"the trainer ended before its first pair (exit {process.wait()})")
        process.stdin.close()
        assert process.wait(timeout=EXIT_DEADLINE_S) == 0
        assert "stdin closed" in process.stderr.read()
        assert process.stdout.read() == "", "it stopped before printing a result"
    finally:
        process.kill()
        process.wait()
