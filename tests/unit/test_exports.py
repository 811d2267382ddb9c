"""The public names match the reference library's documented API."""

import inspect
from pathlib import Path

import qemu.qmp
from qemu.qmp import events, message, models, protocol, qmp_client, util
from tests import api_names


REFERENCE_API = Path(__file__).parent.parent / 'reference_api.txt'


def test_every_reference_name_exists_with_its_parameters():
    """Every public name of the reference library (tests/reference_api.txt,
    made by `make reference-api`) exists here, and every callable starts
    with the reference's parameters, in order (ours may add optional ones
    after them)."""
    reference = api_names.parse(REFERENCE_API.read_text().splitlines())
    assert len(reference) > 200  # the whole list, not a stub
    ours = api_names.api()
    missing = sorted(set(reference) - set(ours))
    assert not missing, f"missing names: {missing}"
    different = [
        f"{name}: reference {params}, ours {ours[name]}"
        for name, params in reference.items()
        if params is not None
        and (ours[name] is None or ours[name][:len(params)] != params)]
    assert not different, "different parameters:\n" + '\n'.join(different)


def test_package_all():
    """qemu.qmp exports the reference's names, session(), and the errors
    a caller of execute(), expect() or a session meets."""
    assert set(qemu.qmp.__all__) == {
        'QMPClient', 'Message', 'EventListener', 'Runstate', 'QMPError',
        'StateError', 'ConnectError', 'ExecuteError', 'ExecInterruptedError',
        'SocketAddrT', 'session', 'ExecuteTimeoutError', 'EventTimeoutError',
        'EventLoopError'}
    for name in qemu.qmp.__all__:
        assert hasattr(qemu.qmp, name)


def test_module_names():
    """Each module defines the documented names."""
    expected = {
        message: ['Message', 'DeserializationError', 'UnexpectedTypeError'],
        models: ['Model', 'Greeting', 'QMPGreeting', 'ErrorResponse',
                 'ErrorInfo'],
        protocol: ['Runstate', 'ConnectError', 'StateError', 'require',
                   'AsyncProtocol'],
        qmp_client: ['QMPClient', 'ExecuteError', 'ExecInterruptedError',
                     'GreetingError', 'NegotiationError',
                     'ServerParseError', 'BadReplyError'],
        events: ['EventListener', 'Events', 'ListenerError'],
        util: ['exception_summary', 'pretty_traceback', 'upper_half',
               'bottom_half', 'flush', 'create_task', 'is_closing',
               'wait_closed', 'asyncio_run'],
    }
    for module, names in expected.items():
        for name in names:
            assert hasattr(module, name), f"{module.__name__}.{name}"


def test_signatures():
    """Key signatures match the reference."""
    def params(func):
        return list(inspect.signature(func).parameters)
    assert params(qmp_client.QMPClient) == ['name', 'readbuflen']
    assert params(qmp_client.QMPClient.execute) == [
        'self', 'cmd', 'arguments', 'oob', 'timeout']
    assert params(qmp_client.QMPClient.make_execute_msg) == [
        'cmd', 'arguments', 'oob']
    assert params(protocol.AsyncProtocol.connect) == [
        'self', 'address', 'ssl', 'retry']
    assert params(events.EventListener)[:2] == ['names', 'event_filter']
    assert params(events.Events.listener) == [
        'self', 'names', 'event_filter']
    assert params(message.Message) == ['value', 'eager']


def test_hooks_exist():
    """The subclass hooks keep their names."""
    for hook in ['_do_recv', '_do_send', '_recv', '_send', '_readline',
                 '_on_message', '_cb_inbound', '_cb_outbound',
                 '_establish_session', '_do_connect', '_do_accept',
                 '_do_start_server', '_set_state', '_schedule_disconnect',
                 '_wait_disconnect', '_bh_disconnect', '_bh_loop_forever',
                 '_bh_send_message', '_bh_recv_message', '_session_guard']:
        assert callable(getattr(protocol.AsyncProtocol, hook)), hook
