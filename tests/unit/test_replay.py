"""Recording sessions to transcripts, and replaying them."""

import asyncio
import io
import json

import pytest

from qemu.qmp import ExecInterruptedError, ExecuteError, QMPClient, Runstate
from qemu.qmp.legacy import QEMUMonitorProtocol
from qemu.qmp.replay import Replay, ReplayError
from qemu.qmp.testing import QMPTestServer, QUIT, ServerThread

from tests.helpers import wait_for_state
from qemu.qmp.transcript import (
    CLOSED,
    MASKED,
    Recorder,
    Transcript,
    TranscriptError,
    mask_secrets,
)


async def backup_script(qmp):
    """A script written only against the public API: what it saw."""
    seen = [await qmp.execute('query-status')]
    async with qmp.expect('BLOCK_JOB_COMPLETED'):
        seen.append(await qmp.execute('blockdev-backup', {
            'device': 'drive0', 'target': 'backup0', 'sync': 'full',
            'job-id': 'job0'}))
    seen.append(qmp.events.history[-1]['data'])
    try:
        await qmp.execute('blockdev-del', {'node-name': 'missing'})
    except ExecuteError as err:
        seen.append(err.error_class)
    return seen


def backup_server():
    """Plays the QEMU the transcript is recorded against: blockdev-backup
    sends an event before its reply and another after it."""
    server = QMPTestServer()
    server.on('query-status', {'status': 'running', 'running': True})
    later = []

    async def backup(args):
        await server.emit_event('JOB_STATUS_CHANGE',
                                {'id': 'job0', 'status': 'created'})
        # Sent once the reply is out, as QEMU's job completes later.
        later.append(asyncio.ensure_future(server.emit_event(
            'BLOCK_JOB_COMPLETED', {'device': 'job0', 'len': 1024,
                                    'offset': 1024, 'speed': 0,
                                    'type': 'backup'})))
        return {}
    server.on('blockdev-backup', backup)
    return server


async def record(path, script=backup_script, server=None):
    """Run ``script`` against ``server``, recording to ``path``."""
    async with server or backup_server() as server:
        address = await server.start()
        qmp = QMPClient('recorded')
        with Recorder(path) as qmp.recorder:
            await qmp.connect(address)
            seen = await script(qmp)
            try:
                await qmp.disconnect()
            except EOFError:
                pass  # the script ended the session (quit)
    return seen


async def replay_script(path, script=backup_script, **options):
    server = QMPTestServer()
    replay = server.replay(path, **options)
    async with server:
        qmp = QMPClient('replayed')
        await qmp.connect(await server.start())
        try:
            seen = await script(qmp)
        finally:
            await qmp.disconnect()
    return seen, replay


async def test_record_then_replay_gives_the_same_answers(tmp_path):
    """A session recorded against a server replays without it: the same
    replies, errors and events, in the same order."""
    path = tmp_path / 'backup.jsonl'
    recorded = await record(path)
    replayed, replay = await replay_script(path)
    assert replayed == recorded
    replay.check()
    assert replay.unplayed == []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]['qmp-transcript'] == 1
    assert lines[1]['from'] == 'server' and 'QMP' in lines[1]['msg']
    assert lines[2]['msg']['execute'] == 'qmp_capabilities'
    assert all(line['t'] >= 0 for line in lines[1:])


async def test_changed_argument_fails_with_a_diff(tmp_path):
    """A command whose argument differs gets an error naming the command
    and the argument; check() fails the test with the same text."""
    path = tmp_path / 'backup.jsonl'
    await record(path)

    async def changed(qmp):
        await qmp.execute('query-status')
        await qmp.execute('blockdev-backup', {
            'device': 'drive0', 'target': 'backup0', 'sync': 'top',
            'job-id': 'job0'})
    with pytest.raises(ExecuteError) as info:
        await replay_script(path, changed)
    assert "'blockdev-backup' does not match" in info.value.error.error.desc
    assert 'arguments.sync: recorded "full", received "top"' \
        in info.value.error.error.desc
    server = QMPTestServer()
    replay = server.replay(path)
    replay.answer({'execute': 'blockdev-backup', 'arguments': {
        'device': 'drive0', 'target': 'backup0', 'sync': 'top',
        'job-id': 'job0'}})
    replay.mismatched(replay.answer({'execute': 'blockdev-backup',
                                     'arguments': {'sync': 'top'}}))
    with pytest.raises(ReplayError) as failure:
        replay.check()
    text = str(failure.value)
    assert 'backup.jsonl:' in text
    assert 'arguments.device: recorded "drive0", missing' in text
    assert '--- recorded' in text and '+++ received' in text


