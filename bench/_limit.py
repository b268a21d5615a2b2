"""``python -m bench._limit NOFILE -- ARGV...``: exec ARGV with a soft open-files limit of NOFILE.

The soak benchmark runs each proxy under the limit a hub usually gets (``ulimit -n 1024``), so a
descriptor leak shows up as failed connections, not only as a rising curve. ``exec`` keeps the
PID, so the benchmark samples the proxy itself.
"""

from __future__ import annotations

import os
import resource
import sys


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        raise SystemExit("usage: python -m bench._limit NOFILE -- ARGV...")
    soft = int(argv[0])
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
