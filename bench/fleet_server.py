"""
A stand-in QMP server for thousands of sessions at once:
``python fleet_server.py SOCKET``.

One thread and epoll (server.py's thread per client would cost the
machine more than the client under test).  It greets, and answers as
server.py's ``answer`` does; ``broadcast`` first sends one event to every
connection.  Prints ``ready`` once listening.
"""

import selectors
import sys

from server import EVENT, GREETING, answer, listen, split_messages


def main(path):
    listener = listen(path, 4096)
    listener.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    buffers = {}  # connection -> what followed its last whole message
    print('ready', flush=True)

    def send(conn, data):
        try:
            conn.setblocking(True)  # replies are small: wait, rarely
            conn.sendall(data)
            conn.setblocking(False)
        except OSError:
            drop(conn)

    def drop(conn):
        if conn in buffers:
            selector.unregister(conn)
            del buffers[conn]
            conn.close()

    while True:
        for key, _ in selector.select():
            if key.fileobj is listener:
                while True:
                    try:
                        conn, _ = listener.accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    buffers[conn] = ''
                    selector.register(conn, selectors.EVENT_READ)
                    send(conn, GREETING)
                continue
            conn = key.fileobj
            try:
                data = conn.recv(65536)
            except OSError:
                data = b''
            if not data:
                drop(conn)
                continue
            messages, buffers[conn] = split_messages(buffers[conn]
                                                     + data.decode())
            out = []
            for msg in messages:
                if msg.get('execute') == 'broadcast':
                    for other in list(buffers):
                        if other is not conn:
                            send(other, EVENT)
                    out.append(EVENT)
                out.append(answer(msg))  # broadcast's is an empty return
            if out:
                send(conn, b''.join(out))


if __name__ == '__main__':
    main(sys.argv[1])
