#!/usr/bin/env bash
# Install everything deid-node needs on a Debian machine: system packages (DCMTK,
# Tesseract, Orthanc for the interop tests) and a virtual environment in .venv.
# Usage: scripts/setup.sh [--test]   (--test adds the test and lint tools)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=()
command -v storescu >/dev/null 2>&1 || packages+=(dcmtk)
command -v tesseract >/dev/null 2>&1 || packages+=(tesseract-ocr tesseract-ocr-eng)
command -v Orthanc >/dev/null 2>&1 || packages+=(orthanc)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || packages+=(python3-venv python3-pip)
if [ "${1:-}" = "--test" ]; then
  # Font faces for the generated burned-in text of the pixel tests (serif, sans and
  # monospace, regular and bold).
  for font in fonts-dejavu-core fonts-liberation2 fonts-freefont-ttf fonts-noto-mono; do
    dpkg -s "$font" >/dev/null 2>&1 || packages+=("$font")
  done
fi
if [ ${#packages[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing system packages: ${packages[*]}"
  $sudo apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
    "${packages[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
extras=""
[ "${1:-}" = "--test" ] && extras="[test]"
stamp=".venv/.installed${extras}"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install -q -e ".${extras}"
  touch "$stamp"
fi
# OpenCV without its GUI libraries (see the script).
scripts/opencv-headless.sh .venv/bin/python
