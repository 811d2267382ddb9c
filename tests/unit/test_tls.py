"""TLS over TCP, with a self-signed certificate made for the test."""

import asyncio
import ssl
import subprocess

import pytest

from qemu.qmp import ConnectError, QMPClient, Runstate
from qemu.qmp.testing import QMPTestServer
from tests.helpers import assert_no_tasks_left, free_port, require_binary


@pytest.fixture(scope='module')
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1: (cert path, key path)."""
    openssl = require_binary('openssl')
    tmp = tmp_path_factory.mktemp('tls')
    cert, key = tmp / 'cert.pem', tmp / 'key.pem'
    subprocess.run(
        [openssl, 'req', '-x509', '-newkey', 'rsa:2048', '-nodes',
         '-keyout', str(key), '-out', str(cert), '-days', '1',
         '-subj', '/CN=qemu-qmp-test', '-addext',
         'subjectAltName=IP:127.0.0.1'],
        check=True, capture_output=True)
    return str(cert), str(key)


def contexts(certificate):
    cert, key = certificate
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=cert)
    return server, client


async def test_tls_session(certificate):
    """A whole session over TLS: execute, events, disconnect."""
    server_ctx, client_ctx = contexts(certificate)
    async with QMPTestServer() as server:
        server.on('query-status', {'status': 'running'})
        address = await server.start(('127.0.0.1', 0), ssl=server_ctx)
        qmp = QMPClient('tls')
        await qmp.connect(address, ssl=client_ctx)
        assert await qmp.execute('query-status') == {'status': 'running'}
        await server.emit_event('STOP')
        assert (await qmp.events.get())['event'] == 'STOP'
        with pytest.raises(Exception, match='TLS|UNIX'):
            qmp.send_fd_scm(0)
        await asyncio.wait_for(qmp.disconnect(), 10)


async def test_tls_untrusted_certificate(certificate):
    """A certificate the client does not trust fails connect() clearly."""
    server_ctx, _ = contexts(certificate)
    async with QMPTestServer() as server:
        address = await server.start(('127.0.0.1', 0), ssl=server_ctx)
        qmp = QMPClient()
        with pytest.raises(ConnectError) as info:
            await qmp.connect(address, ssl=ssl.create_default_context())
        assert isinstance(info.value.exc, ssl.SSLCertVerificationError)


async def test_tls_listening_client(certificate, tmp_path):
    """start_server() with TLS: the server dials in over TLS."""
    server_ctx, client_ctx = contexts(certificate)
    async with QMPTestServer() as server:
        server.on('query-status', {'status': 'running'})
        qmp = QMPClient('tls-listen')
        port = free_port()
        await qmp.start_server(('127.0.0.1', port), ssl=server_ctx)
        # The handshake needs both sides at once.
        accepting = asyncio.create_task(qmp.accept())
        await server.connect_to(('127.0.0.1', port), ssl=client_ctx)
        await accepting
        assert await qmp.execute('query-status') == {'status': 'running'}
        await asyncio.wait_for(qmp.disconnect(), 10)


async def test_tls_disconnect_from_a_silent_peer(certificate):
    """disconnect() returns promptly when the peer stopped reading and so
    never answers TLS's close_notify (asyncio alone waits 30 s): the
    transport is aborted after a short grace, and nothing is left over."""
    server_ctx, client_ctx = contexts(certificate)
    async with QMPTestServer() as server:
        server.on('query-status', {'status': 'running'})
        address = await server.start(('127.0.0.1', 0), ssl=server_ctx)
        qmp = QMPClient('tls')
        await qmp.connect(address, ssl=client_ctx)
        assert await qmp.execute('query-status')
        server.pause_reading()
        await asyncio.wait_for(qmp.disconnect(), 10)
        assert qmp.runstate is Runstate.IDLE
    assert_no_tasks_left()
