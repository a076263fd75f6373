#!/usr/bin/env bash
# Run the whole test suite against the newest release of every dependency (Python and Node),
# in a throwaway copy of the working tree with its own virtualenv and node_modules: the locks,
# .venv and node_modules of the checkout are not touched. Prints the versions it tested.
#
#   scripts/test-latest.sh [PYTHON]      (make test-latest)
set -euo pipefail

python="${1:-python3}"
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/provisioner-latest.XXXXXX")"
trap 'rm -rf "$work"' EXIT

# The working tree as it is (committed or not), without what is built or installed from it.
cd "$repo"
git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done \
    | xargs -0 cp --parents -t "$work"
cd "$work"

"$python" -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet --upgrade --upgrade-strategy eager -e '.[dev,demo]'

# The Node tooling at its newest versions too (package.json pins exact versions).
node -e '
  const fs = require("fs");
  const { execFileSync } = require("child_process");
  const pkg = JSON.parse(fs.readFileSync("package.json", "utf8"));
  for (const name of Object.keys(pkg.devDependencies)) {
    pkg.devDependencies[name] = execFileSync("npm", ["view", name, "version"]).toString().trim();
  }
  fs.writeFileSync("package.json", JSON.stringify(pkg, null, 2));
'
# package-lock.json stays (the lock tests read it); --no-package-lock ignores it here.
npm install --no-audit --no-fund --no-package-lock --loglevel=error

echo "test-latest: Python packages"
.venv/bin/pip list --format=freeze --exclude-editable | sed 's/^/  /'
echo "test-latest: Node packages"
npm ls --depth=0 2>/dev/null | tail -n +2 | sed 's/^/ /'

# The image installs the locks, not the newest releases: its tests run in `make test`.
.venv/bin/pytest -p no:cacheprovider -m "not image"
