"""A plain `pip install .` (as in a container image) carries the bundled models and migrations."""

import subprocess
import sys

import pytest

from conftest import ROOT
from worker.config import BUNDLED_NER, BUNDLED_SENTIMENT

pytestmark = pytest.mark.skipif(not (BUNDLED_SENTIMENT / "model.safetensors").exists()
                                or not (BUNDLED_NER / "model.safetensors").exists(),
                                reason="bundled models not built (python -m worker.training.build sentiment|ner)")

CHECK = """
import worker.config, migrations
from worker.nlp.ner import load_ner
from worker.nlp.sentiment import load_sentiment
print(worker.config.__file__)
print(load_sentiment(str(worker.config.BUNDLED_SENTIMENT)).predict(["A wonderful film."])[0].label)
print(len(load_ner(str(worker.config.BUNDLED_NER)).predict(["Paris"])))
"""


def test_wheel_install_loads_the_bundled_models(tmp_path):
    pip = [sys.executable, "-m", "pip"]
    subprocess.run(pip + ["wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path / "dist")], check=True,
                   capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("reviews-*.whl")
    site = tmp_path / "site"
    subprocess.run(pip + ["install", "--no-deps", "-q", "--target", str(site), str(wheel)], check=True,
                   capture_output=True)
    out = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env={"PYTHONPATH": str(site), "PATH": "/usr/bin"},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    path, label, _ = out.stdout.split()
    assert path.startswith(str(site)) and label == "positive"
    # int8's kernels are built from their source on the user's host (worker/nlp/native.py)
    assert (site / "worker" / "nlp" / "kernels.cpp").is_file()
