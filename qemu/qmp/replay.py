"""
Replaying a transcript: which recorded answer a command gets.

Sans-I/O: `Replay` is given each command a server receives and says what
to send back; `QMPTestServer.replay
<qemu.qmp.testing.QMPTestServer.replay>` does the I/O.

A command matches a recorded one with the same name and the same
arguments (a recorded `MASKED <qemu.qmp.transcript.MASKED>` value matches
any value).  By default any unplayed recorded command may match, the
first one first; with ``ordered=True`` only the next one may; with
``repeat=True``, a command that comes more often than recorded (a poll)
gets its last recorded reply again.  The answer is what the server sent
for the recorded command: its reply, with the id of the command received,
and the events that followed it, in order.  The guest agent's
``guest-sync`` and ``guest-sync-delimited`` carry a fresh id each time:
they match by name, and their reply is the id received, as the agent's
is.
"""

from __future__ import annotations

import difflib
import json
from typing import Any, Dict, List, Optional, Union

from .error import QMPError
from .transcript import CLOSED, MASKED, Exchange, Transcript


__all__ = ['Replay', 'Mismatch', 'ReplayError']


class ReplayError(QMPError, AssertionError):
    """
    Commands did not match the transcript: raised by `Replay.check`.  An
    `AssertionError` too, so that a test fails with every mismatch
    described.
    """


class Mismatch:
    """
    A command the transcript does not hold.

    :param received: The command as received.
    :param expected: The recorded exchange it was closest to, if any.
    :param ordered: Whether the replay required the recorded order.
    :param reason: What is wrong, when it is not a difference.
    """

    def __init__(self, received: Dict[str, Any],
                 expected: Optional[Exchange], ordered: bool,
                 reason: Optional[str] = None) -> None:
        #: The command as received.
        self.received = received
        #: The recorded command it was compared with, if any.
        self.expected = expected
        self._ordered = ordered
        self._reason = reason

    @property
    def name(self) -> str:
        """The received command's name."""
        return str(self.received.get('execute',
                                     self.received.get('exec-oob')))

    def __str__(self) -> str:
        return self.describe()

    def describe(self) -> str:
        """
        What differs, member by member, then a diff of the two commands.

        :return: Several lines of text.
        """
        if self._reason is not None:
            return self._reason
        received = _comparable(self.received)
        expected = self.expected
        if expected is None:
            return (f"{self.name!r} is not in the transcript, or every "
                    f"recorded {self.name!r} was played already")
        recorded = _comparable(expected.command)
        which = "the next command" if self._ordered \
            else f"the recorded {expected.name!r}"
        lines = [f"{self.name!r} does not match {which} "
                 f"({expected.where}):"]
        lines.extend(f"  {line}" for line in _differences(recorded,
                                                          received))
        lines.extend(difflib.unified_diff(
            _pretty(recorded), _pretty(received), 'recorded', 'received',
            lineterm=''))
        return '\n'.join(lines)


