"""
A stand-in for qemu-system-x86_64, for qmp-shell-wrap's unit tests.

``python fake_qemu.py [QEMU ARGS...] -chardev socket,id=X,path=PATH ...``
connects to PATH, as QEMU does with a client-mode chardev, and serves QMP
there with the library's test server until it is told to ``quit`` or the
shell hangs up.  Before connecting it writes its pid to the file named by
``$FAKE_QEMU_PIDFILE``, if set, so tests can check it is gone.  With
``-M doesnotexist`` it fails at once, as QEMU does.
"""

import asyncio
import os
import sys

from qemu.qmp.testing import QMPTestServer


def chardev_path(args):
    for arg in args:
        # QEMU's option syntax: "," separates options, ",," is a comma.
        for option in arg.replace(',,', '\0').split(','):
            if option.startswith('path='):
                return option[len('path='):].replace('\0', ',')
    raise SystemExit("fake_qemu: no -chardev ...,path=PATH given")


async def serve(path):
    done = asyncio.Event()

    def quit_(args):
        done.set()
        return {}

    async with QMPTestServer() as server:
        server.on('query-status', {'status': 'running', 'running': True})
        server.on('quit', quit_)
        await server.connect_to(path)
        ended = asyncio.ensure_future(server.wait_disconnected())
        await asyncio.wait((ended, asyncio.ensure_future(done.wait())),
                           return_when=asyncio.FIRST_COMPLETED)


def main():
    args = sys.argv[1:]
    if 'doesnotexist' in args:
        print("fake_qemu: -M doesnotexist: unsupported machine type",
              file=sys.stderr)
        return 1
    pidfile = os.environ.get('FAKE_QEMU_PIDFILE')
    if pidfile:
        with open(pidfile, 'w') as out:
            out.write(str(os.getpid()))
    asyncio.run(serve(chardev_path(args)))
    return 0


if __name__ == '__main__':
    sys.exit(main())
