"""The wheel: bundled files go in, the Saffron-1 fixture (Llama licence) never does, and the
installed wheel loads its bundled data from site-packages, not from the source tree."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ..conftest import SAFFRON1_FIXTURE

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
                   check=True, capture_output=True)
    (whl,) = out.glob("langchain_saffron-*.whl")
    return whl


def test_wheel_contents(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "saffron_runtime/bundled/gcg_refusal_strings.json" in names
    assert "saffron_runtime/py.typed" in names and "langchain_saffron/py.typed" in names
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/", "data/"))]
    # our own MRM uses the same file names, so the fixture is recognised by content, not by name
    fixture = {hashlib.sha256(p.read_bytes()).hexdigest()
               for p in SAFFRON1_FIXTURE.iterdir() if p.is_file()}
    with zipfile.ZipFile(wheel) as z:
        leaked = [n for n in names if "saffron-1" in n.lower()
                  or hashlib.sha256(z.read(n)).hexdigest() in fixture]
    assert not leaked, f"the Saffron-1 fixture must never ship: {leaked}"
    assert "saffron_runtime/bundled/saffron-mrm-smollm2/adapter_model.safetensors" in names
    mb = sum(i.file_size for i in zipfile.ZipFile(wheel).infolist()) / 2**20
    assert mb <= 30, f"the shipped files total {mb:.1f} MB (limit 30 MB)"


def test_installed_wheel_reads_bundled_files_from_site_packages(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import saffron_runtime, saffron_runtime.evaluation.refusal as r; "
            "print(saffron_runtime.__file__); print(len(r.refusal_strings('transfer')))")
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                         check=True, capture_output=True, text=True)
    where, n = res.stdout.split()
    assert where.startswith(str(target)) and n == "29"


def test_bundled_monitor_and_mrm_load_from_the_installed_wheel(wheel, tmp_path, smollm2):
    import os

    names = zipfile.ZipFile(wheel).namelist()
    folder = "saffron_runtime/bundled/saffron-monitor-smollm2-heads/"
    assert {folder + f for f in ("heads.safetensors", "monitor_config.json", "README.md", "split_ids.json")} <= set(names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import saffron_runtime.bundled as b; from saffron_runtime.monitor import load_monitor; "
            "from saffron_runtime.models import load_mrm; "
            "m = load_monitor('bundled'); r = load_mrm('bundled'); print(b.BUNDLED_DIR); "
            "print(m.rule.name, m.rule.k); print(r.metadata['adapter']); print(int(r.unseen_mask.sum()) > 0)")
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, check=True, capture_output=True, text=True)
    where, rule, mrm_dir, masked = res.stdout.strip().splitlines()[-4:]
    assert where.startswith(str(target)) and rule == "delay-k 5"
    assert mrm_dir.startswith(str(target)) and mrm_dir.endswith("saffron-mrm-smollm2") and masked == "True"
