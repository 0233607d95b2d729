"""geomol as a user installs it: a wheel built from the sources, installed (not editable) into a fresh
virtual environment, its three entry points run from an empty folder.

Offline: the wheel is built without build isolation (setuptools comes with the ``dev`` extra) and the
new environment reuses this environment's installed dependencies through a ``.pth`` file instead of
downloading them, so only geomol itself comes from the wheel. The editable install of this checkout is
not visible there (``.pth`` files inside a path named by another ``.pth`` are not executed).
"""

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "qm9"
GENERATOR = ROOT / "pretrained" / "propmolflow_qm9_gap_cpu" / "model.ckpt"
# What a wheel is built from: the package and its metadata (not tests, data, outputs or checkpoints).
SOURCES = ["geomol", "pyproject.toml", "README.md"]

pytestmark = pytest.mark.slow


def _run(cmd, cwd, env=None, timeout=600):
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{cmd[:3]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(bin folder, environment) of a fresh venv holding geomol from a wheel."""
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=ignore)
        else:
            shutil.copy2(path, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"), str(src)], tmp)  # fmt: skip
    (wheel,) = (tmp / "dist").glob("geomol-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "geomol/conf/train.yaml" in names and "geomol/conf/model/propmolflow.yaml" in names

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp)
    purelib = _run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp)  # fmt: skip
    # The dependencies (torch, PyG, RDKit, Hydra …) already installed here, appended after the venv's own.
    Path(purelib.stdout.strip(), "geomol_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
          "--no-index", "--ignore-installed", str(wheel)], tmp)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GEOMOL_DEBUG")}
    env.update(OMP_NUM_THREADS="1", GEOMOL_DATA=str(tmp / "data"), GEOMOL_OUTPUTS=str(tmp / "outputs"))
    return venv / "bin", env


def test_wheel_installs_geomol_not_the_checkout(installed, tmp_path):
    bin_dir, env = installed
    where = _run([str(bin_dir / "python"), "-c", "import geomol, geomol.cli.train as t; print(geomol.__file__); print(t.CONFIG_DIR)"], tmp_path, env)  # fmt: skip
    module, config_dir = where.stdout.split()
    assert str(ROOT) not in module and str(bin_dir.parent) in module
    assert Path(config_dir, "train.yaml").is_file() and str(ROOT) not in config_dir


def test_entry_points_from_an_empty_folder(installed, tmp_path):
    bin_dir, env = installed
    work = tmp_path / "empty"
    work.mkdir()
    trained = _run([str(bin_dir / "geomol-train"), "experiment=demo", "trainer=quick", f"data.source={FIXTURE}",
                    "data.subset=null", "data.batch_size=16", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                    "hydra.run.dir=run"], work, env)  # fmt: skip
    assert "Test results" in trained.stdout and "mae_homo" in trained.stdout
    ckpt = work / "run" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()

    generated = _run([str(bin_dir / "geomol-generate"), f"ckpt={GENERATOR}", "num_molecules=4", "output=mols.sdf",
                      "condition.gap=6.8", "seed=0", "progress=false"], work, env)  # fmt: skip
    assert "molecule_stability" in generated.stdout
    assert (work / "mols.sdf").read_text().count("$$$$") == 4

    evaluated = _run([str(bin_dir / "geomol-evaluate"), "sdf=mols.sdf", f"regressor={ckpt}", "target.homo=-6.5"], work, env)  # fmt: skip
    assert "Conditional generation" in evaluated.stdout and "homo = -6.5 eV" in evaluated.stdout
    # python -m forms of the same tools
    _run([str(bin_dir / "python"), "-m", "geomol.evaluate", "sdf=mols.sdf"], work, env)
