// minivmm serve: the web console. One ES module, no framework, no build step.
//
// What it owns: the access token (taken from the address's #token=..., kept in this tab's
// sessionStorage, removed from the address bar), the VM list (polled every second from
// GET /api/v1/vms and updated in place: one table row per VM, created once, whose cells
// and SVG sparklines change only when their values do), the row buttons (one REST call
// each), the create form, and the serial console (xterm.js, loaded on first use, attached
// through a single-use ticket and a WebSocket).
//
// The server sends a Content-Security-Policy without 'unsafe-inline' scripts, so all code
// lives here, and every piece of text from the server reaches the page through
// textContent (never innerHTML).

const API = '/api/v1';
const TOKEN_KEY = 'minivmm-token';
const POLL_MS = 1000;
const POLL_HIDDEN_MS = 5000;
const MANAGER_EVERY = 5; // polls between two GET /manager
const WINDOW_S = 60; // seconds of history a sparkline shows
const SPARK_W = 116;
const SPARK_H = 22;
const SVG_NS = 'http://www.w3.org/2000/svg';
const NAME_RE = /^[a-z0-9][a-z0-9-]{0,31}$/;
const USER_DATA_EXAMPLE = `#cloud-config
# The image's default user (debian on Debian's cloud images) gets this password, to
# log in on the console; the VM's name is its hostname.
password: change-me
chpasswd: { expire: false }
# ssh_authorized_keys:
#   - ssh-ed25519 AAAA... you@laptop
runcmd:
  - echo "cloud-init ran on $(hostname)" > /dev/console
`;

// Which buttons a state allows. `console` on an ended VM shows its console.log.
const ACTIONS = ['start', 'pause', 'resume', 'power-button', 'stop', 'kill', 'console', 'delete'];
const LABELS = { 'power-button': 'power', console: 'console' };
const TITLES = {
  start: 'boot the VM from its configuration',
  pause: 'pause every vCPU and device',
  resume: 'resume the paused VM',
  'power-button': 'press the ACPI power button (the guest shuts down)',
  stop: 'stop now (hard stop, exit 0)',
  kill: 'SIGKILL the VM process',
  console: 'open the serial console',
  delete: 'remove the VM and its state directory',
};
const ENABLED = {
  created: ['start', 'delete'],
  running: ['pause', 'power-button', 'stop', 'kill', 'console', 'delete'],
  paused: ['resume', 'stop', 'kill', 'console', 'delete'],
  stopped: ['start', 'console', 'delete'],
  crashed: ['start', 'console', 'delete'],
};
const DANGER = new Set(['kill', 'delete']);

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

let token = null;
let pollTimer = 0;
let polling = false;
let pollInFlight = false;
let pollAgain = false;
let pollCount = 0;
// Bumped when an action has changed the server's state: a list requested before that is
// stale (it could bring back a VM just deleted) and is dropped.
let epoch = 0;

// --- token ---------------------------------------------------------------------------

/** Takes #token=... from the address into sessionStorage and removes it from the address. */
function takeToken() {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (m) {
    const t = decodeURIComponent(m[1]).trim();
    if (t) sessionStorage.setItem(TOKEN_KEY, t);
    history.replaceState(null, '', location.pathname + location.search);
  }
  return sessionStorage.getItem(TOKEN_KEY);
}

/** Shows the "no token" notice instead of the app (why: a sentence, or null). */
function showNoToken(why) {
  stopPolling();
  closeConsole();
  $('app').hidden = true;
  const notice = $('no-token');
  notice.hidden = false;
  let extra = notice.querySelector('.why');
  if (why) {
    if (!extra) {
      extra = document.createElement('p');
      extra.className = 'why';
      notice.querySelector('h2').after(extra);
    }
    extra.textContent = why;
  } else if (extra) {
    extra.remove();
  }
}

// --- messages ------------------------------------------------------------------------

let msgTimer = 0;

