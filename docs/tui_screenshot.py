"""
Draw docs/_static/qmp-tui.svg: qmp-tui, headless, in a short session
with the library's demo server (so no QEMU is needed, and every run shows
the same session).  ``make tui-screenshot`` runs it.

    python docs/tui_screenshot.py [OUTPUT.svg]
"""

import asyncio
import os
import sys

from qemu.qmp.qmp_tui import QMPTUI
from qemu.qmp.testing import demo_server

HERE = os.path.dirname(os.path.abspath(__file__))
OUTPUT = os.path.join(HERE, '_static', 'qmp-tui.svg')
SIZE = (96, 28)


async def draw(output: str) -> None:
    """Play the session and save what the terminal shows."""
    async with demo_server() as server:
        address = await server.start()
        app = QMPTUI(address)
        async with app.run_test(size=SIZE) as pilot:
            await asyncio.wait_for(app.wait_until(
                lambda: app.connection_state == 'connected'
                and bool(app.commands)), 30)
            for line in ('query-status', 'stop'):
                await pilot.press(*line, 'enter')
            await asyncio.wait_for(app.wait_until(
                lambda: app.vm_state == 'paused'), 30)
            await pilot.press(*'query-', 'tab')
            await pilot.pause()
            svg = app.export_screenshot(title='qmp-tui')
    with open(output, 'w', encoding='utf-8') as out:
        out.write(svg)


def main() -> None:
    """Write the screenshot where the first argument says (or to
    docs/_static/qmp-tui.svg)."""
    output = sys.argv[1] if len(sys.argv) > 1 else OUTPUT
    asyncio.run(draw(output))
    print(f"wrote {output}")


if __name__ == '__main__':
    main()
