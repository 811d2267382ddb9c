"""
A lean stand-in QMP server for benchmarks: ``python server.py SOCKET``.

Blocking sockets, a thread per client, no event loop: as little server
work per message as Python allows, so the client's cost dominates.
It greets, negotiates, and answers:

- ``query-status``: a small reply;
- ``flood`` ``{"count": N}``: N events, then the reply (so a client that
  awaits the reply has received every event);
- ``big`` ``{"size": N}``: a reply carrying an N-byte string;
- anything else: an empty reply.

It parses a JSON stream (newlines optional), like QEMU, and prints
``ready`` once listening.
"""

import json
import os
import socket
import sys
import threading

GREETING = (b'{"QMP": {"version": {"qemu": {"major": 7, "minor": 2, '
            b'"micro": 0}, "package": "bench"}, "capabilities": ["oob"]}}'
            b'\r\n')
STATUS = (b'{"return": {"status": "running", "singlestep": false, '
          b'"running": true}, "id": %s}\r\n')
EVENT = (b'{"timestamp": {"seconds": 1700000000, "microseconds": 123456}, '
         b'"event": "BLOCK_JOB_PENDING", "data": {"type": "backup", '
         b'"id": "job0"}}\r\n')
_decode = json.JSONDecoder().raw_decode
_encode = json.JSONEncoder(separators=(',', ':')).encode


def answer(msg):
    name = msg.get('execute') or msg.get('exec-oob')
    exec_id = _encode(msg.get('id')).encode()
    if name == 'query-status':
        return STATUS % exec_id
    if name == 'flood':
        count = msg['arguments']['count']
        return EVENT * count + b'{"return": {}, "id": %s}\r\n' % exec_id
    if name == 'big':
        size = msg['arguments']['size']
        return b'{"return": "%s", "id": %s}\r\n' % (b'x' * size, exec_id)
    return b'{"return": {}, "id": %s}\r\n' % exec_id


def split_messages(buf):
    """The whole JSON messages at the start of ``buf``, and the rest."""
    pos, end, messages = 0, len(buf), []
    while True:
        while pos < end and buf[pos] in ' \t\r\n':
            pos += 1
        if pos == end:
            break
        try:
            msg, pos = _decode(buf, pos)
        except ValueError:
            break
        messages.append(msg)
    return messages, buf[pos:]


def serve(conn):
    with conn:
        conn.sendall(GREETING)
        buf = ''
        while True:
            data = conn.recv(262144)
            if not data:
                return
            messages, buf = split_messages(buf + data.decode())
            out = [answer(msg) for msg in messages]
            if out:
                try:
                    conn.sendall(b''.join(out))
                except OSError:
                    return


def listen(path, backlog):
    """A UNIX socket listening at ``path`` (made anew)."""
    if os.path.exists(path):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(backlog)
    return listener


def main(path):
    listener = listen(path, 16)
    print('ready', flush=True)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == '__main__':
    main(sys.argv[1])