/** One line at the top: an error (stays 15 s) or information (5 s). */
function showMessage(text, kind = 'error') {
  const box = $('msg');
  $('msg-text').textContent = text;
  box.title = text;
  box.className = kind === 'error' ? 'msg' : 'msg info';
  box.hidden = false;
  clearTimeout(msgTimer);
  msgTimer = setTimeout(() => { box.hidden = true; }, kind === 'error' ? 15000 : 5000);
}

function hideMessage() {
  clearTimeout(msgTimer);
  $('msg').hidden = true;
}

// --- API -----------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** One REST call: JSON in and out, `{"error": ...}` bodies turned into an ApiError. */
async function api(method, path, body) {
  const init = { method, headers: { Authorization: `Bearer ${token}` }, cache: 'no-store' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(API + path, init);
  } catch (e) {
    throw new ApiError(0, `minivmm serve is not reachable (${e.message})`);
  }
  if (r.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showNoToken('The token was refused. minivmm serve makes a new one each time it starts: '
      + 'open the address it printed last.');
    throw new ApiError(401, 'the token was refused');
  }
  if (!r.ok) {
    let text = '';
    try {
      text = (await r.json()).error || '';
    } catch (_) { /* not JSON: use the status line */ }
    throw new ApiError(r.status, oneLine(text) || `${r.status} ${r.statusText}`);
  }
  if (r.status === 204) return null;
  const type = r.headers.get('Content-Type') || '';
  return type.includes('json') ? r.json() : r.text();
}

function oneLine(s) {
  return String(s).replace(/\s+/g, ' ').trim();
}

// --- formatting ----------------------------------------------------------------------

