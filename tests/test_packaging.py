"""Our `datasets/` folder must not shadow the PyPI `datasets` package (and vice versa)."""

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cli_does_not_shadow_pypi_datasets(tmp_path):
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("MARK = 'the PyPI datasets package'\n")
    code = textwrap.dedent(f"""
        import runpy, sys
        sys.argv = [{str(REPO / 'cli.py')!r}, '--help']
        sys.path.insert(0, {str(REPO)!r})          # what `python cli.py` does to sys.path
        try:
            runpy.run_path({str(REPO / 'cli.py')!r}, run_name='__main__')
        except SystemExit:
            pass
        import datasets, trtquant.datasets
        print(datasets.MARK)
        print(trtquant.datasets.open_source.__module__)
    """)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={"PYTHONPATH": str(tmp_path / "site"), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert lines[-2] == "the PyPI datasets package"
    assert lines[-1] == "trtquant.datasets.sources"


def test_installed_package_maps_folders_under_trtquant():
    import trtquant.datasets
    import trtquant.quant

    assert Path(trtquant.datasets.__file__).resolve().parent == REPO / "datasets"
    assert Path(trtquant.quant.__file__).resolve().parent == REPO / "quant"
