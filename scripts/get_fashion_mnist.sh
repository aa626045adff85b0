#!/usr/bin/env bash
# Installs Fashion-MNIST from Debian's package `dataset-fashion-mnist` and
# prints the --dataset argument of `python -m experiments` that reads it.
#
#   scripts/get_fashion_mnist.sh            # install (if needed) and check
#   python -m experiments f2 --dataset "$(scripts/get_fashion_mnist.sh | tail -n 1)"
#
# Only the last line goes to stdout: the `idx:DIR` argument. Messages go to
# stderr. Needs apt (Debian/Ubuntu); uses sudo only when not root.
set -euo pipefail

DIR=/usr/share/datasets/fashion-mnist
FILES=(train-images-idx3-ubyte.gz train-labels-idx1-ubyte.gz
       t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz)

have_all() {
  local name
  for name in "${FILES[@]}"; do
    [[ -s "$DIR/$name" ]] || return 1
  done
}

if ! have_all; then
  if [[ "$(id -u)" -eq 0 ]]; then
    SUDO=()
  elif command -v sudo >/dev/null; then
    SUDO=(sudo)
  else
    echo "error: not root and no sudo: run 'apt-get install -y dataset-fashion-mnist' as root." >&2
    exit 1
  fi
  echo "Installing dataset-fashion-mnist with apt-get..." >&2
  if ! apt-cache show dataset-fashion-mnist >/dev/null 2>&1; then
    "${SUDO[@]}" apt-get update >&2
  fi
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y dataset-fashion-mnist >&2
fi

missing=0
for name in "${FILES[@]}"; do
  if [[ -s "$DIR/$name" ]]; then
    echo "ok: $DIR/$name ($(stat -c %s "$DIR/$name") bytes)" >&2
  else
    echo "error: missing $DIR/$name" >&2
    missing=1
  fi
done
if [[ $missing -ne 0 ]]; then
  echo "error: the package did not provide the four IDX files in $DIR." >&2
  exit 1
fi
echo "Use: python -m experiments PRESET --dataset idx:$DIR" >&2
echo "idx:$DIR"
