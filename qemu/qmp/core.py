"""
The QMP session, with no I/O: bytes in, session events out.

`SessionCore` is every rule of a QMP session above the byte framing, in one
place, for both clients: `QMPClient` (asyncio tasks and futures) and the
blocking `qemu.qmp.legacy.QEMUMonitorProtocol` (threads and a condition)
each feed it what their socket delivered and act on what it returns; they
keep only their I/O and their waiting.  It imports no asyncio, socket,
threading or select, so it is tested with plain bytes.

Its shape is h11's ``Connection``:

- `SessionCore.receive_data` takes bytes (``b''`` at end of stream);
- `SessionCore.next_message` decodes the next message, and
  `SessionCore.route` says what it means: a `Reply` for a waiting command,
  a QMP event (the `Message` itself, the common case costs nothing), the
  `Greeting`, `Negotiated`, or `SessionEnded`; `SessionCore.next_event`
  does both at once for a client with no hook in between;
- commands go the other way: `SessionCore.prepare` gives a command its id,
  `SessionCore.add_pending` records who waits for the reply, and
  `SessionCore.abandon` forgets a caller that stopped waiting.

What it decides, and so what both clients do alike:

- the greeting and negotiation phases (`Phase`): a bad greeting is a
  `GreetingError`, a refused or garbled negotiation a `NegotiationError`;
- which reply belongs to whom: ids of any JSON type (``_ids.reply_key``),
  the first of two replies with the same id wins, id-less replies go to
  id-less commands in order;
- late replies to abandoned commands are dropped at DEBUG, replies with
  unknown ids at WARNING (the QMP spec: clients drop them);
- an id-less error is the server failing to parse a command: the session
  ends with `ServerParseError` (ignored while a guest-agent
  resynchronisation is under way);
- a reply over the size limit whose id can be read fails only its
  command (`ReplyFailed`); any other over-long line ends the session;
- bytes that are not JSON, JSON nested too deeply, a message cut off by
  the end of the stream: the session ends, after every message that came
  before has been handed out;
- how the end is logged: INFO for the server hanging up, ERROR for
  anything else, once.

The waiter a client records with `SessionCore.add_pending` is opaque here:
a future for `QMPClient`, a slot for the blocking client.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from enum import Enum
from typing import (
    Dict,
    Generic,
    Hashable,
    List,
    Mapping,
    Optional,
    Tuple,
    TypeVar,
    Union,
)

from ._ids import IdMaker, check_caller_id, reply_key
from .codec import DEFAULT_LIMIT, Codec, LineBuffer, MessageTooLongError
from .error import ProtocolError
from .handshake import (
    GreetingError,
    NegotiationError,
    capabilities_command,
    read_greeting,
)
from .message import (
    DeserializationError,
    Message,
    not_qmp,
)
from .models import Greeting
from .replies import (
    ExecInterruptedError,
    ExecuteError,
    ServerParseError,
    reply_value,
)
from .util import exception_summary


__all__ = ['SessionCore', 'Phase', 'Reply', 'ReplyFailed', 'Negotiated',
           'SessionEnded', 'SessionEvent', 'NO_ID', 'ABANDONED_KEPT']

W = TypeVar('W')

# Marks a member missing from a message (None is a valid JSON id).
_ABSENT = object()


class _NoId:
    def __repr__(self) -> str:
        return 'NO_ID'


#: Stands for "sent without an id" (JSON null is an id like any other).
NO_ID: object = _NoId()

#: How many abandoned commands (timed out, cancelled) are remembered, so
#: that their late replies are dropped quietly; a reply to an older one is
#: logged as unknown.
ABANDONED_KEPT = 1000


class Phase(Enum):
    """Where a session is."""

    #: Waiting for the server's greeting.
    GREETING = 'greeting'
    #: Greeted; ``qmp_capabilities`` is (about to be) sent, its reply due.
    NEGOTIATING = 'negotiating'
    #: Commands and events flow.
    ESTABLISHED = 'established'
    #: Over: no message can arrive any more.
    ENDED = 'ended'


class Reply(Generic[W]):
    """The reply to the command ``waiter`` waits for."""

    __slots__ = ('waiter', 'msg')

    def __init__(self, waiter: W, msg: Message) -> None:
        self.waiter = waiter
        self.msg = msg


class ReplyFailed(Generic[W]):
    """The command ``waiter`` waits for failed: its reply was unusable."""

    __slots__ = ('waiter', 'error')

    def __init__(self, waiter: W, error: Exception) -> None:
        self.waiter = waiter
        self.error = error


class Negotiated:
    """The server accepted ``qmp_capabilities``: the session runs."""

    __slots__ = ()


class SessionEnded:
    """
    The session is over, and why: `EOFError` when the server hung up, an
    `OSError` from the socket, or a `ProtocolError` (`GreetingError` and
    `NegotiationError` included) when the server broke the protocol.
    """

    __slots__ = ('reason',)

    def __init__(self, reason: BaseException) -> None:
        self.reason = reason


#: What `SessionCore.route` returns.  A QMP event comes as its `Message`.
SessionEvent = Union[Message, Greeting, 'Reply[W]', 'ReplyFailed[W]',
                     Negotiated, SessionEnded]

_NEGOTIATED = Negotiated()


class SessionCore(Generic[W]):
    """
    One QMP session's rules, fed bytes, with no I/O.

    Make one per connection.

    >>> core = SessionCore(logging.getLogger('demo'), await_greeting=False,
    ...                    negotiate=False)
    >>> exec_id, wire = core.prepare(Message({'execute': 'stop'}), True)
    >>> bytes(wire)
    b'{"execute":"stop","id":"__qmp#00001"}'
    >>> key = core.add_pending(exec_id, 'the caller')
    >>> core.receive_data(b'{"event": "STOP"}\\n{"return": {}, '
    ...                   b'"id": "__qmp#00001"}\\n')
    >>> core.next_event()
    Message({'event': 'STOP'})
    >>> reply = core.next_event()
    >>> reply.waiter, reply.msg
    ('the caller', Message({'return': {}, 'id': '__qmp#00001'}))
    >>> core.next_event() is None   # needs more bytes
    True

    :param logger: Where drops and the end of the session are logged.
    :param limit: The longest message accepted, in bytes.
    :param await_greeting: The server greets first (the guest agent does
        not).
    :param negotiate: Negotiate capabilities after the greeting.
    :param framing: The stream's line buffer, when the client reads lines
        through it too (`AsyncProtocol._readline`): one buffer per stream.
    """

    def __init__(self, logger: logging.Logger, *,
                 limit: int = DEFAULT_LIMIT,
                 await_greeting: bool = True, negotiate: bool = True,
                 framing: Optional[LineBuffer] = None) -> None:
        self.logger = logger
        #: The wire format of this session.
        self.codec = Codec(limit, framing)
        #: Where the session is.
        self.phase = Phase.GREETING if await_greeting or negotiate \
            else Phase.ESTABLISHED
        self._negotiate = negotiate
        #: The server's greeting, once it came.
        self.greeting: Optional[Greeting] = None
        #: Keep the greeting as its bytes once the handshake is over; a
        #: client whose hooks may have changed it in place says no.
        self.compact_greeting = True
        #: Why the session ended, once it did.
        self.end_reason: Optional[BaseException] = None
        #: How many guest-agent resynchronisations are under way; while
        #: any is, id-less errors (the agent's answer to 0xFF) are dropped.
        self.resyncing = 0
        self._make_id = IdMaker()
        self._negotiation: Optional[Message] = None
        # Who waits for which reply: by reply_key() of the id, and id-less
        # commands in the order they were sent (None: one that stopped
        # waiting, whose reply is still due; a list: they are rare, and
        # an empty deque costs a session 760 bytes).
        self._by_key: Dict[Hashable, W] = {}
        self._idless: List[Optional[W]] = []
        # Ids of commands whose callers stopped waiting, newest last, made
        # at the first one.
        self._abandoned: Optional[OrderedDict[Hashable, None]] = None

    def __len__(self) -> int:
        """How many replies are due (abandoned id-less ones included)."""
        return len(self._by_key) + len(self._idless)

    # ------------------------------------------------------------------
    # Commands: upper half
    # ------------------------------------------------------------------

    def prepare(self, msg: Message,
                assign_id: bool) -> Tuple[object, Message]:
        """
        Check a command and make the copy to send, encoded now.

        ``msg`` itself is not changed.

        :param msg: The command.
        :param assign_id: Give it an id of the client's own; otherwise it
            keeps its own id, or has none.
        :return: The id its reply will carry (`NO_ID` for none), and the
            copy to send.
        :raise ValueError: Neither 'execute' nor 'exec-oob'; 'exec-oob'
            without an id; or a caller's id that uses the client's prefix.
        :raise SerializationError: ``msg`` cannot be encoded as JSON.
        """
        if not ('execute' in msg or 'exec-oob' in msg):
            raise ValueError("Requires 'execute' or 'exec-oob' message")
        if assign_id:
            exec_id = self._make_id()
            return exec_id, msg.wire_copy(id=exec_id)
        if 'id' in msg:
            caller_id = msg['id']
            check_caller_id(caller_id)
            return caller_id, msg.wire_copy()
        if 'exec-oob' in msg:
            raise ValueError("'exec-oob' requires an 'id'")
        return NO_ID, msg.wire_copy()

    def prepare_execute(self, cmd: str,
                        arguments: Optional[Mapping[str, object]],
                        oob: bool) -> Tuple[object, Message]:
        """
        `prepare` for a command made from its parts, with an id of the
        client's own: no intermediate message.

        :return: The id, and the message to send.
        :raise SerializationError: ``arguments`` cannot be encoded.
        """
        exec_id = self._make_id()
        return exec_id, self.command_message(cmd, arguments, oob, exec_id)

    @staticmethod
    def command_message(cmd: str, arguments: Optional[Mapping[str, object]],
                        oob: bool, exec_id: object) -> Message:
        """The message `prepare_execute` sends for a command with
        ``exec_id``."""
        obj: Dict[str, object] = {'exec-oob' if oob else 'execute': cmd}
        if arguments is not None:
            obj['arguments'] = arguments
        obj['id'] = exec_id
        return Message._for_wire(obj)

    def add_pending(self, exec_id: object, waiter: W) -> Hashable:
        """
        Record that ``waiter`` waits for the reply to ``exec_id``.

        :return: The key to `abandon` it with.
        :raise ValueError: Another command waits on the same id.
        """
        if exec_id is NO_ID:
            self._idless.append(waiter)
            return NO_ID
        key = reply_key(exec_id)
        if key in self._by_key:
            raise ValueError(f"ID {exec_id!r} is in use by a command still "
                             f"waiting for its reply")
        self._by_key[key] = waiter
        return key

    def abandon(self, key: Hashable, waiter: W) -> None:
        """
        ``waiter`` stopped waiting (timed out, cancelled) before its reply.

        Its late reply will be dropped quietly.  An id-less one keeps its
        place in line: the next id-less reply is still its own.
        """
        if key is NO_ID:
            idless = self._idless
            for index, queued in enumerate(idless):
                if queued is waiter:
                    idless[index] = None
                    return
            return
        if self._by_key.get(key) is waiter:
            del self._by_key[key]
            abandoned = self._abandoned
            if abandoned is None:
                abandoned = self._abandoned = OrderedDict()
            abandoned[key] = None
            if len(abandoned) > ABANDONED_KEPT:
                abandoned.popitem(last=False)

    def take_waiters(self) -> List[W]:
        """Forget and return every waiter; the session is over for them."""
        waiters = list(self._by_key.values())
        waiters.extend(w for w in self._idless if w is not None)
        self._by_key.clear()
        self._idless.clear()
        return waiters

    def interrupted(self, cause: Optional[BaseException] = None,
                    hint: str = '') -> ExecInterruptedError:
        """
        The error for a command whose reply will never come.

        :param cause: Why the session ended, if not `end_reason`.
        :param hint: Said after the reason, e.g. where to read more.
        """
        reason = self.end_reason if cause is None else cause
        text = "the session ended before the reply arrived"
        if reason is not None:
            text += f" ({exception_summary(reason)})"
        error = ExecInterruptedError(text + hint)
        error.__cause__ = reason
        return error

    def negotiation_command(self) -> Message:
        """
        The ``qmp_capabilities`` command to send, once greeted.

        It goes without an id: the reply is the first message after the
        greeting that is not an event.
        """
        assert self.greeting is not None and self.phase is Phase.NEGOTIATING
        msg = Message(capabilities_command(self.greeting))
        self._negotiation = msg
        return msg

    def greeted(self, greeting: Greeting) -> None:
        """
        The server's greeting came (read by `route`, or by a client's own
        means): negotiation, if asked for, is next.
        """
        self.greeting = greeting
        if self.phase is Phase.GREETING:
            if self._negotiate:
                self.phase = Phase.NEGOTIATING
            else:
                self._established()

    def _established(self) -> None:
        """
        The handshake is over: keep only what the session needs.

        The greeting is kept as the bytes it came in, decoded again only
        if read: thousands of idle sessions in one process each hold a
        few hundred bytes for it instead of 1.4 KB.
        """
        self.phase = Phase.ESTABLISHED
        self._negotiation = None
        greeting = self.greeting
        if type(greeting) is Greeting and self.compact_greeting:
            raw = greeting._raw  # pylint: disable=protected-access
            if isinstance(raw, Message) and raw.decoded_from is not None:
                self.greeting = Greeting._checked(raw.clone())

    # ------------------------------------------------------------------
    # Bytes in: bottom half
    # ------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """
        Add what the socket delivered, in any split; ``b''`` is the end
        of the stream.
        """
        self.codec.feed(data)

    def connection_lost(self, error: BaseException) -> SessionEnded:
        """The socket failed (reading it, say): the session is over."""
        return self._end(error)

    def close(self) -> None:
        """The client ends the session itself: nothing is logged."""
        if self.phase is not Phase.ENDED:
            self.phase = Phase.ENDED
            self.end_reason = EOFError("the connection was closed")

    def next_message(self) -> Union[Message, 'ReplyFailed[W]',
                                    SessionEnded, None]:
        """
        Decode the next message, not routed yet (see `route`).

        :return: The `Message`; a `ReplyFailed` for a reply over the size
            limit whose command waits; `SessionEnded` once the stream is
            over or broken (again on every later call); `None` until more
            bytes arrive.
        """
        codec = self.codec
        while True:
            try:
                return codec.next_message()
            except MessageTooLongError as err:
                if not err.has_reply_id:
                    return self._end(err)
                failed = self._reply_too_long(err)
                if failed is not None:
                    return failed
            except (ProtocolError, EOFError) as err:
                return self._end(err)

    def next_event(self) -> Union[SessionEvent[W], None]:
        """
        Decode and route the next message that means something.

        :return: As `route`, and `next_message` for the stream; `None`
            once the bytes received so far are used up.
        """
        while True:
            item = self.next_message()
            if type(item) is not Message:
                return item
            event = self.route(item)
            if event is not None:
                return event

    def route(self, msg: Message) -> Union[SessionEvent[W], None]:
        """
        Say what a received message means.

        :return: `Reply` for the command it answers; the `Message` itself
            for a QMP event; the `Greeting`; `Negotiated`; `SessionEnded`
            (an id-less error, a failed handshake); `None` for a message
            that was logged and dropped.
        """
        if self.phase is not Phase.ESTABLISHED:
            return self._handshake(msg)
        exec_id = msg.get('id', _ABSENT)
        if exec_id is not _ABSENT:
            key = reply_key(exec_id)
            waiter = self._by_key.pop(key, _ABSENT)
            if waiter is not _ABSENT:
                return Reply(waiter, msg)  # type: ignore[arg-type]
            if self._was_abandoned(key):
                self.logger.debug("Dropping the late reply to id %r, whose "
                                  "caller stopped waiting", exec_id)
            else:
                self.logger.warning("Dropping reply with unknown id %r",
                                    exec_id)
            return None
        if 'event' in msg:
            return self._event(msg)
        return self._idless_message(msg)

    def _idless_message(self, msg: Message) -> Union[SessionEvent[W], None]:
        if self._idless:
            waiter = self._idless.pop(0)
            if waiter is not None:
                return Reply(waiter, msg)
            self.logger.debug("Dropping the late reply to an id-less "
                              "command whose caller stopped waiting")
            return None
        if 'error' in msg:
            if self.resyncing:
                # The agent answers our 0xFF, or a command cut short by
                # it, with an id-less parse error.
                self.logger.debug("Ignoring while resynchronising: %s", msg)
                return None
            # The server could not parse something we sent; which command
            # failed is unknown, so no reply can be trusted any more.
            return self._end(ServerParseError(
                "The server sent an error without an id: it could not "
                "parse a command, and which one is unknown", msg))
        self.logger.warning("Dropping unexpected message: %s", msg)
        return None

    def _handshake(self, msg: Message) -> Union[SessionEvent[W], None]:
        phase = self.phase
        if phase is Phase.GREETING:
            try:
                greeting = read_greeting(msg)
            except GreetingError as err:
                return self._end(err)
            self.greeted(greeting)
            return greeting
        if phase is Phase.NEGOTIATING:
            if 'event' in msg:
                return self._event(msg)
            sent = self._negotiation
            if sent is None:
                return self._end(NegotiationError(
                    "Negotiation failed", ProtocolError(
                        "the server sent a reply before qmp_capabilities")))
            try:
                reply_value(msg, sent)
            except (ProtocolError, ExecuteError) as err:
                return self._end(NegotiationError("Negotiation failed", err))
            self._established()
            return _NEGOTIATED
        return None  # ENDED: nothing counts any more

    def _was_abandoned(self, key: Hashable) -> bool:
        """Whether ``key``'s caller stopped waiting (forgets it)."""
        abandoned = self._abandoned
        return abandoned is not None and abandoned.pop(key, False) is None

    def _event(self, msg: Message) -> Optional[Message]:
        # An event, while negotiating or running: delivered if named.
        if type(msg['event']) is str:
            return msg
        self.logger.warning("Dropping event without a name: %s", msg)
        return None

    def _reply_too_long(self, err: MessageTooLongError
                        ) -> Optional['ReplyFailed[W]']:
        """A reply over the size limit: only its command fails."""
        key = reply_key(err.reply_id)
        waiter = self._by_key.pop(key, _ABSENT)
        if waiter is not _ABSENT:
            self.logger.warning("A reply over the size limit failed its "
                                "command (id %r): %s", err.reply_id, err)
            return ReplyFailed(waiter, err)  # type: ignore[arg-type]
        if self._was_abandoned(key):
            self.logger.debug("Dropping the over-long late reply to id "
                              "%r, whose caller stopped waiting",
                              err.reply_id)
        else:
            self.logger.warning("Dropping an over-long reply with unknown "
                                "id %r", err.reply_id)
        return None

    def _end(self, reason: BaseException) -> SessionEnded:
        """
        The session is over: log why, once.

        In the handshake, a protocol error is the greeting's or the
        negotiation's failure, and says so.
        """
        if self.phase is not Phase.ENDED:
            if type(reason) is DeserializationError:
                reason = not_qmp(reason)
            if isinstance(reason, ProtocolError) and \
                    not isinstance(reason, (GreetingError, NegotiationError)):
                if self.phase is Phase.GREETING:
                    reason = GreetingError("Did not understand Greeting",
                                           reason)
                elif self.phase is Phase.NEGOTIATING:
                    reason = NegotiationError("Negotiation failed", reason)
            self.phase = Phase.ENDED
            self.end_reason = reason
            if isinstance(reason, EOFError) \
                    and not isinstance(reason, ProtocolError):
                self.logger.info("The server closed the connection.")
            else:
                self.logger.error("The session ended: %s",
                                  exception_summary(reason))
        assert self.end_reason is not None
        return SessionEnded(self.end_reason)
