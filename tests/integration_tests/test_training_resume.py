"""Kill the training CLIs with SIGKILL after their first checkpoint, resume, and match an uninterrupted run
(the MRM and monitor trainers on tiny models; three CLI processes each, so they live in this tier; the in-process
resume of the shared loop is a unit test, tests/unit_tests/test_training_loop.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from tests.unit_tests.test_training_monitor import files  # noqa: F401 - fixture
from tests.unit_tests.test_training_mrm import reward_file, tiny_base_dir  # noqa: F401 - fixtures


def test_killed_run_resumes_to_the_same_weights(tmp_path, reward_file, tiny_base_dir):  # noqa: F811 - fixtures
    """Kill the CLI with SIGKILL after its first checkpoint, resume, and match an uninterrupted run."""
    common = ["--data", str(reward_file), "--base", str(tiny_base_dir), "--epochs", "12",
              "--batch-size", "2", "--checkpoint-every", "3", "--lr", "0.005"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cli = [sys.executable, "-m", "saffron_runtime.cli", "train", "mrm"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli + common + ["--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((killed / "checkpoints").glob("step-*")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "adapter_model.safetensors").exists(), "the run finished before it was killed"
    subprocess.run(cli + common + ["--out", str(killed)], env=env, check=True, capture_output=True)
    straight = tmp_path / "straight"
    subprocess.run(cli + common + ["--out", str(straight)], env=env, check=True, capture_output=True)
    a = load_file(str(killed / "adapter_model.safetensors"))
    b = load_file(str(straight / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)


def test_killed_monitor_run_resumes_to_the_same_heads(tmp_path, files):  # noqa: F811 - the fixture
    common = ["--data", str(files["train"]), "--base", str(files["base"]), "--epochs", "20", "--batch-size", "4",
              "--checkpoint-every", "3", "--lr", "0.01"]
    cli = [sys.executable, "-m", "saffron_runtime.cli", "train", "monitor"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli + common + ["--out", str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((killed / "checkpoints").glob("step-*")) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "heads.safetensors").exists(), "the run finished before it was killed"
    subprocess.run(cli + common + ["--out", str(killed)], env=env, check=True, capture_output=True)
    straight = tmp_path / "straight"
    subprocess.run(cli + common + ["--out", str(straight)], env=env, check=True, capture_output=True)
    a, b = load_file(str(killed / "heads.safetensors")), load_file(str(straight / "heads.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
