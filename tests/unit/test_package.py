"""The installed package exposes its namespaces without sys.path tricks."""

import os
import subprocess
import sys


def test_lobes_import_from_installed_package_outside_repo(tmp_path):
    code = "import speechbrain, speechbrain_cald, speechbrain_cald.lobes; print('ok')"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "ok"


def test_package_and_lobes_from_two_trees_is_said(tmp_path):
    """A second checkout's package on sys.path beside this editable install (whose
    lobes come through `package_dir`): the import says so, naming both trees."""
    import shutil

    import speechbrain_cald

    other = tmp_path / "other_checkout"
    shutil.copytree(os.path.dirname(speechbrain_cald.__file__), other / "speechbrain_cald")
    code = "import speechbrain_cald"
    env = {**os.environ, "PYTHONPATH": str(other)}
    out = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", code],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode != 0
    assert (
        f"imported from {other / 'speechbrain_cald'} but speechbrain_cald.lobes from" in out.stderr
    )
    same = subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-c", code], cwd=tmp_path)
    assert same.returncode == 0
