"""QMPClient against a real qemu-storage-daemon."""

import pytest

from qemu.qmp import ExecuteError, QMPClient

pytestmark = pytest.mark.integration


async def test_blockdev_add_null_co(storage_daemon):
    """Greeting, negotiation, and adding and listing a null-co node."""
    qmp = QMPClient('qsd')
    await qmp.connect(storage_daemon.address)
    assert qmp.greeting.QMP.version['qemu']['major'] >= 7
    await qmp.execute('blockdev-add', {'driver': 'null-co',
                                       'node-name': 'null0',
                                       'size': 1048576})
    nodes = await qmp.execute('query-named-block-nodes')
    assert 'null0' in [node['node-name'] for node in nodes]
    with pytest.raises(ExecuteError) as info:
        await qmp.execute('blockdev-add', {'driver': 'null-co',
                                           'node-name': 'null0'})
    assert 'null0' in str(info.value)
    await qmp.execute('blockdev-del', {'node-name': 'null0'})
    await qmp.disconnect()
