#!/usr/bin/env bash
# Known vulnerabilities in every locked dependency (requirements/dev.lock, a superset of
# runtime.lock), checked by pip-audit against the package index's advisory data (or OSV, with
# AUDIT_SOURCE=osv). Fails when a locked release has a known vulnerability, or when the source
# answered for some packages and not for others (an incomplete audit is not a pass).
# When the advisory source cannot be reached within a few seconds, it prints
# "skipped: advisory source unreachable" and succeeds: scripts/test.sh runs it where that
# source may be out of reach. Arguments go to pip-audit, e.g. --ignore-vuln GHSA-xxxx-xxxx-xxxx
# (say why next to the call).
set -euo pipefail
cd "$(dirname "$0")/.."
lock=${AUDIT_LOCK:-requirements/dev.lock}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
audit() {  # audit REQUIREMENTS JSON_OUT SECONDS [pip-audit args...]
    local req=$1 out=$2 seconds=$3; shift 3
    timeout "$seconds" python3 -m pip_audit --disable-pip --no-deps -r "$req" \
        --source "${AUDIT_SOURCE:-pypi}" --timeout 5 --progress-spinner off -f json -o "$out" "$@" \
        >"$out.log" 2>&1
}
# One package first, so an unreachable source costs seconds, not one timeout per package.
grep -m1 -E '^[A-Za-z0-9]' "$lock" | cut -d' ' -f1 >"$tmp/probe.txt"
audit "$tmp/probe.txt" "$tmp/probe.json" 15 || true
if ! python3 -c 'import json, sys; deps = json.load(open(sys.argv[1]))["dependencies"]
sys.exit(0 if deps and "skip_reason" not in deps[0] else 1)' "$tmp/probe.json" 2>/dev/null; then
    echo "skipped: advisory source unreachable (pip-audit --source ${AUDIT_SOURCE:-pypi})"
    exit 0
fi
status=0
audit "$lock" "$tmp/audit.json" "${AUDIT_SECONDS:-120}" "$@" || status=$?
python3 - "$tmp/audit.json" "$status" "$tmp/audit.json.log" <<'PY'
import json
import sys
from pathlib import Path

report, status, log = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
if not report.exists():
    print(log.read_text()[-2000:], file=sys.stderr)
    sys.exit(f"pip-audit failed (exit {status}) without a report")
deps = json.loads(report.read_text())["dependencies"]
vulnerable = [d for d in deps if d.get("vulns")]
skipped = [d for d in deps if "skip_reason" in d]
for d in vulnerable:
    for v in d["vulns"]:
        fixed = ", ".join(v.get("fix_versions") or []) or "no fixed release"
        print(f"VULNERABLE {d['name']}=={d['version']}: {v['id']} (fixed in: {fixed})")
for d in skipped:
    print(f"NOT AUDITED {d['name']}: {d['skip_reason']}")
print(f"{len(deps) - len(skipped)} locked packages audited, {len(vulnerable)} with known vulnerabilities")
sys.exit(1 if vulnerable or skipped else 0)
PY
