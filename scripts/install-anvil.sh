#!/usr/bin/env sh
# Install the anvil JSON-RPC node (npm @foundry-rs/anvil, which ships a prebuilt
# binary through a platform-specific optional dependency) into .tools/, a
# project-local, git-ignored folder. Tests find it at .tools/node_modules/.bin/anvil.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=${ANVIL_VERSION:-1.7.1}
mkdir -p "$ROOT/.tools"
cd "$ROOT/.tools"
[ -f package.json ] || echo '{"name":"kaisar-tools","private":true}' > package.json
npm install --no-audit --no-fund --silent "@foundry-rs/anvil@$VERSION"
"$ROOT/.tools/node_modules/.bin/anvil" --version
