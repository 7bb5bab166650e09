"""Make the README's screenshots of the report and the demo with the browser tests' own code.

Usage: .venv/bin/python scripts/screenshots.py [--photos DIR]
Runs tests/test_browser.py with AGENT_CIR_SCREENSHOTS=docs/screenshots, so the pictures are exactly what
the tests check (every image loaded, no request off the machine). With --photos (default: the shared
ImageNet samples when present) the galleries use real photos instead of generated colour squares; the
models stay the tests' tiny random ones and scripted answers.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PHOTOS = ROOT.parent / "shared" / "data" / "photos" / "imagenet-samples"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS if DEFAULT_PHOTOS.is_dir() else None,
                        help="folder of photos to use as the gallery")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    env = dict(os.environ, AGENT_CIR_SCREENSHOTS=str(args.out.resolve()), HF_HUB_OFFLINE="1")
    if args.photos:
        env["AGENT_CIR_DEMO_PHOTOS"] = str(args.photos.resolve())
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_browser.py"]
    status = subprocess.call(command, cwd=ROOT, env=env)
    if status == 0:
        for name in ("report-index.png", "report-query.png", "demo.png"):
            print(args.out / name)
    return status


if __name__ == "__main__":
    sys.exit(main())
