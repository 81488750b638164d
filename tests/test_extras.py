"""extras: a missing optional dependency is a one-line error that names the extra to install, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthdet.data.demo import demo_data_dir
from synthdet.extras import EXTRAS, MissingExtraError, require

BLOCKER = '''
import sys
BLOCK = {"albumentations", "open_clip", "pyarrow", "cv2", "fastapi", "c2pa"}
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCK:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Block())
'''


def test_require_names_the_extra_or_imports_the_module() -> None:
    assert require("json", "anything").dumps([1]) == "[1]"
    with pytest.raises(MissingExtraError, match=r"the thing needs no_such_module_xyz: pip install 'synthdet\[all\]'"):
        require("no_such_module_xyz", "the thing")
    import tomllib

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert set(EXTRAS.values()) <= set(pyproject["project"]["optional-dependencies"])  # every named extra exists


@pytest.mark.parametrize(("args", "extra"), [
    (["finetune", str(demo_data_dir()), "-o", "{tmp}/ft"], "finetune"),
    (["data", "index", str(demo_data_dir()), "-o", "{tmp}/m.parquet"], "parquet"),
])
def test_cli_without_an_extra_says_what_to_install(tmp_path: Path, args: list[str], extra: str) -> None:
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    res = subprocess.run([sys.executable, "-m", "synthdet.cli", *(a.format(tmp=tmp_path) for a in args), "--quiet"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 2, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"pip install 'synthdet[{extra}]'" in lines[0], res.stderr
    assert not (tmp_path / "m.parquet").exists()


def test_fine_tuned_detectors_load_without_the_finetune_extra(tmp_path: Path) -> None:
    """Scoring with a fine-tuned detector needs its loader, not the training loop or the augmentation extra."""
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    code = ("import sys\nfrom synthdet.detectors.card import DETECTOR_KINDS\n"
            "assert callable(DETECTOR_KINDS.get('finetuned'))\n"
            "assert 'albumentations' not in sys.modules and 'synthdet.training.finetune.loop' not in sys.modules\nprint('ok')\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-1500:]


def test_serve_and_c2pa_without_their_extras(tmp_path: Path) -> None:
    """``synthdet serve`` names the ``serve`` extra; assessments still work, saying C2PA was not checked."""
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    res = subprocess.run([sys.executable, "-m", "synthdet.cli", "serve"], capture_output=True, text=True, env=env,
                         timeout=300)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "pip install 'synthdet[serve]'" in lines[0], res.stderr
    code = ("import io\nfrom PIL import Image\nfrom synthdet.detectors.evidence import read_evidence\nb = io.BytesIO()\n"
            "Image.new('RGB', (8, 8)).save(b, 'JPEG')\nc = read_evidence(b.getvalue()).c2pa\n"
            "print(c.status, c.detail)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.stdout.startswith("not-checked c2pa-python not installed"), res.stderr[-1500:]
