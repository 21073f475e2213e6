#!/usr/bin/env bash
# Set up (first time only) and run the node with ./node.toml, or the file given.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/deid-node serve -c "${1:-node.toml}"
