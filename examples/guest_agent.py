#!/usr/bin/env python3
"""
Check that a guest agent answers, and print what it says about the guest.

    python3 guest_agent.py qga.sock

The socket is the host end of the guest's ``org.qemu.guest_agent.0``
port.  Exit status 0 when the agent answered, 1 otherwise.
"""

import argparse
import asyncio

from qemu.qmp import ExecuteError, QMPClient, QMPError

TIMEOUT = 10.0


async def probe(address: str) -> None:
    qga = QMPClient('agent')
    qga.await_greeting = qga.negotiate = False  # the agent never greets
    await qga.connect(address)
    try:
        # Once this returns, the channel is clean: the agent dropped
        # whatever an earlier client left half-written.
        try:
            await qga.guest_sync(timeout=TIMEOUT)
        except asyncio.TimeoutError:
            raise SystemExit(f"no agent answered within {TIMEOUT} s "
                             f"(is qemu-ga running in the guest?)") from None

        await qga.execute('guest-ping', timeout=TIMEOUT)
        info = await qga.execute('guest-info', timeout=TIMEOUT)
        enabled = [cmd['name'] for cmd in info['supported_commands']
                   if cmd['enabled']]
        print(f"qemu-ga {info['version']}: {len(enabled)} commands enabled")
        try:
            osinfo = await qga.execute('guest-get-osinfo', timeout=TIMEOUT)
            print(f"guest: {osinfo.get('pretty-name', osinfo)}")
        except ExecuteError as err:
            print(f"guest-get-osinfo: {err}")
    finally:
        await qga.disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument('socket', help="the guest agent's socket")
    args = parser.parse_args()
    try:
        asyncio.run(probe(args.socket))
    except (QMPError, OSError) as err:
        raise SystemExit(f"guest_agent: {err}") from None


if __name__ == '__main__':
    main()
