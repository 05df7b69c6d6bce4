#!/usr/bin/env bash
# Bounded coverage-guided fuzzing (atheris, libFuzzer) of keygate's parsers: the request-body
# guard (JSON and multipart), the multipart parser, the route matcher and query filter, the
# upstream HTTP/1.1 response parser, the usage meter, and the check of operator policy JSON
# (tests/fuzz/targets.py says each one's invariants). Each target runs FUZZ_SECONDS (default 3), FUZZ_JOBS at a time (default: all at
# once, so a run takes about FUZZ_SECONDS plus a start-up of a few seconds), from the seeds in
# tests/fuzz/corpus/TARGET plus what earlier runs on this machine found (.fuzz/corpus/TARGET,
# not committed). A longer hunt, or some targets only:
#   FUZZ_SECONDS=600 scripts/fuzz.sh            FUZZ_SECONDS=60 scripts/fuzz.sh routes http1
# An input that breaks a target is kept as .fuzz/TARGET-crash-<sha1> and fails the run; copy it
# to tests/fuzz/corpus/TARGET/ (then the test suite replays it) and fix the parser.
# On CI (CI=true) the fuzzer's random seed is fixed (FUZZ_SEED, default 1), so a CI run explores
# the same inputs each time and fails on a change to the code, not on the luck of the draw; hunts
# on a developer's machine take a new seed each run.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-3}
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(body multipart routes http1 metering policy)
jobs=${FUZZ_JOBS:-${#targets[@]}}
seed=0  # libFuzzer: 0 picks a random seed
[ "${CI:-}" = true ] && seed=${FUZZ_SEED:-1}
if ! python3 -c 'import atheris' 2>/dev/null; then
    echo "fuzz: atheris is not installed (Linux x86_64 wheels only): the corpus replay and the"
    echo "      Hypothesis properties in tests/fuzz/test_targets.py still run with pytest"
    exit 0
fi
mkdir -p .fuzz
fuzz_one() {
    local target=$1
    mkdir -p ".fuzz/corpus/$target"
    if python3 -m tests.fuzz.run "$target" ".fuzz/corpus/$target" "tests/fuzz/corpus/$target" \
        -max_total_time="$seconds" -seed="$seed" -timeout=10 -rss_limit_mb=1024 -max_len=8192 \
        -artifact_prefix=".fuzz/$target-" >".fuzz/$target.log" 2>&1; then
        echo "fuzz $target: $(grep -Eo 'Done [0-9]+ runs' ".fuzz/$target.log" | tail -1 | cut -d' ' -f2) inputs in ${seconds}s, no failure"
    else
        echo "fuzz $target: FAILED (.fuzz/$target.log):"
        grep -E -A12 'Traceback|Broken|ERROR' ".fuzz/$target.log" | head -40
        return 1
    fi
}
pids=() failed=0
for target in "${targets[@]}"; do
    while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 0.2; done
    fuzz_one "$target" &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
exit $failed
