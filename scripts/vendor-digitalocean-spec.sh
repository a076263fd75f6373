#!/usr/bin/env bash
# Copy the part of DigitalOcean's OpenAPI description this project uses into
# third_party/digitalocean-openapi/, unmodified, and record a checksum of every file.
#
#   scripts/vendor-digitalocean-spec.sh PATH/TO/digitalocean/openapi/specification
#
# Then update the commit in third_party/digitalocean-openapi/SOURCE.md and run `make test`:
# the contract and simulator tests read the vendored copy, and tests/unit/test_vendored_spec.py
# checks the files against SHA256SUMS.
set -euo pipefail

src="${1:?usage: $0 PATH/TO/openapi/specification}"
dest="$(cd "$(dirname "$0")/.." && pwd)/third_party/digitalocean-openapi"

for part in description.yml resources/databases shared/headers.yml shared/responses \
            shared/models/error.yml shared/models/error_with_root_causes.yml; do
    [ -e "$src/$part" ] || { echo "not found: $src/$part" >&2; exit 1; }
done

rm -rf "$dest/resources" "$dest/shared" "$dest/description.yml"
mkdir -p "$dest/resources" "$dest/shared/models"
cp "$src/description.yml" "$dest/"
cp -r "$src/resources/databases" "$dest/resources/"
# The code samples are not part of the description; the tests never read them.
rm -rf "$dest/resources/databases/examples"
cp "$src/shared/headers.yml" "$dest/shared/"
cp -r "$src/shared/responses" "$dest/shared/"
cp "$src/shared/models/error.yml" "$src/shared/models/error_with_root_causes.yml" \
   "$dest/shared/models/"

cd "$dest"
find description.yml resources shared -type f -print0 | LC_ALL=C sort -z \
    | xargs -0 sha256sum > SHA256SUMS
echo "vendored $(wc -l < SHA256SUMS) files into $dest"
