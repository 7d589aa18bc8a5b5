#!/usr/bin/env python3
"""Drives the web console of `minivmm serve` in a real headless Chromium (Playwright,
launched on Debian's /usr/bin/chromium; resources/web/setup-browser.sh installs both).
Run by tests/browser.rs, which starts `minivmm serve`, takes the CPU slot and computes
the deadlines; this script only talks to the page (and reads the API and /proc to tell
a slow guest from a stuck one).

Modes:
  flow   the page as a person uses it: no token -> a clear message; the token from the
         address; the create form (a refused value shows the server's message); one VM
         booted from the busybox image; its console (a command typed, its computed output
         read back from the terminal); pause, resume, stop, delete; cross-origin requests
         refused. Screenshots of each step.
  perf   8 running VMs in the list (tiny guests from --kernel: each prints a line and
         halts, so they run at no CPU cost), once their charts have 20 s of samples: the
         time of each list update (the page's performance.measure('vm-list-render')), the
         main thread's busy time, and that rows are updated in place rather than rebuilt;
         the manager's RSS next to the VMs'; then the same with a synthetic list whose
         charts are full of varying data.

Prints `drive: ...` progress lines and `perf: key=value ...` results; on failure one
`drive: FAIL: reason` line (plus context) and exit status 1.
"""

import argparse
import json
import os
import random
import statistics
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from playwright.sync_api import sync_playwright

MARKER = "minivmm-guest: init ready"
TINY_LINE = "tiny guest up"  # what tests/lib.rs's tiny_kernel() prints
CHROMIUM = os.environ.get("MINIVMM_CHROMIUM", "/usr/bin/chromium")
VIEWPORT = {"width": 1400, "height": 900}
# Run before the page's scripts: every WebSocket the page opens is kept in a list.
KEEP_SOCKETS = """
(() => {
  const Real = window.WebSocket;
  window.__minivmmSockets = [];
  window.WebSocket = class extends Real {
    constructor(...args) {
      super(...args);
      window.__minivmmSockets.push(this);
    }
  };
})();
"""


class Fail(Exception):
    """A check that did not hold: the message says which and what was seen."""


def say(*args):
    print("drive:", *args, flush=True)


