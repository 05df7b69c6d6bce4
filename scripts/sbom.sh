#!/usr/bin/env bash
# A CycloneDX (JSON) software bill of materials of everything keygate ships with: the runtime
# lock (requirements/runtime.lock), each component with its pinned version, package URL and the
# hashes of its distributions. Written to sbom.cdx.json (not committed), or to the path given:
#   scripts/sbom.sh [OUT]            scripts/sbom.sh --dev [OUT]  (the development lock too)
set -euo pipefail
cd "$(dirname "$0")/.."
lock=requirements/runtime.lock
if [ "${1:-}" = --dev ]; then lock=requirements/dev.lock; shift; fi
out=${1:-sbom.cdx.json}
python3 -m cyclonedx_py requirements "$lock" --pyproject pyproject.toml --mc-type application \
    --output-reproducible --of JSON -o "$out" 2> >(grep -v 'Dependency Graph is incomplete\|^  warn(' >&2)
python3 - "$out" <<'PY'
import json
import sys

bom = json.load(open(sys.argv[1]))
print(f"{sys.argv[1]}: CycloneDX {bom['specVersion']}, {len(bom.get('components', []))} components")
PY
