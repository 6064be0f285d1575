"""`xenlab web` in a real browser (Debian's chromium, driven by Selenium
through chromium-driver): the demo lab's page shows every domain, a ping
makes its links' rates move, a port the bridge disables shows down, a vif
set down (`xenlab ip link`) and up is drawn so as it happens, and a
click on a port's capture button downloads a pcap of what crossed it.
Without aiohttp (the web extra), Selenium or chromium, it is skipped,
saying which is missing. The HTTP API's refusals are checked without a
browser."""
from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time

import pytest

from xenlab.lab.spec import demo_lab
from xenlab.net.capture import read_pcap
from xenlab.proto import agent_pb2, bridge_pb2

pytestmark = pytest.mark.integration

aiohttp = pytest.importorskip("aiohttp", reason="the web extra is not installed: pip install 'xenlab[web]'")
from aiohttp import web  # noqa: E402

from xenlab.web.app import make_app  # noqa: E402

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
TOKEN = "test-token"


def demo_lab_quick():
    """The demo lab's domains, its counters every second, without a broker:
    the page follows the gRPC streams alone."""
    spec = demo_lab()
    return dataclasses.replace(spec, mqtt=dataclasses.replace(spec.mqtt, broker="none", interval=1.0))


async def serve(lab):
    runner = web.AppRunner(make_app(lab.rundir, TOKEN))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


