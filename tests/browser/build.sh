#!/usr/bin/env bash
# Builds the test page of tests/it/browser.rs into tests/browser/dist/ (the folder to serve with
# --ui-dir): dist/index.html and dist/assets/app.js. Needs node and npm (the npm registry for
# `npm ci`, skipped when node_modules already matches package-lock.json) and the system protoc with
# the well-known .proto files (libprotobuf-dev), as scripts/setup.sh installs.
#
# The stubs are generated from proto/taskqueue.proto by @protobuf-ts/plugin run under the SYSTEM
# protoc: the npm package @protobuf-ts/protoc would download one, and there is nothing to
# download from here.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$here"

# Looked up before anything can put node_modules/.bin (whose `protoc` is the downloader) first.
protoc_bin=$(command -v protoc) || { echo "build.sh: protoc is missing (scripts/setup.sh)" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "build.sh: npm is missing (scripts/setup.sh)" >&2; exit 1; }

stamp=node_modules/.taskqueue-lock
if ! cmp -s package-lock.json "$stamp" 2>/dev/null; then
  npm ci --no-audit --no-fund --loglevel=error
  cp package-lock.json "$stamp"
fi

rm -rf src/gen dist
mkdir -p src/gen dist/assets
"$protoc_bin" --plugin=protoc-gen-ts="$here/node_modules/.bin/protoc-gen-ts" \
  --ts_out src/gen --ts_opt long_type_number \
  -I "$repo/proto" "$repo/proto/taskqueue.proto"
node_modules/.bin/esbuild src/app.ts --bundle --format=iife --target=es2020 \
  --log-level=warning --outfile=dist/assets/app.js
cp index.html dist/index.html
echo "build.sh: built $here/dist" >&2