class Api:
    """The REST API, straight from Python (for the test's own look-ups, not the page's)."""

    def __init__(self, base, token):
        self.base = base.rstrip("/")
        self.token = token

    def call(self, method, path, body=None, headers=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + "/api/v1" + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                raw = r.read()
                return r.status, (json.loads(raw) if raw else None)
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                return e.code, raw.decode(errors="replace")

    def text(self, path):
        """GET path as text (console.log): (status, str)."""
        req = urllib.request.Request(self.base + "/api/v1" + path)
        req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def vm(self, name):
        status, body = self.call("GET", f"/vms/{name}")
        return body if status == 200 else None


def proc_cpu_s(pid):
    """CPU seconds (user + system, all threads) of process `pid`, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
        return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def wait_until(what, cond, timeout, interval=0.2):
    """Polls cond() until it returns something true; Fail after `timeout` seconds."""
    end = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise Fail(f"{what}: not within {timeout:.0f} s")
        time.sleep(interval)


def shot(page, shots, name, element=None):
    if not shots:
        return
    path = os.path.join(shots, name)
    (element or page).screenshot(path=path)
    say(f"screenshot {path}")


def row(page, name):
    return page.locator(f'#vm-rows tr[data-name="{name}"]')


def state_of(page, name):
    r = row(page, name)
    if r.count() == 0:
        return None
    return r.locator(".state").text_content()


def wait_state(page, name, state, timeout):
    wait_until(f"VM {name} shown as {state} (shown: {state_of(page, name)})",
               lambda: state_of(page, name) == state, timeout)


def click_action(page, name, action):
    b = row(page, name).locator(f'button[data-action="{action}"]')
    if b.is_disabled():
        raise Fail(f"{action} button of {name} is disabled in state {state_of(page, name)}")
    b.click()


def enabled_actions(page, name):
    return page.eval_on_selector_all(
        f'#vm-rows tr[data-name="{name}"] button[data-action]',
        "bs => bs.filter(b => !b.disabled).map(b => b.dataset.action)")


def term_text(page):
    """The terminal's visible lines, as xterm.js renders them (its DOM renderer)."""
    return page.eval_on_selector_all(
        "#term .xterm-rows > div", "rows => rows.map(r => r.textContent).join('\\n')")


def new_browser(p):
    return p.chromium.launch(
        executable_path=CHROMIUM,
        # --no-sandbox: the tests run as root. No GPU on the test machines.
        args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
    )


def collect_console_errors(page, errors):
    """JavaScript errors of the page (not the HTTP errors the checks provoke on purpose,
    which Chromium logs as "Failed to load resource")."""
    page.on("console", lambda m: errors.append(m.text)
            if m.type == "error" and not m.text.startswith("Failed to load resource") else None)
    page.on("pageerror", lambda e: errors.append(f"uncaught: {e}"))


# --- flow ----------------------------------------------------------------------------


def check_no_token(browser, base, shots, step):
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.set_default_timeout(step * 1000)
    page = ctx.new_page()
    errors = []
    collect_console_errors(page, errors)
    resp = page.goto(base + "/")
    csp = resp.headers.get("content-security-policy", "")
    if "default-src 'self'" not in csp or "unsafe-inline" in csp.split("style-src")[0]:
        raise Fail(f"the page is served without the contract's CSP: {csp!r}")
    notice = page.locator("#no-token")
    notice.wait_for(state="visible", timeout=step * 1000)
    text = notice.text_content()
    if "No access token" not in text or "#token=" not in text:
        raise Fail(f"the no-token notice does not say what to do: {text!r}")
    if page.locator("#app").is_visible():
        raise Fail("the app is shown without a token")
    shot(page, shots, "no-token.png")
    # A wrong token: the API refuses it (401) and the page says so.
    page.goto(base + "/#token=" + "0" * 32)
    page.locator("#no-token .why").wait_for(state="attached", timeout=step * 1000)
    why = page.locator("#no-token .why").text_content()
    if "refused" not in why:
        raise Fail(f"a wrong token is not reported as refused: {why!r}")
    if page.evaluate("sessionStorage.getItem('minivmm-token')") is not None:
        raise Fail("a refused token stays in sessionStorage")
    ctx.close()
    if errors:
        raise Fail(f"errors in the page's console without a token: {errors}")
    say("ok: without a token the page says how to get one; a wrong one is refused")


def check_token_handling(page, base, step):
    if page.evaluate("location.hash") != "":
        raise Fail(f"the token stays in the address: {page.url}")
    if not page.evaluate("sessionStorage.getItem('minivmm-token')"):
        raise Fail("the token is not kept in sessionStorage")
    page.reload()
    page.locator("#app").wait_for(state="visible", timeout=step * 1000)
    say("ok: token taken from the address, removed from it, kept across a reload")


def check_cross_origin(browser, base, api, name, step):
    """Requests from another origin (http://localhost:PORT against http://127.0.0.1:PORT)
    carrying the right token: the API must refuse them, and the browser must not let the
    other page read anything (no CORS headers)."""
    port = urllib.parse.urlsplit(base).port
    other = f"http://localhost:{port}"
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.set_default_timeout(step * 1000)
    page = ctx.new_page()
    page.goto(other + "/")
    page.locator("#no-token").wait_for(state="visible", timeout=step * 1000)
    result = page.evaluate(
        """async ([url, token]) => {
             try {
               const r = await fetch(url, {headers: {Authorization: 'Bearer ' + token}});
               return 'read ' + r.status + ' ' + (await r.text()).slice(0, 80);
             } catch (e) { return 'refused: ' + e.name; }
           }""",
        [base + "/api/v1/vms", api.token])
    if not result.startswith("refused"):
        raise Fail(f"a page on {other} read the API of {base}: {result}")
    # A state-changing request (preflighted: JSON body and a token) must not go through.
    evil = "evil-" + str(random.randrange(10**6))
    page.evaluate(
        """async ([url, token, name]) => {
             try {
               await fetch(url, {method: 'POST', headers: {Authorization: 'Bearer ' + token,
                 'Content-Type': 'application/json'},
                 body: JSON.stringify({name, image: 'busybox', start: false})});
             } catch (e) { /* expected */ }
           }""",
        [base + "/api/v1/vms", api.token, evil])
    if api.vm(evil) is not None:
        raise Fail(f"a cross-origin POST from {other} created VM {evil}")
    # The server itself refuses a foreign Origin even with the right token (what a
    # non-browser client would see; browsers send Origin on every cross-origin request).
    status, body = api.call("GET", "/vms", headers={"Origin": "http://evil.example"})
    if status != 403:
        raise Fail(f"GET /api/v1/vms with Origin http://evil.example: {status} {body}")
    # The console WebSocket with a valid ticket, opened from the other origin.
    status, body = api.call("POST", f"/vms/{name}/console-ticket")
    if status != 200:
        raise Fail(f"console-ticket for {name}: {status} {body}")
    ws_url = (base.replace("http://", "ws://") + f"/api/v1/vms/{name}/console?ticket="
              + urllib.parse.quote(body["ticket"]))
    opened = page.evaluate(
        """url => new Promise(done => {
             const ws = new WebSocket(url);
             ws.onopen = () => { ws.close(); done('opened'); };
             ws.onerror = () => done('refused');
             setTimeout(() => done('timeout'), 10000);
           })""", ws_url)
    if opened != "refused":
        raise Fail(f"console WebSocket from {other} with a valid ticket: {opened}")
    ctx.close()
    say(f"ok: {other} can neither read nor change the API, nor open a console; "
        "a foreign Origin gets 403")


def fill_form(page, name, image, cpus, memory):
    page.fill("#f-name", name)
    page.check('input[name="source"][value="image"]')
    page.select_option("#f-image", image)
    page.fill("#f-cpus", str(cpus))
    page.fill("#f-memory", str(memory))


def flow(args):
    api = Api(args.base, args.token)
    name = args.name
    step = args.step
    shots = args.shots
    with sync_playwright() as p:
        browser = new_browser(p)
        check_no_token(browser, args.base, shots, step)

        ctx = browser.new_context(viewport=VIEWPORT)
        ctx.set_default_timeout(step * 1000)
        # Keeps the page's WebSockets where the test can reach them (the page's own
        # variables are a module's), to end one as a server that drops a slow viewer does.
        ctx.add_init_script(KEEP_SOCKETS)
        page = ctx.new_page()
        errors = []
        collect_console_errors(page, errors)
        page.goto(args.url)
        page.locator("#app").wait_for(state="visible", timeout=step * 1000)
        check_token_handling(page, args.base, step)

        # The create form: images from the server; a value the server refuses shows its
        # message (the client checks only the obvious).
        # (Locators, not wait_for_function: the page's CSP forbids the eval that a
        # string predicate needs.)
        page.locator(f"#f-image option[value={json.dumps(args.image)}]").wait_for(
            state="attached", timeout=step * 1000)
        fill_form(page, name, args.image, 99, 128)
        page.click("#f-submit")
        page.locator("#create-msg.bad").wait_for(state="visible", timeout=step * 1000)
        refused = page.locator("#create-msg").text_content()
        if "cpus" not in refused.lower():
            raise Fail(f"99 vCPUs: the form shows {refused!r}, not the server's message "
                       "naming the field")
        if api.vm(name) is not None:
            raise Fail(f"VM {name} was created with 99 vCPUs")
        say(f"ok: 99 vCPUs refused, the form shows: {refused}")
        fill_form(page, name, args.image, 1, 128)
        page.click("#f-user-data-example")
        page.locator("#create-msg").evaluate("e => { e.textContent = ''; e.className = ''; }")
        shot(page, shots, "create-form.png", page.locator("#create-section"))
        page.fill("#f-user-data", "")  # the busybox guest has no cloud-init

        page.click("#f-submit")
        wait_until(f"the form reports {name} created",
                   lambda: "created" in page.locator("#create-msg").text_content(), step)
        row(page, name).wait_for(state="visible", timeout=step * 1000)
        wait_state(page, name, "running", step)
        vm = api.vm(name)
        pid = vm and vm.get("pid")
        say(f"ok: {name} created from the form, shown running (pid {pid})")
        allowed = {"pause", "power-button", "stop", "kill", "console", "delete"}
        if set(enabled_actions(page, name)) != allowed:
            raise Fail(f"running: buttons enabled {enabled_actions(page, name)}, want {allowed}")

        # The console: attach now, the boot's output comes as scrollback and live.
        click_action(page, name, "console")
        page.locator("#term .xterm-rows").wait_for(state="attached", timeout=step * 1000)
        wait_until("console connected",
                   lambda: "connected" in page.locator("#console-status").text_content(), step)
        t0 = time.monotonic()
        last = [""]

        def booted():
            text = term_text(page)
            last[0] = text
            cpu = proc_cpu_s(pid) if pid else None
            wall = time.monotonic() - t0
            if (cpu is not None and cpu > args.boot_cpu) or wall > args.boot_wall:
                raise Fail(f"boot: no shell prompt after the marker within the budget "
                           f"({cpu} s CPU of {args.boot_cpu:.0f}, {wall:.0f} s wall of "
                           f"{args.boot_wall:.0f}); terminal:\n{text[-1500:]}")
            if state_of(page, name) in ("stopped", "crashed"):
                raise Fail(f"the VM ended during the boot; terminal:\n{text[-1500:]}")
            after = text.split(MARKER, 1)
            return len(after) == 2 and "#" in after[1]
        wait_until("boot", booted, args.boot_wall + 5, interval=0.5)
        say(f"ok: the console shows the boot up to the shell prompt "
            f"({time.monotonic() - t0:.0f} s after attaching, "
            f"VM CPU {proc_cpu_s(pid)} s)")

        def run_command(tag):
            a, b = random.randrange(1000, 10000), random.randrange(1000, 10000)
            want = f"{tag}-{a * b}"
            cmd = f"echo {tag}-$(({a}*{b}))"
            page.locator("#term").click()
            for attempt in range(2):
                page.keyboard.type(cmd)
                page.keyboard.press("Enter")
                try:
                    wait_until(f"output {want} of `{cmd}`",
                               lambda: want in term_text(page), args.cmd_wall / 2, 0.25)
                    return cmd, want
                except Fail:
                    if attempt == 1:
                        raise Fail(f"`{cmd}` typed twice, {want} never shown; "
                                   f"terminal:\n{term_text(page)[-1500:]}")
                    say(f"no output from `{cmd}` yet: typing it again")
                    page.keyboard.press("Control+U")

        cmd, want = run_command("tok")
        say(f"ok: typed `{cmd}`, the terminal shows {want}")
        shot(page, shots, "console.png", page.locator("#console-section"))
        # Attach again: the output so far comes first (the scrollback).
        page.click("#console-close")
        page.locator("#console-section").wait_for(state="hidden", timeout=step * 1000)
        click_action(page, name, "console")
        wait_until(f"{want} in the scrollback of a new attach",
                   lambda: want in term_text(page), step)
        say(f"ok: attached again, the scrollback shows {want}")

        # The connection ends under the page (a server drops a viewer that fell too far
        # behind): the page reconnects by itself, the scrollback comes again, typing works.
        before = page.evaluate("() => window.__minivmmSockets.length")
        page.evaluate("() => window.__minivmmSockets.at(-1).close()")
        sockets = """() => [window.__minivmmSockets.length,
                        window.__minivmmSockets.filter(w => w.readyState === 1).length]"""
        wait_until("the page reconnecting after its console connection ended",
                   lambda: page.locator("#console-status").text_content().startswith(
                       "connected") and page.evaluate(sockets) == [before + 1, 1]
                   and want in term_text(page), step + 5)
        if "[console closed]" in term_text(page):
            raise Fail("the terminal says [console closed] after a reconnect")
        cmd, again0 = run_command("back")
        say(f"ok: reconnected by itself after the connection ended, the scrollback shows "
            f"{want}, and `{cmd}` answers {again0}")

        # Charts: wait until the row has a few seconds of history, then the list shot.
        wait_until("15 samples of history in the CPU chart", lambda: page.evaluate(
            """name => {
                 const p = document.querySelector(`#vm-rows tr[data-name="${name}"] polyline`);
                 return p && p.getAttribute('points').trim().split(' ').length >= 15;
               }""", name), step + 20)
        probe_row(page, name)
        shot(page, shots, "vm-list.png")

        check_cross_origin(browser, args.base, api, name, step)

        # Pause / resume: the state shown follows, the buttons too, and the guest runs on.
        click_action(page, name, "pause")
        wait_state(page, name, "paused", step)
        allowed = {"resume", "stop", "kill", "console", "delete"}
        if set(enabled_actions(page, name)) != allowed:
            raise Fail(f"paused: buttons enabled {enabled_actions(page, name)}, want {allowed}")
        say("ok: paused")
        shot(page, shots, "paused.png", page.locator("#vms-section"))
        click_action(page, name, "resume")
        wait_state(page, name, "running", step)
        cmd, again = run_command("again")
        say(f"ok: resumed, and the guest answers `{cmd}` with {again}")
        check_probe(page, name)

        # An action the server refuses: its message, in one line. The page's list is held
        # (its GET /api/v1/vms fail) while the VM is paused behind its back, so that its
        # pause button is still enabled; the click then meets the server's 409.
        page.route("**/api/v1/vms", lambda route: route.abort())
        page.wait_for_timeout(1500)
        status, body = api.call("PUT", f"/vms/{name}/pause")
        if status != 200:
            raise Fail(f"PUT pause from the test: {status} {body}")
        click_action(page, name, "pause")
        page.locator("#msg").wait_for(state="visible", timeout=step * 1000)
        shown = page.locator("#msg-text").text_content()
        status, body = api.call("PUT", f"/vms/{name}/pause")
        server = body.get("error", "") if isinstance(body, dict) else ""
        if status != 409 or not server or server not in shown or "\n" in shown:
            raise Fail(f"pausing a paused VM: the page shows {shown!r}; the server "
                       f"answers {status} {body}")
        height = page.locator("#msg").evaluate("e => e.getBoundingClientRect().height")
        if height > 40:
            raise Fail(f"the message takes {height} px: more than one line")
        say(f"ok: a refused action shows the server's message: {shown}")
        page.unroute("**/api/v1/vms")
        wait_state(page, name, "paused", step)
        click_action(page, name, "resume")
        wait_state(page, name, "running", step)

        click_action(page, name, "stop")
        wait_state(page, name, "stopped", step)
        allowed = {"start", "console", "delete"}
        if set(enabled_actions(page, name)) != allowed:
            raise Fail(f"stopped: buttons enabled {enabled_actions(page, name)}, want {allowed}")
        say("ok: stopped")
        # The console of an ended VM: its console.log, read only.
        click_action(page, name, "console")
        wait_until("the stopped VM's console.log in the terminal",
                   lambda: "console.log" in page.locator("#console-status").text_content()
                   and again in term_text(page), step)
        say(f"ok: the stopped VM's console shows its console.log, with {again}")
        click_action(page, name, "delete")
        wait_until(f"row {name} gone", lambda: row(page, name).count() == 0, step)
        if api.vm(name) is not None:
            raise Fail(f"VM {name} still in the API after delete")
        say("ok: deleted, the row is gone")
        if page.locator("#vms-empty").is_hidden() and page.locator("#vm-rows tr").count() == 0:
            raise Fail("empty list without its notice")
        if errors:
            raise Fail(f"errors in the page's console: {errors}")
        browser.close()


def probe_row(page, name):
    """Marks the row and its chart so that check_probe can tell they were not rebuilt."""
    page.evaluate("""name => {
        const tr = document.querySelector(`#vm-rows tr[data-name="${name}"]`);
        tr.__probe = 'same'; tr.querySelector('svg').__probe = 'same';
      }""", name)


def check_probe(page, name):
    same = page.evaluate("""name => {
        const tr = document.querySelector(`#vm-rows tr[data-name="${name}"]`);
        return !!tr && tr.__probe === 'same' && tr.querySelector('svg').__probe === 'same';
      }""", name)
    if not same:
        raise Fail("the VM's row (or its chart) was rebuilt instead of updated in place")


# --- perf ----------------------------------------------------------------------------


def synthetic_vms(names, now, tick):
    """8 running VMs with 60 s of history each, values moving every call."""
    out = []
    for i, n in enumerate(names):
        hist = []
        for k in range(60):
            t = now - 59 + k
            ph = (k + tick + i * 7) % 60
            hist.append({"t": t, "cpu_percent": (ph * 37 % 100) * 1.0,
                         "rss_bytes": 60e6 + ph * 1e5, "disk_read_bps": (ph % 7) * 4096.0,
                         "disk_write_bps": (ph % 5) * 8192.0, "net_rx_bps": ph * 100.0,
                         "net_tx_bps": (60 - ph) * 50.0})
        out.append({"name": n, "state": "running", "pid": 1000 + i, "exit_code": None,
                    "uptime_s": 100.0 + tick, "cpus": 1, "memory_mib": 128,
                    "image": "busybox", "config": {}, "stats": hist[-1], "history": hist})
    return out


def measure(page, cdp, seconds):
    """List updates (their render times) and main-thread busy time over `seconds`."""
    page.evaluate("""() => {
        window.__renders = [];
        window.__rowMutations = 0;
        if (window.__observing) return;
        window.__observing = true;
        new PerformanceObserver(l => {
          for (const e of l.getEntries()) {
            if (e.name === 'vm-list-render') window.__renders.push(e.duration);
          }
        }).observe({type: 'measure'});
        new MutationObserver(ms => { window.__rowMutations += ms.length; })
          .observe(document.getElementById('vm-rows'), {childList: true});
      }""")
    m0 = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    t0 = time.monotonic()
    page.wait_for_timeout(seconds * 1000)  # (dispatches the route handler meanwhile)
    m1 = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    wall = time.monotonic() - t0
    renders = page.evaluate("window.__renders")
    mutations = page.evaluate("window.__rowMutations")
    busy = {k: (m1[k] - m0[k]) / wall * 100 for k in
            ("TaskDuration", "ScriptDuration", "LayoutDuration", "RecalcStyleDuration")}
    return renders, mutations, busy


def report(label, renders, mutations, busy, budget_ms):
    if len(renders) < 5:
        raise Fail(f"{label}: only {len(renders)} list updates measured")
    renders = sorted(renders)
    med = statistics.median(renders)
    p95 = renders[int(0.95 * (len(renders) - 1))]
    print(f"perf: {label} updates={len(renders)} render_median_ms={med:.2f} "
          f"render_p95_ms={p95:.2f} render_max_ms={renders[-1]:.2f} "
          f"main_thread_busy_pct={busy['TaskDuration']:.1f} "
          f"script_pct={busy['ScriptDuration']:.1f} layout_pct={busy['LayoutDuration']:.1f} "
          f"style_pct={busy['RecalcStyleDuration']:.1f} row_insertions={mutations}", flush=True)
    if mutations:
        raise Fail(f"{label}: {mutations} rows inserted or removed while the list "
                   "stayed the same (rows rebuilt instead of updated)")
    if med > budget_ms:
        raise Fail(f"{label}: a list update takes {med:.1f} ms (median), more than "
                   f"{budget_ms:.0f} ms")


def mib(b):
    return b / (1 << 20)


def perf(args):
    """8 running VMs (tiny guests: each prints a line and halts, so they cost no CPU)."""
    api = Api(args.base, args.token)
    names = [f"perf{i}" for i in range(1, 9)]
    try:
        with sync_playwright() as p:
            perf_on(p, api, names, args)
    finally:
        for n in names:
            status, body = api.call("DELETE", f"/vms/{n}")
            if status not in (204, 404):
                say(f"delete {n}: {status} {body}")


def perf_on(p, api, names, args):
    for n in names:
        status, body = api.call("POST", "/vms", {"name": n, "kernel": args.kernel, "cpus": 1,
                                                 "memory_mib": 32, "start": True})
        if status != 201:
            raise Fail(f"create {n}: {status} {body}")

    def booted(n):
        status, log = api.text(f"/vms/{n}/console.log")
        vm = api.vm(n)
        if vm is None or vm["state"] != "running":
            raise Fail(f"{n} is {vm and vm['state']} ({vm and vm.get('message')}), not running")
        return status == 200 and TINY_LINE in log

    def all_booted():
        return all(booted(n) for n in names)
    wait_until(f"8 VMs running, each with '{TINY_LINE}' in its console.log", all_booted,
               args.step, interval=0.5)
    say("ok: 8 tiny guests running, each printed its line")

    browser = new_browser(p)
    ctx = browser.new_context(viewport=VIEWPORT)
    ctx.set_default_timeout(args.step * 1000)
    page = ctx.new_page()
    errors = []
    collect_console_errors(page, errors)
    cdp = ctx.new_cdp_session(page)
    cdp.send("Performance.enable")
    page.goto(args.url)
    wait_until("8 rows, all running", lambda: page.locator("#vm-rows tr").count() == 8
               and all(state_of(page, n) == "running" for n in names), args.step)
    # At least `samples` points in every chart of every row (the sampler takes one a second).
    samples = 20
    wait_until(f"{samples} samples in every chart", lambda: page.evaluate(
        """min => [...document.querySelectorAll('#vm-rows polyline')].every(
             p => p.getAttribute('points').trim().split(' ').length >= min)""", samples),
        samples + args.step)
    probe_row(page, names[0])
    renders, mutations, busy = measure(page, cdp, args.seconds)
    report("8 running VMs (tiny guests, the real API)", renders, mutations, busy,
           args.render_ms)
    check_probe(page, names[0])

    # Memory: the manager's RSS next to its VMs' (each a minivmm process), as the API
    # reports them (the VMs' from the sampler's last sample).
    status, manager = api.call("GET", "/manager")
    if status != 200:
        raise Fail(f"GET /api/v1/manager: {status} {manager}")
    status, vms = api.call("GET", "/vms")
    if status != 200:
        raise Fail(f"GET /api/v1/vms: {status} {vms}")
    ours = [v for v in vms if v["name"] in names]
    if len(ours) != 8 or any(v["state"] != "running" for v in ours):
        raise Fail("not all 8 VMs still running: "
                   + ", ".join(f"{v['name']} {v['state']}" for v in ours))
    vm_rss = sorted(v["stats"]["rss_bytes"] for v in ours)
    if vm_rss[0] <= 0 or manager["rss_bytes"] <= 0:
        raise Fail(f"no RSS measured: manager {manager}, VMs {vm_rss}")
    print(f"perf: memory manager_rss_mib={mib(manager['rss_bytes']):.1f} "
          f"vm_rss_mib_min={mib(vm_rss[0]):.1f} "
          f"vm_rss_mib_median={mib(statistics.median(vm_rss)):.1f} "
          f"vm_rss_mib_max={mib(vm_rss[-1]):.1f} vms_rss_mib_total={mib(sum(vm_rss)):.1f} "
          f"vms={manager['vms']} running={manager['running']}", flush=True)
    if mib(manager["rss_bytes"]) > args.manager_rss_mib:
        raise Fail(f"the manager's RSS is {mib(manager['rss_bytes']):.1f} MiB with 8 VMs, "
                   f"more than {args.manager_rss_mib:.0f} MiB")
    if args.shots:
        # From the top: the header's manager line (its RSS), then the list.
        page.locator("#manager").filter(has_text="RSS").wait_for()
        box = page.locator("#vms-section").bounding_box()
        path = os.path.join(args.shots, "eight-vms.png")
        page.screenshot(path=path, clip={"x": 0, "y": 0, "width": VIEWPORT["width"],
                                         "height": box["y"] + box["height"] + 8})
        say(f"screenshot {path}")

    # The same page with charts full of varying data (the tiny guests' are flat: no CPU,
    # no disk, no network once booted): GET /api/v1/vms answered by this script, with
    # 60 s of history per VM whose every value moves at each poll.
    tick = [0]

    def fake(route):
        tick[0] += 1
        route.fulfill(status=200, content_type="application/json",
                      body=json.dumps(synthetic_vms(names, time.time(), tick[0])))
    page.route("**/api/v1/vms", fake)
    # (Its memory, 128 MiB, tells its rows from the real ones, 32 MiB. Playwright runs the
    # route handler only inside page calls, as this one.)
    memory = row(page, names[-1]).locator("td:nth-child(4)")
    wait_until("the synthetic list shown", lambda: memory.text_content() == "128 MiB",
               args.step)
    page.wait_for_timeout(2000)
    probe_row(page, names[0])
    renders, mutations, busy = measure(page, cdp, args.seconds)
    report("8 running VMs, 60 s of varying history (synthetic list)", renders, mutations,
           busy, args.render_ms)
    check_probe(page, names[0])
    page.unroute("**/api/v1/vms")
    if errors:
        raise Fail(f"errors in the page's console: {errors}")
    browser.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("mode", choices=["flow", "perf"])
    ap.add_argument("--url", required=True, help="the address minivmm serve printed")
    ap.add_argument("--shots", default="", help="directory for screenshots (none if empty)")
    ap.add_argument("--name", default="web1", help="the VM the flow creates")
    ap.add_argument("--image", default="busybox", help="the image it boots")
    ap.add_argument("--step", type=float, default=30, help="seconds for one UI step")
    ap.add_argument("--boot-cpu", type=float, default=300, help="CPU seconds for the boot")
    ap.add_argument("--boot-wall", type=float, default=1200, help="wall seconds for the boot")
    ap.add_argument("--cmd-wall", type=float, default=60, help="wall seconds for a command")
    ap.add_argument("--seconds", type=float, default=10, help="perf: measuring time")
    ap.add_argument("--render-ms", type=float, default=25, help="perf: median update limit")
    ap.add_argument("--kernel", default="", help="perf: the tiny guest's kernel (tiny.elf)")
    ap.add_argument("--manager-rss-mib", type=float, default=64,
                    help="perf: the most the manager's RSS may be with 8 VMs")
    args = ap.parse_args()
    split = urllib.parse.urlsplit(args.url)
    args.base = f"{split.scheme}://{split.netloc}"
    args.token = urllib.parse.parse_qs(split.fragment).get("token", [""])[0]
    if not args.token:
        print(f"drive: FAIL: no #token= in {args.url}", flush=True)
        return 2
    if args.mode == "perf" and not args.kernel:
        print("drive: FAIL: perf needs --kernel (the tiny guest)", flush=True)
        return 2
    if args.shots:
        os.makedirs(args.shots, exist_ok=True)
    try:
        (flow if args.mode == "flow" else perf)(args)
    except Fail as e:
        print(f"drive: FAIL: {e}", flush=True)
        return 1
    except Exception as e:  # Playwright's timeouts and errors: one line, then the trace
        print(f"drive: FAIL: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
              flush=True)
        raise
    say(f"{args.mode}: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
