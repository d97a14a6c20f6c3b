#!/usr/bin/env bash
# Extracts the XLA FFI headers of the oldest supported jaxlib (the build-system pin in pyproject.toml)
# into ./.ffi-oldest (ignored by git), so scripts/gpu_check.sh `compat` can build against them and
# prove that such a build loads in the newer jaxlib of the GPU machine. Needs PyPI access (run here,
# then carry .ffi-oldest to the device).
set -euo pipefail
top=$(git rev-parse --show-toplevel)
cd "$top"
version=$(python3 -c "import re; print(re.search(r'\"jaxlib==([0-9.]+)\"', open('pyproject.toml').read()).group(1))")
grep -qxF '/.ffi-oldest/' .git/info/exclude 2>/dev/null || echo '/.ffi-oldest/' >> .git/info/exclude
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_27_x86_64 --platform manylinux2014_x86_64 -d "$tmp" "jaxlib==$version"
rm -rf .ffi-oldest && mkdir -p .ffi-oldest
(cd .ffi-oldest && unzip -q "$tmp"/jaxlib-*.whl 'jaxlib/include/xla/ffi/api/*' && mv jaxlib/include/xla . && rm -rf jaxlib)
echo "$version" > .ffi-oldest/JAXLIB_VERSION
rm -rf "$tmp"
find .ffi-oldest -type f
