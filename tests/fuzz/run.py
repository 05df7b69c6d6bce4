"""Coverage-guided fuzzing of one target of :mod:`tests.fuzz.targets` with atheris (libFuzzer).

    python3 -m tests.fuzz.run TARGET [CORPUS_DIR...] [-max_total_time=SECONDS] [libFuzzer flags]

keygate's parsers (and the multipart library it parses uploads with) are instrumented for
coverage; the target's invariants are checked on every input. An input that breaks one is written by libFuzzer
as ``crash-<sha1>`` (see ``-artifact_prefix``): copy it to ``tests/fuzz/corpus/TARGET/`` and
``tests/fuzz/test_targets.py`` replays it from then on. ``scripts/fuzz.sh`` runs every target.
"""

from __future__ import annotations

import sys
import types

import atheris
import multipart

from keygate import http1, metering, routes
from keygate import multipart as keygate_multipart
from keygate.guards import body as guards_body
from keygate.ops import policy, validate
from tests.fuzz import targets
from tests.fuzz.targets import TARGETS

# Only the parsers and checks under test, the multipart library and the targets themselves are
# instrumented, function by function after a plain import: coverage feedback then points at them,
# and start-up stays short (atheris's import hook would instrument the whole keygate package,
# over 2 s of CPU for each target).
PARSERS = [guards_body, keygate_multipart, routes, http1, metering, multipart, policy, validate, targets]


def _instrument(module: types.ModuleType) -> int:
    count = 0
    for value in vars(module).values():
        members = vars(value).values() if isinstance(value, type) else (value,)
        for member in members:
            func = member.__func__ if isinstance(member, staticmethod | classmethod) else member
            if isinstance(func, types.FunctionType) and func.__module__ == module.__name__:
                atheris.instrument_func(func)
                count += 1
    return count


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: python3 -m tests.fuzz.run {{{','.join(TARGETS)}}} [libFuzzer flags]")
    target = TARGETS[sys.argv[1]]
    for module in PARSERS:
        _instrument(module)
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
