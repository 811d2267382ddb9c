"""
Transcripts of QMP sessions: record one, read one back.

A transcript is a text file of JSON objects, one per line.  The first line
says what it is; each other line is one message, who sent it, and when
(seconds since the first message):

.. code-block:: text

    {"qmp-transcript": 1, "recorded": "2026-12-03T19:52:07Z"}
    {"t": 0.0, "from": "server", "msg": {"QMP": {"version": ...}}}
    {"t": 0.0004, "from": "client", "msg": {"execute": "qmp_capabilities"}}
    {"t": 0.0009, "from": "server", "msg": {"return": {}}}

A line ``{"t": 1.5, "from": "server", "closed": true}`` says the server
closed the connection then (QEMU quit, say).

Record a session by giving the client a `Recorder`; replay a transcript
with `QMPTestServer.replay <qemu.qmp.testing.QMPTestServer.replay>`:

.. code-block:: python

    import asyncio

    from qemu.qmp import QMPClient
    from qemu.qmp.transcript import Recorder


    async def main() -> None:
        qmp = QMPClient()
        with Recorder('status.jsonl') as qmp.recorder:
            await qmp.connect('qmp.sock')
            await qmp.execute('query-status')
            await qmp.disconnect()

    asyncio.run(main())

Secrets (the ``data`` of a ``secret`` object, any ``password`` member) are
recorded as `MASKED` unless the recorder is told otherwise; a replay
accepts any value where the transcript has `MASKED`.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import time
from types import TracebackType
from typing import (
    IO,
    Any,
    Dict,
    Iterable,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Type,
    Union,
)

from .error import QMPError


__all__ = ['Recorder', 'Transcript', 'Entry', 'Exchange', 'TranscriptError',
           'MASKED', 'FORMAT', 'CLIENT', 'SERVER', 'CLOSED', 'mask_secrets',
           'record_wire']

#: The format's version, in each transcript's first line.
FORMAT = 1

#: What a secret is recorded as.
MASKED = '<masked>'

# Members whose value is a secret wherever they are.
_SECRET_MEMBERS = frozenset({'password'})
# QOM types whose 'data' property is a secret.
_SECRET_OBJECTS = frozenset({'secret', 'secret_keyring'})
# Properties qom-set may set to a secret.
_SECRET_PROPERTIES = frozenset({'data', 'password'})
# An HMP command line that may carry one.
_HMP_SECRET = re.compile(r'secret|password|passwd', re.IGNORECASE)

#: The message of an entry that says its sender closed the connection.
CLOSED: Dict[str, Any] = {'closed': True}

#: An entry's ``from`` for a message the client sent.
CLIENT = 'client'
#: An entry's ``from`` for a message the server sent.
SERVER = 'server'


class TranscriptError(QMPError):
    """
    A transcript that cannot be read: the file, line and reason.

    :param where: ``file:line``.
    :param reason: What is wrong there.
    """

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


class Entry(NamedTuple):
    """One message of a transcript."""

    #: `CLIENT` or `SERVER`.
    sender: str
    #: Seconds since the first message.
    time: float
    #: The message.
    msg: Dict[str, Any]
    #: Where it is, as ``file:line``, for error messages.
    where: str


class Exchange(NamedTuple):
    """
    A command of a transcript and what the server sent for it: its reply
    and the events that came until the client's next command, in the
    order they came.
    """

    #: The command as the client sent it.
    command: Dict[str, Any]
    #: The server's messages: the reply (with the recorded id) and events.
    answer: List[Dict[str, Any]]
    #: Where the command is, as ``file:line``.
    where: str

    @property
    def name(self) -> str:
        """The command's name."""
        return str(self.command.get('execute', self.command.get('exec-oob')))