async def test_unrecorded_command_answered_by_a_handler(tmp_path):
    """A command the transcript lacks is answered by the test's handler;
    without one, it is a mismatch."""
    path = tmp_path / 'backup.jsonl'
    await record(path)

    async def extra(qmp):
        return await qmp.execute('query-version')
    server = QMPTestServer()
    replay = server.replay(path)
    server.on('query-version', {'qemu': {'major': 9}})
    async with server:
        qmp = QMPClient()
        await qmp.connect(await server.start())
        assert await extra(qmp) == {'qemu': {'major': 9}}
        await qmp.disconnect()
    replay.check()
    with pytest.raises(ExecuteError, match="'query-version' is not in the "
                       "transcript"):
        await replay_script(path, extra)


async def test_ordered_replay_requires_the_recorded_order(tmp_path):
    """With ordered=True, the next recorded command is the only match."""
    path = tmp_path / 'backup.jsonl'
    await record(path)

    async def out_of_order(qmp):
        await qmp.execute('blockdev-backup', {
            'device': 'drive0', 'target': 'backup0', 'sync': 'full',
            'job-id': 'job0'})
    seen, replay = await replay_script(path, out_of_order)  # any order
    with pytest.raises(ExecuteError, match="does not match the next "
                       "command"):
        await replay_script(path, out_of_order, ordered=True)


def test_blocking_client_replays_the_same_answers(tmp_path):
    """The blocking client gets the recorded replies and events too."""
    path = tmp_path / 'status.jsonl'

    async def script(qmp):
        return [await qmp.execute('query-status')]
    recorded = asyncio.run(record(path, script))
    server = QMPTestServer()
    replay = server.replay(path)
    with ServerThread(server) as thread:
        with QEMUMonitorProtocol(thread.address) as qmp:
            qmp.connect()
            assert [qmp.cmd('query-status')] == recorded
    replay.check()


async def test_quit_is_replayed_with_its_hang_up(tmp_path):
    """A recorded quit gets its reply, SHUTDOWN, then the hang-up."""
    path = tmp_path / 'quit.jsonl'
    server = QMPTestServer()
    server.on('quit', QUIT)

    async def quits(qmp):
        async with qmp.expect('SHUTDOWN'):
            await qmp.execute('quit')
        return qmp.events.history[-1]['data']
    shutdown = await record(path, quits, server)
    server = QMPTestServer()
    replay = server.replay(path)
    async with server:
        qmp = QMPClient()
        await qmp.connect(await server.start())
        assert await quits(qmp) == shutdown
        # The hang-up comes after SHUTDOWN: wait until the client saw it.
        await wait_for_state(qmp, Runstate.DISCONNECTING)
        with pytest.raises(EOFError):
            await qmp.disconnect()
    replay.check()


def test_secrets_are_masked_unless_asked_for():
    """object-add secret data and passwords are recorded masked; a masked
    value matches any value on replay."""
    command = {'execute': 'object-add', 'arguments': {
        'qom-type': 'secret', 'id': 'sec0', 'data': 'letmein'}}
    password = {'execute': 'set_password', 'arguments': {
        'protocol': 'vnc', 'password': 'hunter2'}}
    out = io.StringIO()
    recorder = Recorder(out)
    recorder.record('client', command)
    recorder.record('client', password)
    recorder.record('server', {'return': {}})
    Recorder(out, secrets=True).record('client', password)
    text = out.getvalue()
    assert 'letmein' not in text.splitlines()[1]
    assert 'hunter2' not in text.splitlines()[2]
    assert 'hunter2' in text.splitlines()[-1]
    assert mask_secrets(password)['arguments']['password'] == MASKED
    assert mask_secrets({'execute': 'stop'}) == {'execute': 'stop'}

    header = out.getvalue().split('\n', 1)[0]
    sent = {'t': 0, 'from': 'client', 'msg': {**password, 'id': 1}}
    reply = {'t': 0, 'from': 'server', 'msg': {'return': {}, 'id': 1}}
    transcript = Transcript.parse(
        '\n'.join([header, json.dumps(sent), json.dumps(reply)]))
    replay = Replay(transcript)
    assert replay.answer({**password, 'id': 'x'}) == [{'return': {},
                                                       'id': 'x'}]