def browser(downloads):
    selenium = pytest.importorskip("selenium", reason="Selenium is not installed (the test extra)")
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed "
                    "(./dev setup installs them, as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    del selenium
    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,900"):
        options.add_argument(arg)
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def wait_until(driver, script, timeout=30.0):
    """Poll a JavaScript expression until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return ({script});")
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for: {script}")
        time.sleep(0.2)


def row_attr(key: str, attr: str) -> str:
    return (f"(document.querySelector('#links tr[data-link=\"{key}\"]') || "
            f"{{getAttribute: () => null}}).getAttribute('{attr}')")


async def test_the_page_follows_the_demo_lab_live_and_captures_a_port(lab_factory, tmp_path):
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = await asyncio.to_thread(browser, downloads)
    lab = await lab_factory(demo_lab_quick())
    runner, url = await serve(lab)
    web_port, db_port, cache_port = (f"xenbr0:vif{lab.domid(n)}.0" for n in ("web", "db", "cache"))
    try:
        await asyncio.to_thread(driver.get, f"{url}/?token={TOKEN}")
        # Every domain, in the table and drawn, each running.
        states = await asyncio.to_thread(wait_until, driver, """
            (() => { const rows = [...document.querySelectorAll('#domains tr[data-domain]')];
                     const s = Object.fromEntries(rows.map(r => [r.dataset.domain, r.dataset.state]));
                     return ['web', 'db', 'cache'].every(n => s[n] === 'running') && s; })()""")
        assert set(states) == {"Domain-0", "web", "db", "cache"}
        drawn = await asyncio.to_thread(driver.execute_script, """
            return xenlab.cy.nodes('[kind = "domain"]').map(n => n.data('label')).sort();""")
        assert drawn == ["cache", "db", "web"]

        # A quiet lab: the links' rates are there and zero...
        await asyncio.to_thread(wait_until, driver, f"{row_attr(web_port, 'data-in-pps')} === '0'")
        # ...until web pings db: web's and db's links move, cache's does not.
        async with await lab.agent("web") as agent:
            ping = asyncio.ensure_future(agent.Ping(agent_pb2.PingRequest(
                dst="10.0.0.2", count=60, interval=0.05, timeout=10)))
            moved = await asyncio.to_thread(wait_until, driver, f"""
                Number({row_attr(web_port, 'data-in-pps')}) > 0 &&
                Number({row_attr(db_port, 'data-out-pps')}) > 0 &&
                [{row_attr(web_port, 'data-in-pps')}, {row_attr(cache_port, 'data-in-pps')}]""")
            assert float(moved[0]) > 0 and float(moved[1]) == 0
            label = await asyncio.to_thread(driver.execute_script, f"""
                return xenlab.cy.edges().filter(e => e.data('bridge') + ':' + e.data('port')
                                                     === '{web_port}').data('rateLabel');""")
            assert label.startswith("in ") and "/ out " in label and not label.startswith("in 0 bit/s")

            # A click on db's port captures there, while the ping goes on.
            await asyncio.to_thread(driver.execute_script,
                                    "document.getElementById('capture-seconds').value = '2';")
            button = await asyncio.to_thread(driver.find_element, "css selector",
                                             f'button[data-capture="{db_port}"]')
            await asyncio.to_thread(button.click)
            assert (await ping).received == 60

        pcap = downloads / f"{db_port.replace(':', '-')}.pcap"
        for _ in range(150):
            if pcap.exists() and not list(downloads.glob("*.crdownload")):
                break
            await asyncio.sleep(0.1)
        frames = read_pcap(pcap.read_bytes())
        assert frames, "the capture downloaded no frame"
        # ICMP (protocol 1) to and from db crossed its port.
        assert any(f[12:14] == b"\x08\x00" and f[23] == 1 for _, f in frames)

        # The bridge disables cache's port: the page shows it down, as it happens.
        async with await lab.bridge() as bridge:
            await bridge.SetPortFlags(bridge_pb2.SetPortFlagsRequest(
                bridge="xenbr0", port=cache_port.split(":")[1], state="disabled"))
        await asyncio.to_thread(wait_until, driver, f"""
            document.querySelector('#links tr[data-link="{cache_port}"]').className === 'down'""")

        # `xenlab ip link set vifD.0 down` in Domain-0: db's port and its ring
        # are drawn down, live; up, they are drawn up again.
        db_vif = db_port.split(":")[1]
        row_down = f"document.querySelector('#links tr[data-link=\"{db_port}\"]').className === 'down'"
        ring_down = f"xenlab.cy.getElementById('ring:{db_vif}').hasClass('down')"
        edge_down = f"""xenlab.cy.edges().filter(e => e.data('bridge') + ':' + e.data('port')
                                                  === '{db_port}').hasClass('down')"""
        async with await lab.agent("Domain-0") as dom0:
            await dom0.SetLink(agent_pb2.SetLinkRequest(interface=db_vif, up=False))
            await asyncio.to_thread(wait_until, driver, f"{row_down} && {ring_down} && {edge_down}")
            await dom0.SetLink(agent_pb2.SetLinkRequest(interface=db_vif, up=True))
            await asyncio.to_thread(wait_until, driver,
                                    f"!({row_down}) && !({ring_down}) && !({edge_down})")
    finally:
        await asyncio.to_thread(driver.quit)
        await runner.cleanup()


async def test_the_api_refuses_requests_without_the_token_and_bad_captures(lab_factory):
    lab = await lab_factory(demo_lab_quick())
    runner, url = await serve(lab)
    try:
        # unsafe: keep cookies of an IP address (127.0.0.1), as a browser does.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            for path in ("/", "/api/topology", "/api/fdb", "/api/events",
                         "/api/capture?bridge=xenbr0&port=vif1.0"):
                async with session.get(url + path) as reply:
                    assert reply.status == 401, path
                async with session.get(url + path + ("&" if "?" in path else "?") + "token=wrong") as reply:
                    assert reply.status == 401, path
            async with session.get(f"{url}/api/topology?token={TOKEN}") as reply:
                assert reply.status == 200
                assert reply.cookies["xenlab-web-token"]["httponly"]
            # The cookie it set is enough from then on.
            async with session.get(f"{url}/api/fdb") as reply:
                assert reply.status == 200
            for query, status in (("bridge=xenbr0", 400), ("bridge=xenbr0&port=vif1.0&seconds=0", 400),
                                  ("bridge=xenbr0&port=vif1.0&seconds=x", 400),
                                  ("bridge=xenbr0&port=nope&seconds=1", 404),
                                  ("bridge=nope&port=vif1.0&seconds=1", 404)):
                async with session.get(f"{url}/api/capture?{query}") as reply:
                    assert reply.status == status, (query, await reply.text())
    finally:
        await runner.cleanup()
