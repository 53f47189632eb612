"""Open a rendered report.html in real headless Chromium and save a PNG screenshot (proof that it renders).

    python benchmarks/screenshot_report.py OUT/report.html report.png

Needs Chromium (Debian: apt-get install chromium). Runs with the flags a closed network needs.
"""

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    html, png = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        sys.exit("no Chromium found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--hide-scrollbars", "--window-size=1280,1400",
               f"--screenshot={png}", html.as_uri()]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if p.returncode != 0 or not png.is_file():
        sys.exit(f"chromium failed ({p.returncode}): {p.stderr[-500:]}")
    print(f"wrote {png} ({png.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
