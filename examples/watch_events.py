#!/usr/bin/env python3
"""
Print every event of a QEMU until it quits, then exit with status 0.

    python3 watch_events.py qmp.sock

Each event is one JSON line.  QEMU's monitor serves one client per socket:
give QEMU a second monitor (another ``-qmp``) to watch one you also use.
Exit status: 0 when QEMU closed the connection, 1 when the session broke,
130 on Ctrl-C.
"""

import argparse
import asyncio
import json
import sys

from qemu.qmp import ConnectError, QMPClient, QMPError


async def watch(address: str) -> None:
    qmp = QMPClient('watcher')
    try:
        await qmp.connect(address)
    except ConnectError as err:
        raise SystemExit(f"watch_events: {err}") from None
    print(f"Watching {address}", file=sys.stderr, flush=True)
    try:
        async for event in qmp.session_events():
            print(json.dumps(dict(event)), flush=True)
    except (QMPError, OSError) as err:
        raise SystemExit(f"watch_events: the session broke: {err}") from None
    print("QEMU closed the connection.", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('socket', help="QEMU's QMP socket, or host:port")
    args = parser.parse_args()
    try:
        asyncio.run(watch(args.socket))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == '__main__':
    main()