@pytest.mark.parametrize('text, reason', [
    ('', 'empty'),
    ('{"qmp-transcript": 99}', 'not a QMP transcript'),
    ('{"qmp-transcript": 1}\nnot json', 'not JSON'),
    ('{"qmp-transcript": 1}\n[1]', 'not a JSON object'),
    ('{"qmp-transcript": 1}\n{"from": "nobody", "msg": {}}',
     'needs "from"'),
])
def test_bad_transcript_names_file_and_line(text, reason):
    """A file that is not a transcript raises TranscriptError with where
    and why."""
    with pytest.raises(TranscriptError, match=reason) as info:
        Transcript.parse(text, 'bad.jsonl')
    assert info.value.where.startswith('bad.jsonl:')


def test_guest_agent_transcript_has_no_greeting():
    """A transcript that starts with the client (the guest agent) gives
    a server that does not greet."""
    transcript = Transcript.parse(
        '{"qmp-transcript": 1}\n'
        '{"t": 0, "from": "client", "msg": {"execute": "guest-ping"}}\n'
        '{"t": 0, "from": "server", "msg": {"return": {}}}\n')
    assert transcript.greeting is None
    server = QMPTestServer()
    server.replay(transcript)
    assert server.greeting is None
    [exchange] = transcript.exchanges()
    assert exchange.name == 'guest-ping'
    assert exchange.answer == [{'return': {}}]


def test_shell_records_its_session(tmp_path, capsys):
    """qmp-shell --record writes a transcript that replays the session,
    with secrets masked."""
    from qemu.qmp._shell_cli import qmp_shell
    path = tmp_path / 'shell.jsonl'
    server = QMPTestServer()
    server.on('query-status', {'status': 'running', 'running': True})
    server.on('set_password', {})
    with ServerThread(server) as thread:
        status = qmp_shell(['--record', str(path), '-c', 'query-status',
                            '-c', 'set_password protocol=vnc '
                            'password=hunter2', thread.address])
    assert status == 0
    text = path.read_text()
    assert 'hunter2' not in text and MASKED in text
    server = QMPTestServer()
    replay = server.replay(path, ordered=True)
    with ServerThread(server) as thread:
        with QEMUMonitorProtocol(thread.address) as qmp:
            qmp.connect()
            assert qmp.cmd('query-status') == {'status': 'running',
                                               'running': True}
            assert qmp.cmd('set_password', protocol='vnc',
                           password='another') == {}
    replay.check()


def test_shell_record_to_a_bad_path(tmp_path, capsys):
    """A file that cannot be written is an error before connecting."""
    from qemu.qmp._shell_cli import qmp_shell
    with pytest.raises(SystemExit) as info:
        qmp_shell(['--record', str(tmp_path / 'no' / 'such.jsonl'),
                   '-c', 'query-status', str(tmp_path / 'qmp.sock')])
    assert info.value.code != 0
    assert 'cannot record to' in capsys.readouterr().err


async def test_recording_proxy_between_any_client_and_qemu(tmp_path):
    """qmp-record passes a raw client's bytes on unchanged (a message
    split across writes) and writes the session's transcript, which
    replays."""
    from qemu.qmp.qmp_record import serve, session_path
    listen, output = str(tmp_path / 'listen.sock'), str(tmp_path / 's.jsonl')
    async with QMPTestServer() as qemu:
        qemu.on('query-status', {'status': 'running', 'running': True})
        ready = asyncio.Event()
        proxy = asyncio.create_task(serve(await qemu.start(), listen, output,
                                          once=True, ready=ready))
        await ready.wait()
        reader, writer = await asyncio.open_unix_connection(listen)
        greeting = json.loads(await reader.readline())
        # (The test server reads lines; QEMU would not need them.)
        writer.write(b'{"execute":"qmp_capabilities"}\n'
                     b'{"execute":"query-status","id":1}\n{"exec')
        writer.write(b'ute":"query-status","id":2}\n')
        replies = [json.loads(await reader.readline()) for _ in range(3)]
        writer.close()
        await writer.wait_closed()
        assert await proxy == 1
    assert 'QMP' in greeting
    assert replies[0] == {'return': {}}
    assert replies[2]['id'] == 2
    transcript = Transcript.load(output)
    senders = [entry.sender for entry in transcript.entries
               if entry.msg is not CLOSED]
    assert senders[0] == 'server' and 'QMP' in transcript.entries[0].msg
    assert sorted(senders) == ['client'] * 3 + ['server'] * 4
    # The client hung up, then the server followed.
    assert [(entry.sender, entry.msg) for entry in transcript.entries[-2:]] \
        == [('client', CLOSED), ('server', CLOSED)]
    assert len(transcript.exchanges()) == 2
    assert session_path(output, 3).endswith('s-3.jsonl')

    seen, replay = await replay_script(
        output, lambda qmp: qmp.execute('query-status'))
    assert seen == {'status': 'running', 'running': True}
    replay.check()


