"""
``qmp-record``: record the QMP sessions of any client, on their way.

.. code-block:: text

    qmp-record [-o FILE] [--secrets] [--once] QEMU_SOCKET LISTEN_SOCKET

It listens on LISTEN_SOCKET; a client that connects there (written with
any library, in any language) is connected to QEMU_SOCKET, and every byte
passes both ways unchanged while the messages are written to a transcript
(see `qemu.qmp.transcript`): FILE (``qmp-session.jsonl`` by default) for
the first session, FILE with ``-2``, ``-3``... before its suffix for the
next ones.  ``--once`` stops after the first session; otherwise Ctrl-C
does.  File descriptors passed with a message (``getfd``) do not pass
through.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import List, Optional, Tuple

from . import __version__
from ._sockets import SocketAddrT, close_writer
from .legacy import QEMUMonitorProtocol, QMPBadPortError
from .transcript import CLIENT, SERVER, Recorder


__all__ = ['main', 'serve', 'session_path', 'StreamRecorder']

# How many bytes of an unfinished message are kept for the transcript; a
# longer one is passed on all the same, and left out of it.
_LONGEST_KEPT = 64 << 20


class StreamRecorder:
    """
    Record the messages of one direction of a byte stream, however it is
    split (a client may send no newline between messages).

    :param recorder: Where they go.
    :param sender: `~qemu.qmp.transcript.CLIENT` or ``SERVER``.
    """

    def __init__(self, recorder: Recorder, sender: str) -> None:
        self._recorder = recorder
        self._sender = sender
        self._pending = b''
        self._decoder = json.JSONDecoder()

    def closed(self) -> None:
        """The sender closed the connection: say so in the transcript."""
        self._recorder.closed(self._sender)

    def feed(self, data: bytes) -> None:
        """Take the next bytes; record each message they complete."""
        pending = self._pending + data
        if b'}' in data:
            pending = self._take_messages(pending)
        if len(pending) > _LONGEST_KEPT:
            pending = b''
        self._pending = pending

    def _take_messages(self, pending: bytes) -> bytes:
        # surrogateescape: bytes that are not UTF-8 (the guest agent's
        # 0xFF) survive the round trip, so consumed text maps to bytes.
        text = pending.decode('utf-8', 'surrogateescape')
        position = 0
        while True:
            start = text.find('{', position)
            if start < 0:
                return b''
            try:
                msg, position = self._decoder.raw_decode(text, start)
            except ValueError:
                return text[start:].encode('utf-8', 'surrogateescape')
            if isinstance(msg, dict):
                self._recorder.record(self._sender, msg)


def session_path(output: str, number: int) -> str:
    """Where session ``number`` (from 1) is written."""
    if number == 1:
        return output
    stem, suffix = os.path.splitext(output)
    return f"{stem}-{number}{suffix}"


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                stream: StreamRecorder) -> None:
    """Pass bytes from ``reader`` to ``writer``, recording them, until
    ``reader`` ends; then close ``writer``."""
    try:
        while True:
            data = await reader.read(256 * 1024)
            if not data:
                stream.closed()
                break
            stream.feed(data)
            writer.write(data)
            await writer.drain()
    except OSError:
        pass  # that side broke the connection: the session is over
    finally:
        try:
            await close_writer(writer, 5.0)
        except OSError:
            pass


async def _open(address: SocketAddrT
                ) -> Tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    if isinstance(address, str):
        return await asyncio.open_unix_connection(address)
    return await asyncio.open_connection(*address)


async def serve(qemu: SocketAddrT, listen: str, output: str, *,
                secrets: bool = False, once: bool = False,
                ready: Optional[asyncio.Event] = None) -> int:
    """
    Record sessions between clients on ``listen`` and QEMU on ``qemu``.

    :param qemu: QEMU's monitor socket.
    :param listen: The UNIX socket path clients connect to.
    :param output: The first session's transcript (see `session_path`).
    :param secrets: Record secrets as they are.
    :param once: Return after the first session.
    :param ready: Set once clients can connect.
    :return: How many sessions were recorded.
    """
    sessions = 0
    finished = asyncio.Event()

    async def handle(client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        nonlocal sessions
        try:
            qemu_reader, qemu_writer = await _open(qemu)
        except OSError as err:
            print(f"qmp-record: cannot connect to {qemu}: {err}",
                  file=sys.stderr)
            await close_writer(client_writer, 5.0)
            return
        sessions += 1
        path = session_path(output, sessions)
        print(f"qmp-record: session {sessions} -> {path}", file=sys.stderr)
        with Recorder(path, secrets=secrets) as recorder:
            await asyncio.gather(
                _pump(client_reader, qemu_writer,
                      StreamRecorder(recorder, CLIENT)),
                _pump(qemu_reader, client_writer,
                      StreamRecorder(recorder, SERVER)))
        if once:
            finished.set()

    server = await asyncio.start_unix_server(handle, listen)
    try:
        if ready is not None:
            ready.set()
        await finished.wait()
    finally:
        server.close()
        await server.wait_closed()
        try:
            os.unlink(listen)
        except FileNotFoundError:
            pass
    return sessions


def main(argv: Optional[List[str]] = None) -> int:
    """The ``qmp-record`` program; returns its exit status."""
    parser = argparse.ArgumentParser(
        prog='qmp-record',
        description='Record the QMP sessions of any client: it connects to '
                    'LISTEN_SOCKET, we pass everything on to QEMU_SOCKET '
                    'and write the messages to a transcript.')
    parser.add_argument('--version', action='version',
                        version=f'%(prog)s (qemu.qmp) {__version__}')
    parser.add_argument('-o', '--output', metavar='FILE',
                        default='qmp-session.jsonl',
                        help='the transcript of the first session (the '
                             'next ones get -2, -3... before the suffix)')
    parser.add_argument('--secrets', action='store_true',
                        help='record secrets (object-add secret data, '
                             'passwords) as they are, not masked')
    parser.add_argument('--once', action='store_true',
                        help='stop after the first session')
    parser.add_argument('qemu', metavar='QEMU_SOCKET',
                        help="QEMU's monitor: a UNIX socket path or "
                             "host:port")
    parser.add_argument('listen', metavar='LISTEN_SOCKET',
                        help='the UNIX socket path clients connect to')
    args = parser.parse_args(argv)
    try:
        qemu = QEMUMonitorProtocol.parse_address(args.qemu)
    except QMPBadPortError as err:
        parser.error(str(err))
    try:
        asyncio.run(serve(qemu, args.listen, args.output,
                          secrets=args.secrets, once=args.once))
    except KeyboardInterrupt:
        return 130
    except OSError as err:
        print(f"qmp-record: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