function fmtBytes(n) {
  if (n == null || !Number.isFinite(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

function fmtRate(n) {
  return n == null ? '–' : `${fmtBytes(n)}/s`;
}

function fmtDuration(s) {
  if (s == null || !Number.isFinite(s)) return '–';
  s = Math.floor(s);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} m ${s % 60} s`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} m`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function fmtMemory(mib) {
  if (mib == null) return '–';
  return mib >= 1024 && mib % 1024 === 0 ? `${mib / 1024} GiB` : `${mib} MiB`;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

// --- sparklines ----------------------------------------------------------------------

/**
 * A small SVG chart of one or two series of a VM's history (the last WINDOW_S seconds),
 * with the current values beside it. Its polylines get new points only when a new sample
 * has arrived.
 */
class Spark {
  /** series: [{key, cls, label}], fmt: value -> text, floor: the smallest full scale. */
  constructor(series, fmt, floor, title) {
    this.series = series;
    this.fmt = fmt;
    this.floor = floor;
    this.lastT = null;
    this.lastLen = -1;
    this.root = el('span', 'chart');
    this.root.title = title;
    this.svg = document.createElementNS(SVG_NS, 'svg');
    this.svg.setAttribute('viewBox', `0 0 ${SPARK_W} ${SPARK_H}`);
    this.svg.setAttribute('preserveAspectRatio', 'none');
    this.lines = series.map((s) => {
      const p = document.createElementNS(SVG_NS, 'polyline');
      p.setAttribute('class', `s-${s.cls}`);
      this.svg.append(p);
      return p;
    });
    this.val = el('span', 'val');
    this.vals = series.map((s) => {
      const v = el('span', series.length > 1 ? `c-${s.cls}` : '');
      this.val.append(v);
      return v;
    });
    this.texts = series.map(() => '');
    this.root.append(this.svg, this.val);
  }

  update(history, stats) {
    this.series.forEach((s, i) => {
      const v = stats ? stats[s.key] : null;
      const text = (s.label ? `${s.label} ` : '') + (v == null ? '–' : this.fmt(v));
      if (this.texts[i] !== text) {
        this.vals[i].textContent = text;
        this.texts[i] = text;
      }
    });
    const h = history || [];
    const lastT = h.length ? h[h.length - 1].t : null;
    if (lastT === this.lastT && h.length === this.lastLen) return;
    this.lastT = lastT;
    this.lastLen = h.length;
    let max = this.floor;
    for (const sample of h) {
      for (const s of this.series) {
        const v = sample[s.key];
        if (v > max) max = v;
      }
    }
    const t0 = lastT == null ? 0 : lastT - WINDOW_S;
    const scaleX = SPARK_W / WINDOW_S;
    const scaleY = (SPARK_H - 2) / (max * 1.15);
    this.series.forEach((s, i) => {
      let pts = '';
      for (const sample of h) {
        const v = sample[s.key];
        if (v == null || sample.t < t0) continue;
        const x = (sample.t - t0) * scaleX;
        const y = SPARK_H - 1 - v * scaleY;
        pts += `${x.toFixed(1)},${y.toFixed(1)} `;
      }
      this.lines[i].setAttribute('points', pts);
    });
  }
}

// --- the VM list ---------------------------------------------------------------------

/** One VM's table row, built once; update() touches only what changed. */
class Row {
  constructor(name) {
    this.name = name;
    this.state = null;
    this.busy = false;
    this.text = {};
    const tr = el('tr');
    tr.dataset.name = name;
    this.tr = tr;
    const td = (cls) => {
      const c = el('td', cls);
      tr.append(c);
      return c;
    };
    td('name').textContent = name;
    const stateCell = td('state-cell');
    this.stateEl = el('span', 'state');
    this.exitEl = el('span', 'exit');
    stateCell.append(this.stateEl, this.exitEl);
    this.cpusEl = td('num');
    this.memEl = td('num');
    this.uptimeEl = td('num');
    this.cpu = new Spark([{ key: 'cpu_percent', cls: 'cpu' }], (v) => `${v.toFixed(1)} %`, 100,
      'CPU of the VM process (100 % = one host core), last 60 s');
    this.rss = new Spark([{ key: 'rss_bytes', cls: 'rss' }], fmtBytes, 1 << 20,
      'resident memory of the VM process, last 60 s');
    this.disk = new Spark([{ key: 'disk_read_bps', cls: 'rd', label: 'r' },
      { key: 'disk_write_bps', cls: 'wr', label: 'w' }], fmtRate, 1024,
    'disk read (green) and write (orange) per second, last 60 s');
    this.net = new Spark([{ key: 'net_rx_bps', cls: 'rx', label: 'rx' },
      { key: 'net_tx_bps', cls: 'tx', label: 'tx' }], fmtRate, 1024,
    'network received (blue) and sent (red) per second, last 60 s');
    for (const s of [this.cpu, this.rss, this.disk, this.net]) td('').append(s.root);
    const actions = el('div', 'btns');
    td('').append(actions);
    this.buttons = {};
    for (const a of ACTIONS) {
      const b = el('button', DANGER.has(a) ? 'danger' : '', LABELS[a] || a);
      b.type = 'button';
      b.dataset.action = a;
      b.title = TITLES[a];
      b.disabled = true;
      actions.append(b);
      this.buttons[a] = b;
    }
  }

  set(elem, key, value) {
    if (this.text[key] !== value) {
      elem.textContent = value;
      this.text[key] = value;
    }
  }

  update(vm) {
    const changed = vm.state !== this.state;
    this.state = vm.state;
    this.set(this.stateEl, 'state', vm.state);
    if (changed) this.stateEl.className = `state state-${vm.state}`;
    let exit = '';
    if (vm.state === 'stopped' || vm.state === 'crashed') {
      exit = vm.exit_code != null ? `exit ${vm.exit_code}` : '';
    }
    this.set(this.exitEl, 'exit', exit);
    this.set(this.cpusEl, 'cpus', String(vm.cpus ?? '–'));
    this.set(this.memEl, 'mem', fmtMemory(vm.memory_mib));
    const live = vm.state === 'running' || vm.state === 'paused';
    this.set(this.uptimeEl, 'uptime', live ? fmtDuration(vm.uptime_s) : '–');
    const stats = live ? vm.stats : null;
    this.cpu.update(vm.history, stats);
    this.rss.update(vm.history, stats);
    this.disk.update(vm.history, stats);
    this.net.update(vm.history, stats);
    if (changed) this.updateButtons();
  }

  updateButtons() {
    const allowed = ENABLED[this.state] || ['delete'];
    for (const a of ACTIONS) {
      const off = this.busy || !allowed.includes(a);
      if (this.buttons[a].disabled !== off) this.buttons[a].disabled = off;
    }
  }
}

const rows = new Map();
let renders = 0;

/** Brings the table in line with a GET /vms answer, touching only what changed. */
function render(vms) {
  performance.mark('vm-list-render-start');
  const tbody = $('vm-rows');
  const seen = new Set();
  let prev = null;
  for (const vm of vms) {
    seen.add(vm.name);
    let row = rows.get(vm.name);
    if (!row) {
      row = new Row(vm.name);
      rows.set(vm.name, row);
    }
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (row.tr !== want) tbody.insertBefore(row.tr, want);
    row.update(vm);
    prev = row.tr;
  }
  for (const [name, row] of rows) {
    if (!seen.has(name)) removeRow(name, row);
  }
  showCount(vms.length);
  suggestName();
  performance.measure('vm-list-render', 'vm-list-render-start');
  performance.clearMarks('vm-list-render-start');
  // Keep the performance timeline from growing forever (observers still see each one).
  renders += 1;
  if (renders % 120 === 0) performance.clearMeasures('vm-list-render');
}

/** The VM count and, for none, the empty-list notice instead of the table. */
function showCount(n) {
  const count = n === 1 ? '1 VM' : `${n} VMs`;
  const countEl = $('vm-count');
  if (countEl.textContent !== count) countEl.textContent = count;
  const empty = n === 0;
  if ($('vms-empty').hidden === empty) $('vms-empty').hidden = !empty;
  if ($('vms').hidden !== empty) $('vms').hidden = empty;
}

function removeRow(name, row) {
  row.tr.remove();
  rows.delete(name);
  if (con.name === name) closeConsole();
}

function updateRowState(vm) {
  const row = rows.get(vm.name);
  if (row) row.update(vm);
}

async function poll() {
  clearTimeout(pollTimer);
  if (!token || !polling) return;
  if (pollInFlight) {
    pollAgain = true;
    return;
  }
  pollInFlight = true;
  pollAgain = false;
  const asked = epoch;
  try {
    const vms = await api('GET', '/vms');
    setConnected(true);
    if (asked === epoch) render(vms);
    else pollAgain = true;
    if (pollCount % MANAGER_EVERY === 0) updateManager();
    pollCount += 1;
  } catch (e) {
    if (e.status !== 401) setConnected(false, e.message);
  } finally {
    pollInFlight = false;
  }
  if (!polling) return;
  pollTimer = setTimeout(poll, pollAgain ? 0 : document.hidden ? POLL_HIDDEN_MS : POLL_MS);
}

function stopPolling() {
  polling = false;
  clearTimeout(pollTimer);
}

function setConnected(ok, why) {
  const c = $('conn');
  const text = ok ? '● live' : `● disconnected: ${why}`;
  if (c.textContent !== text) {
    c.textContent = text;
    c.className = ok ? 'conn' : 'conn down';
  }
}

async function updateManager() {
  try {
    const m = await api('GET', '/manager');
    $('manager').textContent = `serve pid ${m.pid} · ${fmtBytes(m.rss_bytes)} RSS · up ${
      fmtDuration(m.uptime_s)} · ${m.running} of ${m.vms} running`;
  } catch (_) { /* the list's poll reports the connection */ }
}

/** A row button: one REST call, the row's buttons off meanwhile. */
async function act(name, action) {
  const row = rows.get(name);
  if (!row) return;
  if (action === 'console') {
    openConsole(name, row.state);
    return;
  }
  if (action === 'delete' && (row.state === 'running' || row.state === 'paused')
      && !window.confirm(`Delete ${name}? It is ${row.state}: it will be stopped hard first.`)) {
    return;
  }
  row.busy = true;
  row.updateButtons();
  try {
    if (action === 'delete') {
      await api('DELETE', `/vms/${enc(name)}`);
      epoch += 1;
      removeRow(name, row);
      // The count and the empty-list notice now, not at the next poll's render: a page
      // without rows and without its notice in between was seen by the browser test.
      showCount(rows.size);
    } else {
      const vm = await api('PUT', `/vms/${enc(name)}/${action}`);
      epoch += 1;
      if (vm && vm.name) updateRowState(vm);
    }
  } catch (e) {
    if (e.status !== 401) showMessage(`${action} ${name}: ${e.message}`);
  } finally {
    row.busy = false;
    row.updateButtons();
  }
  poll();
}

// --- console -------------------------------------------------------------------------

const con = { name: null, ws: null, term: null, fit: null, seq: 0 };
let xtermLoading = null;
const encoder = new TextEncoder();

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const s = document.createElement('script');
    s.src = src;
    s.onload = resolve;
    s.onerror = () => reject(new Error(`could not load ${src}`));
    document.head.append(s);
  });
}

function loadCss(href) {
  return new Promise((resolve, reject) => {
    const l = document.createElement('link');
    l.rel = 'stylesheet';
    l.href = href;
    l.onload = resolve;
    l.onerror = () => reject(new Error(`could not load ${href}`));
    document.head.append(l);
  });
}

/** xterm.js and its fit addon (UMD builds: globals Terminal and FitAddon), once. */
function loadXterm() {
  if (!xtermLoading) {
    xtermLoading = Promise.all([
      loadCss('/vendor/xterm.css'),
      loadScript('/vendor/xterm.js'),
      loadScript('/vendor/addon-fit.js'),
    ]).catch((e) => {
      xtermLoading = null;
      throw e;
    });
  }
  return xtermLoading;
}

function consoleStatus(text) {
  $('console-status').textContent = text;
}

function ensureTerminal() {
  if (con.term) return;
  /* global Terminal, FitAddon */
  const term = new Terminal({
    fontFamily: '"DejaVu Sans Mono", ui-monospace, monospace',
    fontSize: 13,
    scrollback: 5000,
    cursorBlink: true,
    theme: { background: '#000000' },
  });
  const fit = new FitAddon.FitAddon();
  term.loadAddon(fit);
  term.open($('term'));
  term.onData((data) => {
    if (con.ws && con.ws.readyState === WebSocket.OPEN) con.ws.send(encoder.encode(data));
  });
  window.addEventListener('resize', () => {
    if (!$('console-section').hidden) fit.fit();
  });
  con.term = term;
  con.fit = fit;
}

/** Opens the console of `name`: live (WebSocket) when it runs, its console.log otherwise. */
async function openConsole(name, state) {
  closeConsole();
  const seq = ++con.seq;
  con.name = name;
  $('console-section').hidden = false;
  $('console-name').textContent = name;
  consoleStatus('loading…');
  for (const [n, r] of rows) r.tr.classList.toggle('selected', n === name);
  try {
    await loadXterm();
    if (seq !== con.seq) return;
    ensureTerminal();
    con.term.reset();
    con.fit.fit();
    $('console-section').scrollIntoView({ block: 'nearest' });
    if (state === 'running' || state === 'paused') {
      await connectConsole(name, seq, 0);
    } else {
      consoleStatus('loading console.log…');
      const text = await api('GET', `/vms/${enc(name)}/console.log`);
      if (seq !== con.seq) return;
      con.term.write(typeof text === 'string' ? text : '');
      consoleStatus(`${state}: its console.log (read only)`);
    }
  } catch (e) {
    consoleFailed(name, seq, e, '');
  }
}

/** A step of console session `seq` failed: says so, unless that session is over by now
 * (a 401 has sent the page to its login already). */
function consoleFailed(name, seq, err, status) {
  if (seq !== con.seq) return;
  consoleStatus(status);
  if (err.status !== 401) showMessage(`console ${name}: ${err.message}`);
}

/** Tries to reconnect, the n-th after n seconds, when the server ends a live console. */
const RECONNECT_TRIES = 5;

/**
 * Opens the console WebSocket of `name` for console session `seq`. When the server ends
 * it while the VM still runs (a viewer that fell too far behind is dropped: a busy
 * browser), tries again: the new connection starts with the scrollback, so the terminal
 * is cleared when it opens. A close with 1001 (VM deleted, manager stopping) is final.
 */
async function connectConsole(name, seq, attempt) {
  consoleStatus(attempt ? `reconnecting (try ${attempt} of ${RECONNECT_TRIES})…` : 'connecting…');
  const { ticket } = await api('POST', `/vms/${enc(name)}/console-ticket`);
  if (seq !== con.seq) return;
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const ws = new WebSocket(
    `${scheme}//${location.host}${API}/vms/${enc(name)}/console?ticket=${enc(ticket)}`,
  );
  ws.binaryType = 'arraybuffer';
  con.ws = ws;
  let opened = false;
  ws.onopen = () => {
    if (con.ws !== ws) return;
    opened = true;
    if (attempt) con.term.reset();
    consoleStatus('connected — keys go to the guest');
  };
  ws.onmessage = (e) => {
    if (con.ws !== ws) return;
    con.term.write(typeof e.data === 'string' ? e.data : new Uint8Array(e.data));
  };
  ws.onclose = (e) => {
    if (con.ws !== ws) return;
    con.ws = null;
    const row = rows.get(name);
    const live = row && (row.state === 'running' || row.state === 'paused');
    const next = opened ? 1 : attempt + 1;
    if (live && e.code !== 1001 && next <= RECONNECT_TRIES) {
      consoleStatus('disconnected — reconnecting…');
      setTimeout(() => {
        if (seq !== con.seq) return;
        connectConsole(name, seq, next).catch((err) =>
          consoleFailed(name, seq, err, 'disconnected'),
        );
      }, next * 1000);
      return;
    }
    consoleStatus('disconnected');
    con.term.write('\r\n\x1b[2m[console closed]\x1b[0m\r\n');
  };
  con.term.focus();
}

function closeConsole() {
  con.seq += 1;
  if (con.ws) {
    const ws = con.ws;
    con.ws = null;
    ws.close();
  }
  con.name = null;
  $('console-section').hidden = true;
  for (const r of rows.values()) r.tr.classList.remove('selected');
}

// --- create form ---------------------------------------------------------------------

let autoName = '';

/** Fills the name field with the first free vmN while the user has not typed one. */
function suggestName() {
  const input = $('f-name');
  if (input.value !== '' && input.value !== autoName) return;
  let i = 1;
  while (rows.has(`vm${i}`)) i += 1;
  const name = `vm${i}`;
  if (input.value !== name) input.value = name;
  autoName = name;
}

const imageAbout = new Map();

function showImageAbout() {
  $('f-image-about').textContent = imageAbout.get($('f-image').value) || '';
}

async function loadImages() {
  const select = $('f-image');
  try {
    const images = await api('GET', '/images');
    select.replaceChildren();
    imageAbout.clear();
    for (const img of images) {
      const o = el('option', '', img.name);
      o.value = img.name;
      select.append(o);
      imageAbout.set(img.name, img.description || '');
    }
    showImageAbout();
    if (!images.length) {
      const o = el('option', '', 'no images: boot from a kernel');
      o.value = '';
      o.disabled = true;
      select.append(o);
      setSource('kernel');
    }
  } catch (e) {
    if (e.status !== 401) showMessage(`images: ${e.message}`);
  }
}

function setSource(source) {
  const form = $('create');
  form.classList.toggle('kernel', source === 'kernel');
  form.classList.toggle('image', source !== 'kernel');
  for (const r of form.elements.source) r.checked = r.value === source;
}

function formMessage(text, kind) {
  const m = $('create-msg');
  m.textContent = text;
  m.className = `form-msg ${kind || ''}`;
}

/** The CreateVm body from the form, or a one-line complaint (a convenience only: the
 * server checks everything again and its message is the one that counts). */
function readForm() {
  const f = $('create').elements;
  const name = f.name.value.trim();
  const source = f.source.value;
  const num = (v) => (v.trim() === '' ? NaN : Number(v));
  const cpus = num(f.cpus.value);
  const memory = num(f.memory_mib.value);
  const opt = (v) => (v.trim() === '' ? null : v.trim());
  if (!NAME_RE.test(name)) {
    return { error: 'name: 1-32 characters a-z, 0-9 and "-", starting with a letter or digit' };
  }
  if (!Number.isInteger(cpus) || cpus < 1) return { error: 'vCPUs: a whole number, at least 1' };
  if (!Number.isInteger(memory) || memory < 16) return { error: 'memory: whole MiB, at least 16' };
  if (source === 'image' && !f.image.value) return { error: 'image: choose one' };
  if (source === 'kernel' && !f.kernel.value.trim()) return { error: 'kernel: give its path' };
  const userData = f.user_data.value;
  return {
    body: {
      name,
      image: source === 'image' ? f.image.value : null,
      kernel: source === 'kernel' ? opt(f.kernel.value) : null,
      initrd: source === 'kernel' ? opt(f.initrd.value) : null,
      cmdline: source === 'kernel' ? opt(f.cmdline.value) : null,
      cpus,
      memory_mib: memory,
      disks: f.disks.value.split('\n').map((l) => l.trim()).filter((l) => l !== ''),
      bridge: opt(f.bridge.value),
      user_data: userData.trim() === '' ? null : userData,
      start: f.start.checked,
    },
  };
}

async function submitCreate(ev) {
  ev.preventDefault();
  const { body, error } = readForm();
  if (error) {
    formMessage(error, 'bad');
    return;
  }
  const button = $('f-submit');
  button.disabled = true;
  formMessage('creating…', '');
  try {
    const vm = await api('POST', '/vms', body);
    epoch += 1;
    formMessage(`created ${vm.name} (${vm.state})`, 'ok');
    $('f-name').value = '';
    poll();
  } catch (e) {
    if (e.status !== 401) formMessage(e.message, 'bad');
  } finally {
    button.disabled = false;
  }
}

// --- start ---------------------------------------------------------------------------

function start() {
  token = takeToken();
  if (!token) {
    showNoToken(null);
    return;
  }
  $('no-token').hidden = true;
  $('app').hidden = false;
  hideMessage();
  loadImages();
  polling = true;
  poll();
}

function wire() {
  $('msg-close').addEventListener('click', hideMessage);
  $('vm-rows').addEventListener('click', (ev) => {
    const b = ev.target.closest('button[data-action]');
    if (!b || b.disabled) return;
    act(b.closest('tr').dataset.name, b.dataset.action);
  });
  $('console-close').addEventListener('click', closeConsole);
  $('create').addEventListener('submit', submitCreate);
  $('create').addEventListener('change', (ev) => {
    if (ev.target.name === 'source') setSource(ev.target.value);
    if (ev.target.id === 'f-image') showImageAbout();
  });
  $('f-user-data').placeholder = USER_DATA_EXAMPLE;
  $('f-user-data-example').addEventListener('click', () => {
    $('f-user-data').value = USER_DATA_EXAMPLE;
  });
  setSource('image');
  // A new address with a token pasted into this tab.
  window.addEventListener('hashchange', () => {
    if (/token=/.test(location.hash)) start();
  });
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden && polling) poll();
  });
}

wire();
start();