class Replay:
    """
    What a server replaying ``transcript`` answers.

    :param transcript: The recorded session.
    :param ordered: Commands must come in the recorded order.
    :param repeat: A command that comes again once its recorded ones were
        played gets the last one's reply again (without events).
    """

    def __init__(self, transcript: Transcript, *,
                 ordered: bool = False, repeat: bool = False) -> None:
        #: The transcript replayed.
        self.transcript = transcript
        #: Whether commands must come in the recorded order.
        self.ordered = ordered
        #: Whether a command may be answered again.
        self.repeat = repeat
        #: Recorded exchanges played, in the order they were.
        self.played: List[Exchange] = []
        #: Recorded exchanges not played yet, in order.
        self.unplayed: List[Exchange] = transcript.exchanges()
        #: Commands that matched nothing, in order.
        self.mismatches: List[Mismatch] = []
        #: Events to send once the client has negotiated.
        self.opening_events = transcript.opening_events()

    def answer(self, command: Dict[str, Any]
               ) -> Union[List[Dict[str, Any]], Mismatch]:
        """
        What to send for ``command``: the recorded messages, or the
        `Mismatch` if it matches nothing (not recorded in `mismatches`:
        the caller may still answer it another way, see `mismatched`).

        :param command: The command received.
        :return: The messages, the reply's id set to ``command``'s.
        """
        candidates = self.unplayed[:1] if self.ordered else self.unplayed
        wanted = _comparable(command)
        sync = wanted['execute'] in _SYNC_COMMANDS
        for exchange in candidates:
            if (sync and exchange.name == wanted['execute']) \
                    or _matches(_comparable(exchange.command), wanted):
                self.unplayed.remove(exchange)
                self.played.append(exchange)
                answer = [_with_id(msg, command) for msg in exchange.answer]
                if not any('return' in msg or 'error' in msg or msg is CLOSED
                           for msg in answer):
                    return self._no_reply(command, exchange, answer)
                return _echo_sync(answer, command) if sync else answer
        if self.repeat:
            for exchange in reversed(self.played):
                if _matches(_comparable(exchange.command), wanted):
                    return [_with_id(msg, command) for msg in exchange.answer
                            if 'event' not in msg and msg is not CLOSED]
        return Mismatch(command, self._closest(command), self.ordered)

    def _no_reply(self, command: Dict[str, Any], exchange: Exchange,
                  answer: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """The transcript ends before the reply (a recording cut short):
        an error reply, rather than a client waiting forever."""
        text = (f"the transcript holds no reply to {exchange.name!r} "
                f"({exchange.where})")
        self.mismatches.append(Mismatch(command, exchange, self.ordered,
                                        reason=text))
        reply: Dict[str, Any] = {'error': {'class': 'GenericError',
                                           'desc': f"replay: {text}"}}
        if 'id' in command:
            reply['id'] = command['id']
        return answer + [reply]

    def mismatched(self, mismatch: Mismatch) -> None:
        """Record ``mismatch``: nothing else answered its command."""
        self.mismatches.append(mismatch)

    def check(self, complete: bool = False) -> None:
        """
        :param complete: Every recorded command must have been played.
        :raise ReplayError: Some command matched nothing (or, with
            ``complete``, some recorded command never came); every one is
            described.
        """
        problems = [m.describe() for m in self.mismatches]
        if complete:
            problems.extend(f"{exchange.name!r} ({exchange.where}) was "
                            f"recorded, and never came"
                            for exchange in self.unplayed)
        if problems:
            raise ReplayError(
                f"{len(problems)} command(s) did not match "
                f"{self.transcript.name}:\n\n" + '\n\n'.join(problems))

    def _closest(self, command: Dict[str, Any]) -> Optional[Exchange]:
        if self.ordered:
            return self.unplayed[0] if self.unplayed else None
        name = Mismatch(command, None, False).name
        for exchange in self.unplayed:
            if exchange.name == name:
                return exchange
        return None


# The guest agent's resynchronisation: the reply is the id sent.
_SYNC_COMMANDS = frozenset({'guest-sync', 'guest-sync-delimited'})


def _echo_sync(answer: List[Dict[str, Any]],
               command: Dict[str, Any]) -> List[Dict[str, Any]]:
    arguments = command.get('arguments', {})
    return [{**msg, 'return': arguments.get('id')} if 'return' in msg
            else msg for msg in answer]


def _comparable(command: Dict[str, Any]) -> Dict[str, Any]:
    """A command as compared: no id, 'arguments' always there."""
    name = command.get('execute', command.get('exec-oob'))
    return {'execute': name, 'arguments': command.get('arguments', {})}


def _matches(recorded: Any, received: Any) -> bool:
    if recorded == MASKED:
        return True
    if isinstance(recorded, dict):
        return isinstance(received, dict) \
            and recorded.keys() == received.keys() \
            and all(_matches(value, received[key])
                    for key, value in recorded.items())
    if isinstance(recorded, list):
        return isinstance(received, list) \
            and len(recorded) == len(received) \
            and all(map(_matches, recorded, received))
    return bool(type(recorded) is type(received) and recorded == received)


def _differences(recorded: Any, received: Any,
                 path: str = '') -> List[str]:
    """Each member that differs, by its path, e.g. ``arguments.sync``."""
    if _matches(recorded, received):
        return []
    if isinstance(recorded, dict) and isinstance(received, dict):
        found = []
        for key in recorded.keys() | received.keys():
            where = f"{path}.{key}" if path else str(key)
            if key not in received:
                found.append(f"{where}: recorded {_show(recorded[key])}, "
                             f"missing")
            elif key not in recorded:
                found.append(f"{where}: not recorded, received "
                             f"{_show(received[key])}")
            else:
                found.extend(_differences(recorded[key], received[key],
                                          where))
        return sorted(found)
    return [f"{path or 'command'}: recorded {_show(recorded)}, received "
            f"{_show(received)}"]


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + '...'


def _pretty(command: Dict[str, Any]) -> List[str]:
    return json.dumps(command, indent=2, sort_keys=True).splitlines()


def _with_id(msg: Dict[str, Any],
             received: Dict[str, Any]) -> Dict[str, Any]:
    """``msg``, with the id of ``received`` if it is a reply."""
    if 'event' in msg or msg is CLOSED:
        return msg
    reply = {key: value for key, value in msg.items() if key != 'id'}
    if 'id' in received:
        reply['id'] = received['id']
    return reply