def mask_secrets(msg: Mapping[str, Any]) -> Dict[str, Any]:
    """
    A copy of the command ``msg`` with its secrets replaced by `MASKED`:
    the ``data`` of a ``secret`` object, any ``password`` member, a
    ``qom-set`` of a ``data`` or ``password`` property, and an HMP command
    line that mentions a secret or a password (whole).

    >>> mask_secrets({'execute': 'object-add', 'arguments': {
    ...     'qom-type': 'secret', 'id': 'sec0', 'data': 'letmein'}})
    {'execute': 'object-add', 'arguments': {'qom-type': 'secret', \
'id': 'sec0', 'data': '<masked>'}}

    :param msg: A command.
    :return: The copy (``msg`` itself when it holds no secret).
    """
    arguments = msg.get('arguments')
    if not isinstance(arguments, Mapping):
        return dict(msg)
    masked = _masked(arguments)
    name = msg.get('execute', msg.get('exec-oob'))
    if name == 'qom-set' and masked.get('property') in _SECRET_PROPERTIES:
        masked['value'] = MASKED
    elif name == 'human-monitor-command' and _HMP_SECRET.search(
            str(masked.get('command-line', ''))):
        masked['command-line'] = MASKED
    return {**msg, 'arguments': masked}


def _masked(value: Any) -> Any:
    if isinstance(value, Mapping):
        secret_object = value.get('qom-type') in _SECRET_OBJECTS
        return {key: MASKED if key in _SECRET_MEMBERS
                or (secret_object and key == 'data') else _masked(item)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_masked(item) for item in value]
    return value


class Recorder:
    """
    Write a session's messages to a transcript as they pass.

    Give it to a client (``qmp.recorder = Recorder(path)``), or call
    `record` yourself.  Each line is written and flushed at once, so a
    session that crashes leaves a transcript of what happened.

    :param file: A path, or a text file open for writing.
    :param secrets: Record secrets as they are, not as `MASKED`.
    :raise OSError: The file cannot be opened.
    """

    def __init__(self, file: Union[str, os.PathLike[str], IO[str]], *,
                 secrets: bool = False) -> None:
        if isinstance(file, (str, os.PathLike)):
            self._file: IO[str] = open(file, 'w', encoding='utf-8')
            self._owned = True
        else:
            self._file = file
            self._owned = False
        self._secrets = secrets
        self._started: Optional[float] = None
        self._write({'qmp-transcript': FORMAT, 'recorded': datetime.datetime
                     .now(datetime.timezone.utc)
                     .strftime('%Y-%m-%dT%H:%M:%SZ')})

    def record(self, sender: str, msg: Mapping[str, Any]) -> None:
        """
        Write one message.

        :param sender: `CLIENT` or `SERVER`.
        :param msg: The message.
        """
        now = time.monotonic()
        if self._started is None:
            self._started = now
        if sender == CLIENT and not self._secrets:
            msg = mask_secrets(msg)
        self._write({'t': round(now - self._started, 6), 'from': sender,
                     'msg': dict(msg)})

    def closed(self, sender: str) -> None:
        """
        Write that ``sender`` closed the connection.

        :param sender: `CLIENT` or `SERVER`.
        """
        now = time.monotonic()
        started = now if self._started is None else self._started
        self._write({'t': round(now - started, 6), 'from': sender,
                     'closed': True})

    def _write(self, obj: Mapping[str, Any]) -> None:
        if self._file.closed:
            return  # recorded until closed; a session may outlive it
        self._file.write(json.dumps(obj, separators=(',', ':')) + '\n')
        self._file.flush()

    def close(self) -> None:
        """Stop recording; close the file if the recorder opened it."""
        if self._owned:
            self._file.close()

    def __enter__(self) -> 'Recorder':
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc: Optional[BaseException],
                 traceback: Optional[TracebackType]) -> None:
        self.close()


def record_wire(recorder: Recorder, sender: str, data: bytes) -> None:
    """
    Record the messages in ``data``, bytes as sent (one or more JSON
    objects); anything else in it (the guest agent's 0xFF) is not a
    message, and is left out.
    """
    text = data.decode('utf-8', errors='replace')
    decoder = json.JSONDecoder()
    position = 0
    while True:
        start = text.find('{', position)
        if start < 0:
            return
        try:
            msg, position = decoder.raw_decode(text, start)
        except ValueError:
            return
        if isinstance(msg, dict):
            recorder.record(sender, msg)