def test_recording_proxy_command_line(tmp_path, capsys):
    """qmp-record's usage errors and a QEMU socket that is not there."""
    from qemu.qmp.qmp_record import main
    with pytest.raises(SystemExit):
        main([])
    assert 'QEMU_SOCKET' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(['localhost:notaport', str(tmp_path / 'l.sock')])


def test_stream_recorder_takes_messages_however_split():
    """Messages with no newline between them, split anywhere (inside a
    UTF-8 character too), after the guest agent's 0xFF, are recorded
    once each."""
    from qemu.qmp.qmp_record import StreamRecorder
    out = io.StringIO()
    data = (b'\xff{"execute":"a"}{"execute":"b","arguments":'
            + '{"s":"\u00e9t\u00e9"}}'.encode('utf-8')
            + b'  {"execute":"c"}')
    for cut in range(len(data)):
        out.seek(0)
        out.truncate()
        stream = StreamRecorder(Recorder(out), 'client')
        stream.feed(data[:cut])
        stream.feed(data[cut:])
        names = [json.loads(line)['msg']['execute']
                 for line in out.getvalue().splitlines()[1:]]
        assert names == ['a', 'b', 'c'], cut


def transcript_of(*lines):
    return Transcript.parse('\n'.join(
        [json.dumps({'qmp-transcript': 1})]
        + [json.dumps(line) for line in lines]))


GREETING = {'t': 0, 'from': 'server', 'msg': {'QMP': {
    'version': {}, 'capabilities': []}}}


def test_repeat_answers_a_poll_again():
    """repeat=True: a command that comes more often than recorded gets
    its last reply again, without the events; otherwise a mismatch."""
    transcript = transcript_of(
        GREETING,
        {'from': 'client', 'msg': {'execute': 'query-jobs', 'id': 1}},
        {'from': 'server', 'msg': {'return': ['first'], 'id': 1}},
        {'from': 'server', 'msg': {'event': 'JOB', 'data': {}}},
        {'from': 'client', 'msg': {'execute': 'query-jobs', 'id': 2}},
        {'from': 'server', 'msg': {'return': ['second'], 'id': 2}})
    replay = Replay(transcript, repeat=True)
    poll = {'execute': 'query-jobs', 'id': 'x'}
    assert replay.answer(poll) == [{'return': ['first'], 'id': 'x'},
                                   {'event': 'JOB', 'data': {}}]
    assert replay.answer(poll) == [{'return': ['second'], 'id': 'x'}]
    assert replay.answer(poll) == [{'return': ['second'], 'id': 'x'}]
    strict = Replay(transcript)
    strict.answer(poll)
    strict.answer(poll)
    assert not isinstance(strict.answer(poll), list)


def test_guest_sync_is_answered_with_the_id_sent():
    """guest-sync-delimited carries a fresh id each time: it matches by
    name, and the reply is the id received, as the agent's is."""
    transcript = transcript_of(
        {'from': 'client', 'msg': {'execute': 'guest-sync-delimited',
                                   'arguments': {'id': 1234}}},
        {'from': 'server', 'msg': {'return': 1234}})
    replay = Replay(transcript)
    assert replay.answer({'execute': 'guest-sync-delimited',
                          'arguments': {'id': 98765}}) == [{'return': 98765}]


async def test_server_that_closed_closes_again():
    """A transcript where the server closed the connection (QEMU quit,
    seen by a client that only listens) replays the hang-up."""
    transcript = transcript_of(
        GREETING,
        {'from': 'client', 'msg': {'execute': 'qmp_capabilities'}},
        {'from': 'server', 'msg': {'return': {}}},
        {'from': 'server', 'msg': {'event': 'SHUTDOWN', 'data': {}}},
        {'from': 'server', 'closed': True})
    server = QMPTestServer()
    replay = server.replay(transcript)
    async with server:
        qmp = QMPClient()
        await qmp.connect(await server.start())
        # (session_events() ends with the session, as the server closes.)
        events = [event['event'] async for event in qmp.session_events()]
        assert events == ['SHUTDOWN']
        await qmp.disconnect()
    replay.check()


