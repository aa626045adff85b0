#!/usr/bin/env bash
# Installs the text corpus of the language-model experiments, the
# reStructuredText sources of the Python documentation that Debian's package
# `python3.11-doc` puts in /usr/share/doc/python3.11/html/_sources, and
# prints the --dataset argument of `python -m experiments` that reads it.
#
#   scripts/get_text_corpus.sh            # install (if needed) and check
#   python -m experiments lm --dataset "$(scripts/get_text_corpus.sh | tail -n 1)"
#   PYTHON_DOC_VERSION=3.12 scripts/get_text_corpus.sh   # another release's
#
# Only the last line goes to stdout: the `text:DIR` argument. Messages go to
# stderr. Needs apt (Debian/Ubuntu); uses sudo only when not root. Another
# version of the documentation is another corpus: its split and numbers
# differ from those measured on python3.11-doc.
set -euo pipefail

VERSION=${PYTHON_DOC_VERSION:-3.11}
PACKAGE="python$VERSION-doc"
DIR="/usr/share/doc/python$VERSION/html/_sources"

count_sources() {
  find "$DIR" -type f -name '*.rst.txt' 2>/dev/null | wc -l
}

has_candidate() {
  apt-cache policy "$PACKAGE" 2>/dev/null |
    grep -q '^ *Candidate: [^(]'
}

no_package() {
  local others
  others=$(apt-cache search --names-only '^python3\.[0-9]+-doc$' 2>/dev/null |
           cut -d ' ' -f 1 | paste -sd ' ')
  echo "error: this release has no package $PACKAGE." >&2
  if [[ -n "$others" ]]; then
    echo "It has: $others" >&2
    echo "Install one (e.g. apt-get install -y ${others%% *}) and rerun with" \
         "PYTHON_DOC_VERSION=X.Y (its Python version)." >&2
  else
    echo "Look for your python3's documentation package (python3.X-doc," \
         "e.g. python3.12-doc on Debian 13 or Ubuntu 24.04), install it and" \
         "rerun with PYTHON_DOC_VERSION=3.X." >&2
  fi
  echo "Or pass --dataset text:DIR for any folder of text files." >&2
  exit 1
}

if [[ "$(count_sources)" -eq 0 ]]; then
  if [[ "$(id -u)" -eq 0 ]]; then
    SUDO=()
  elif command -v sudo >/dev/null; then
    SUDO=(sudo)
  else
    echo "error: not root and no sudo: run 'apt-get install -y $PACKAGE' as root." >&2
    exit 1
  fi
  if ! has_candidate; then
    "${SUDO[@]}" apt-get update >&2 || true
    has_candidate || no_package
  fi
  echo "Installing $PACKAGE with apt-get..." >&2
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y "$PACKAGE" >&2
fi

files=$(count_sources)
if [[ "$files" -eq 0 ]]; then
  echo "error: $PACKAGE did not provide the .rst.txt sources in $DIR." >&2
  exit 1
fi
bytes=$(find "$DIR" -type f -print0 | du -cb --files0-from=- | tail -n 1 | cut -f 1)
version=$(dpkg-query -W -f='${Version}' "$PACKAGE" 2>/dev/null || echo unknown)
echo "ok: $files .rst.txt files, $bytes bytes in $DIR ($PACKAGE $version)" >&2
echo "Use: python -m experiments PRESET --dataset text:$DIR" >&2
echo "text:$DIR"
