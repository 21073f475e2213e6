#!/usr/bin/env bash
# Presidio's image redactor asks for OpenCV's desktop build, which loads Qt and X11
# libraries in every process that imports cv2 (about 35 MB more resident memory in
# each of the node's workers). The node uses no window or GUI function, so the
# headless build of OpenCV, made for servers and containers, replaces it. Both
# install the same cv2 module: the desktop build is removed first (which removes
# that module), then the headless one is written again.
# Usage: scripts/opencv-headless.sh [PYTHON]   (default: .venv/bin/python)
set -euo pipefail
python="${1:-.venv/bin/python}"
if "$python" -m pip show -q opencv-python >/dev/null 2>&1; then
  headless=$("$python" -m pip show opencv-python-headless 2>/dev/null | sed -n 's/^Version: //p')
  [ -n "$headless" ] || headless=$("$python" -m pip show opencv-python | sed -n 's/^Version: //p')
  "$python" -m pip uninstall -q -y opencv-python
  "$python" -m pip install -q --no-cache-dir --force-reinstall --no-deps "opencv-python-headless==${headless}"
fi
"$python" -c 'import cv2' || {
  echo "opencv-headless: cv2 does not import" >&2
  exit 1
}