async def test_client_that_sends_no_newlines_is_served_and_replayed(
        tmp_path):
    """A client that writes several commands at once with no newline
    between them (as the reference library does) is served, recorded
    through qmp-record, and replayed, as QEMU would serve it."""
    from qemu.qmp.qmp_record import serve

    async def raw_client(address):
        reader, writer = await asyncio.open_unix_connection(address)
        await reader.readline()  # the greeting
        writer.write(b'{"execute":"qmp_capabilities"}{"execute":"stop",'
                     b'"id":1}{"execute":"query-status","id":2}')
        replies = [json.loads(await reader.readline()) for _ in range(4)]
        writer.close()
        await writer.wait_closed()
        return replies

    listen, output = str(tmp_path / 'listen.sock'), str(tmp_path / 'r.jsonl')
    async with QMPTestServer() as qemu:
        async def stop(args):
            await qemu.emit_event('STOP')
            return {}
        qemu.on('stop', stop)
        qemu.on('query-status', {'status': 'paused', 'running': False})
        ready = asyncio.Event()
        proxy = asyncio.create_task(serve(await qemu.start(), listen, output,
                                          once=True, ready=ready))
        await ready.wait()
        recorded = await raw_client(listen)
        await proxy
    assert [reply.get('event', reply.get('id')) for reply in recorded] \
        == [None, 'STOP', 1, 2]
    server = QMPTestServer()
    replay = server.replay(output)
    [stop_exchange, _] = replay.unplayed
    assert [msg.get('event') for msg in stop_exchange.answer] == ['STOP',
                                                                  None]
    async with server:
        assert await raw_client(await server.start()) == recorded
    replay.check(complete=True)


def test_complete_check_names_what_never_came():
    """check(complete=True) fails for recorded commands that never came."""
    transcript = transcript_of(
        GREETING,
        {'from': 'client', 'msg': {'execute': 'stop', 'id': 1}},
        {'from': 'server', 'msg': {'return': {}, 'id': 1}})
    replay = Replay(transcript)
    replay.check()
    with pytest.raises(ReplayError, match=r"'stop' \(<transcript>:3\) was "
                       r"recorded, and never came"):
        replay.check(complete=True)


def test_transcript_cut_before_a_reply_answers_with_an_error():
    """A recording cut short (no reply to the last command) gives that
    command an error, not a client waiting forever, and fails check()."""
    transcript = transcript_of(
        GREETING, {'from': 'client', 'msg': {'execute': 'stop', 'id': 1}})
    replay = Replay(transcript)
    [reply] = replay.answer({'execute': 'stop', 'id': 'x'})
    assert reply['id'] == 'x' and 'no reply' in reply['error']['desc']
    with pytest.raises(ReplayError, match="holds no reply to 'stop'"):
        replay.check()


def test_transcript_without_messages_is_refused():
    """What a recording that never connected leaves: an error at load."""
    with pytest.raises(TranscriptError, match='no message was recorded'):
        Transcript.parse('{"qmp-transcript": 1, "recorded": "x"}\n')


@pytest.mark.parametrize('command', [
    {'execute': 'qom-set', 'arguments': {
        'path': '/objects/sec0', 'property': 'data', 'value': 'hunter2'}},
    {'execute': 'human-monitor-command', 'arguments': {
        'command-line': 'object_add secret,id=s1,data=hunter2'}},
    {'execute': 'change-vnc-password', 'arguments': {'password': 'hunter2'}},
])
def test_other_ways_of_passing_secrets_are_masked(command):
    assert 'hunter2' not in json.dumps(mask_secrets(command))


def test_blocking_client_records_quit_and_the_hang_up(tmp_path):
    """QEMUMonitorProtocol.recorder: the session, then the server's
    hang-up, which the replay repeats."""
    path = tmp_path / 'quit.jsonl'
    server = QMPTestServer()
    server.on('quit', QUIT)
    with ServerThread(server) as thread:
        with QEMUMonitorProtocol(thread.address) as qmp:
            with Recorder(path) as qmp.recorder:
                qmp.connect()
                assert qmp.cmd('quit') == {}
                assert qmp.pull_event(wait=5)['event'] == 'SHUTDOWN'
                with pytest.raises(ExecInterruptedError):
                    qmp.cmd('query-status')  # the server hung up
    # (query-status may have gone out before the hang-up was read.)
    closes = [entry.sender for entry in Transcript.load(path).entries
              if entry.msg is CLOSED]
    assert closes == ['server']
