"""``python -m keygate.testing``: serve a mock OpenAI upstream until Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import threading

from .mock import DEFAULT_API_KEY, MockUpstream


def main(argv: list[str] | None = None) -> None:
    """Serve a mock upstream until Ctrl-C, printing its base URL first."""
    parser = argparse.ArgumentParser(prog="python -m keygate.testing", description=main.__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        help=f"accepted key (repeatable); default {DEFAULT_API_KEY}",
    )
    args = parser.parse_args(argv)
    with MockUpstream(args.host, args.port, args.api_keys or (DEFAULT_API_KEY,)) as upstream:
        print(upstream.url, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
