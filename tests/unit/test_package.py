"""The installed package exposes its namespaces without sys.path tricks."""

import subprocess
import sys


def test_lobes_import_from_installed_package_outside_repo(tmp_path):
    code = "import speechbrain, speechbrain_cald, speechbrain_cald.lobes; print('ok')"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "ok"