class Transcript:
    """
    A recorded session, read back.

    :param entries: Its messages, in order.
    :param name: Where it came from, for error messages.
    """

    def __init__(self, entries: Iterable[Entry],
                 name: str = '<transcript>') -> None:
        #: Every message, in order.
        self.entries: List[Entry] = list(entries)
        #: Where it came from.
        self.name = name

    @classmethod
    def load(cls, path: Union[str, os.PathLike[str]]) -> 'Transcript':
        """
        Read a transcript file.

        :raise OSError: It cannot be read.
        :raise TranscriptError: It is not a transcript.
        """
        with open(path, encoding='utf-8') as file:
            return cls.parse(file.read(), os.fspath(path))

    @classmethod
    def parse(cls, text: str, name: str = '<transcript>') -> 'Transcript':
        """
        Read a transcript from its text.

        :raise TranscriptError: It is not a transcript.
        """
        entries = []
        header_seen = False
        for number, line in enumerate(text.splitlines(), 1):
            where = f"{name}:{number}"
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as err:
                raise TranscriptError(where, f"not JSON ({err})") from None
            if not isinstance(obj, dict):
                raise TranscriptError(where, "not a JSON object")
            if not header_seen:
                if obj.get('qmp-transcript') != FORMAT:
                    raise TranscriptError(
                        where, f"not a QMP transcript of format {FORMAT} "
                        f"(its first line must be "
                        f"{{\"qmp-transcript\": {FORMAT}, ...}})")
                header_seen = True
                continue
            sender, msg = obj.get('from'), obj.get('msg')
            if obj.get('closed') is True and sender in (CLIENT, SERVER):
                entries.append(Entry(sender, float(obj.get('t', 0.0)),
                                     CLOSED, where))
                continue
            if sender not in (CLIENT, SERVER) or not isinstance(msg, dict):
                raise TranscriptError(
                    where, "a message line needs \"from\" (\"client\" or "
                    "\"server\") and \"msg\" (an object)")
            entries.append(Entry(sender, float(obj.get('t', 0.0)), msg,
                                 where))
        if not header_seen:
            raise TranscriptError(f"{name}:1", "empty")
        if not entries:
            # What a recording that failed to connect leaves behind.
            raise TranscriptError(f"{name}:1", "no message was recorded")
        return cls(entries, name)

    @property
    def greeting(self) -> Optional[Dict[str, Any]]:
        """The server's greeting, or `None` (the guest agent has none)."""
        for entry in self.entries:
            if entry.sender == SERVER:
                return entry.msg if 'QMP' in entry.msg else None
            return None  # the client spoke first
        return None

    def exchanges(self) -> List[Exchange]:
        """
        The commands the client sent after negotiating, each with what the
        server sent for it (see `Exchange`).

        A reply goes with the command of its id.  An event goes with the
        oldest command still waiting for its reply (QEMU runs commands in
        order: that is the one it was running), or, when none waits, with
        the newest command sent before it.
        """
        exchanges: List[Exchange] = []
        by_id: Dict[str, Exchange] = {}
        idless: List[Exchange] = []
        waiting: List[Exchange] = []
        current: Optional[Exchange] = None
        for entry in self.entries:
            msg = entry.msg
            if msg is CLOSED:
                # (Once the client closed, the server only follows.)
                if entry.sender == CLIENT:
                    break
                if current is not None:
                    current.answer.append(msg)
                continue
            if entry.sender == CLIENT:
                name = msg.get('execute', msg.get('exec-oob'))
                if name == 'qmp_capabilities':
                    continue
                current = Exchange(msg, [], entry.where)
                exchanges.append(current)
                waiting.append(current)
                if 'id' in msg:
                    by_id[_id_key(msg['id'])] = current
                else:
                    idless.append(current)
            elif 'QMP' in msg and not exchanges:
                continue  # the greeting
            elif 'event' in msg:
                owner = waiting[0] if waiting else current
                if owner is not None:
                    owner.answer.append(msg)
            else:
                owner = by_id.pop(_id_key(msg['id']), None) if 'id' in msg \
                    else (idless.pop(0) if idless else None)
                if owner is not None:
                    owner.answer.append(msg)
                    waiting.remove(owner)
        return exchanges

    def opening_events(self) -> List[Dict[str, Any]]:
        """The events the server sent before the client's first command
        (after negotiating), and `CLOSED` if it closed then."""
        events = []
        for entry in self.entries:
            if entry.sender == CLIENT and entry.msg.get(
                    'execute') != 'qmp_capabilities':
                break
            if entry.sender == SERVER and ('event' in entry.msg
                                           or entry.msg is CLOSED):
                events.append(entry.msg)
        return events


def _id_key(value: object) -> str:
    # Ids are any JSON value; their JSON text tells them apart.
    return json.dumps(value, sort_keys=True)
