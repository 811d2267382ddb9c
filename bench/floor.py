"""
The floor: a bare blocking-socket client that does only the unavoidable
JSON encoding and decoding.  ``python floor.py SCENARIO SOCKET``, with
SCENARIO ``pipelined`` or ``events``; prints the same JSON as workload.py.
"""

import json
import socket
import sys
import time

from workload import EVENTS, PIPELINED, WIDTH


def lines(sock):
    pending = b''
    while True:
        data = sock.recv(262144)
        if not data:
            return
        *complete, pending = (pending + data).split(b'\n')
        yield from complete


def session(path):
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    reader = lines(sock)
    json.loads(next(reader))
    sock.sendall(b'{"execute":"qmp_capabilities"}\n')
    json.loads(next(reader))
    return sock, reader


def pipelined(path):
    sock, reader = session(path)
    exec_id = 0
    for _ in range(PIPELINED // WIDTH):
        batch = []
        for _ in range(WIDTH):
            exec_id += 1
            batch.append(json.dumps({'execute': 'query-status',
                                     'id': exec_id}).encode() + b'\n')
        sock.sendall(b''.join(batch))
        for _ in range(WIDTH):
            json.loads(next(reader))
    sock.close()
    return PIPELINED // WIDTH * WIDTH


def events(path):
    sock, reader = session(path)
    sock.sendall(json.dumps({'execute': 'flood', 'id': 1,
                             'arguments': {'count': EVENTS}}).encode())
    for _ in range(EVENTS + 1):
        json.loads(next(reader))
    sock.close()
    return EVENTS


def main():
    scenario, path = sys.argv[1], sys.argv[2]
    wall, cpu = time.perf_counter(), time.process_time()
    ops = {'pipelined': pipelined, 'events': events}[scenario](path)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({'ops': ops, 'wall': wall, 'cpu': cpu,
                      'rss_growth': None}))


if __name__ == '__main__':
    main()
