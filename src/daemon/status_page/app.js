// The status page: reads /status, /connections and /metrics from this admin listener every
// few seconds and renders them. Text only ever goes in through textContent: names, SNI and
// reasons come from configs and clients.
'use strict';

const params = new URLSearchParams(location.search);
const EVERY_S = Math.min(60, Math.max(1, Number(params.get('refresh')) || 3));
const CONNECTIONS_SHOWN = 15;
// The NLB drops a flow silent for longer than this (its default idle timeout): silences
// approaching it are worth a look.
const NLB_IDLE_S = 350;

let previous = null; // the last /metrics counters, for rates

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === 'class') node.className = value;
    else node.setAttribute(key, value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function td(value, cls) {
  return el('td', { class: cls }, value === null || value === undefined || value === '' ? '–' : value);
}

function num(value) {
  return td(value, 'num');
}

function duration(seconds) {
  if (seconds === null || seconds === undefined) return '–';
  if (seconds < 1) return Math.round(seconds * 1000) + ' ms';
  if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + ' s';
  const s = Math.floor(seconds);
  if (s < 3600) return Math.floor(s / 60) + 'm ' + String(s % 60).padStart(2, '0') + 's';
  if (s < 86400) return Math.floor(s / 3600) + 'h ' + String(Math.floor(s % 3600 / 60)).padStart(2, '0') + 'm';
  return Math.floor(s / 86400) + 'd ' + Math.floor(s % 86400 / 3600) + 'h';
}

function ago(iso) {
  if (!iso) return '–';
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  return el('span', { title: iso }, seconds < 1 ? 'just now' : duration(seconds) + ' ago');
}

function bytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(Math.round(n)) : n.toFixed(n < 10 ? 1 : 0)) + ' ' + units[i];
}

function rate(n, unit) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  return unit === 'B' ? bytes(n) + '/s' : (n < 10 ? n.toFixed(1) : Math.round(n)) + '/s';
}

function state(name) {
  return el('span', { class: 'state state-' + name }, name);
}

async function fetchJson(path) {
  const response = await fetch(path, { cache: 'no-store' });
  if (!response.ok) throw new Error(path + ': HTTP ' + response.status);
  return response.json();
}

async function fetchMetrics() {
  try {
    const response = await fetch('/metrics', { cache: 'no-store' });
    return response.ok ? parseMetrics(await response.text()) : null;
  } catch (e) {
    return null; // metrics off: no rates
  }
}

// The counters the rates come from, summed per listener: {listener: {conns, c2s, s2c}}.
function parseMetrics(text) {
  const sums = {};
  const line = /^(l4relay_connections_total|l4relay_bytes_total)\{([^}]*)\} ([0-9.eE+-]+)$/;
  for (const row of text.split('\n')) {
    const m = line.exec(row);
    if (!m) continue;
    const labels = {};
    for (const pair of m[2].matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    const sum = sums[labels.listener] || (sums[labels.listener] = { conns: 0, c2s: 0, s2c: 0 });
    const value = Number(m[3]);
    if (m[1] === 'l4relay_connections_total') sum.conns += value;
    else if (labels.direction === 'client_to_server') sum.c2s += value;
    else sum.s2c += value;
  }
  return { at: performance.now(), sums };
}

// Per listener rates between the last two samples, or null until there are two.
function rates(current) {
  const out = {};
  if (!current || !previous) return out;
  const seconds = (current.at - previous.at) / 1000;
  if (seconds <= 0) return out;
  for (const [listener, now] of Object.entries(current.sums)) {
    const before = previous.sums[listener];
    if (!before) continue;
    out[listener] = {
      conns: Math.max(0, now.conns - before.conns) / seconds,
      c2s: Math.max(0, now.c2s - before.c2s) / seconds,
      s2c: Math.max(0, now.s2c - before.s2c) / seconds,
    };
  }
  return out;
}

const PHASES = {
  running: ['running', 'good'],
  announcing: ['draining: announcing (not ready, still accepting)', 'warn'],
  stopped: ['draining: listeners closed, connections finishing', 'warn'],
  closing: ['draining: closing what is left', 'bad'],
  exit: ['exiting', 'bad'],
};

function renderHeader(status) {
  document.getElementById('version').textContent = status.version;
  const [text, cls] = PHASES[status.phase] || [status.phase, ''];
  const phase = document.getElementById('phase');
  phase.textContent = text;
  phase.className = 'badge ' + cls;
  const ready = document.getElementById('ready');
  ready.textContent = status.ready ? 'ready' : 'not ready';
  ready.className = 'badge ' + (status.ready ? 'good' : 'bad');
}

function card(label, value, cls) {
  return el('div', { class: 'card' }, el('div', { class: 'label' }, label), el('div', { class: 'value ' + (cls || '') }, value));
}

function renderSummary(status, perListener) {
  const total = Object.values(perListener).reduce(
    (a, r) => ({ conns: a.conns + r.conns, c2s: a.c2s + r.c2s, s2c: a.s2c + r.s2c }),
    { conns: 0, c2s: 0, s2c: 0 });
  const known = Object.keys(perListener).length > 0;
  const servers = status.pools.flatMap((p) => p.servers);
  const up = servers.filter((s) => s.state === 'up').length;
  const max = status.connections.max;
  document.getElementById('summary').replaceChildren(
    card('active connections', status.connections.active + (max ? ' / ' + max : '')),
    card('new connections', known ? rate(total.conns) : '–'),
    card('client → server', known ? rate(total.c2s, 'B') : '–'),
    card('server → client', known ? rate(total.s2c, 'B') : '–'),
    card('servers up', up + ' / ' + servers.length, up < servers.length ? 'long' : ''),
  );
}

function renderListeners(status, perListener) {
  const rows = status.listeners.map((l) => {
    const r = perListener[l.name] || {};
    return el('tr', { 'data-listener': l.name },
      td(l.name), td(l.listen), td(l.pool), num(l.active), num(l.max_connections),
      num(rate(r.conns)), num(rate(r.c2s, 'B')), num(rate(r.s2c, 'B')));
  });
  tbody('listeners', rows, 8, 'no listeners');
}

function tbody(table, rows, columns, empty) {
  const body = document.querySelector('#' + table + ' tbody');
  body.replaceChildren(...(rows.length ? rows : [el('tr', {}, el('td', { class: 'empty', colspan: columns }, empty))]));
}

function lastCheck(check) {
  if (!check) return '–';
  return el('span', {},
    check.result, ' ', el('span', { class: 'sub' }, check.latency_ms.toFixed(1) + ' ms, '), ago(check.at),
    check.detail ? el('div', { class: 'sub' }, check.detail) : null);
}

function renderPools(status) {
  const pools = status.pools.map((pool) => {
    const servers = pool.servers.map((s) => el('tr', { 'data-server': s.name },
      td(s.name),
      td(el('span', {}, s.address, s.host ? el('div', { class: 'sub' }, s.host) : null)),
      td(state(s.state)),
      td(s.reason, 'wrap'),
      td(ago(s.since)),
      td(lastCheck(s.last_check), 'wrap'),
      num(s.active),
      num(s.weight + (s.effective_weight !== s.weight ? ' (' + s.effective_weight + ')' : '') + (s.backup ? ' backup' : '')),
    ));
    const serverTable = el('table', { class: 'servers' },
      el('thead', {}, el('tr', {}, ['server', 'address', 'state', 'reason', 'since', 'last health check'].map((h) => el('th', {}, h)),
        el('th', { class: 'num' }, 'active'), el('th', { class: 'num' }, 'weight'))),
      el('tbody', {}, servers.length ? servers : el('tr', {}, el('td', { class: 'empty', colspan: 8 }, 'no server (awaiting DNS?)'))));
    const dns = pool.dns.length === 0 ? null : el('table', { class: 'dns' },
      el('thead', {}, el('tr', {}, ['DNS name', 'addresses', 'TTL', 'last result', 'next'].map((h) => el('th', {}, h)))),
      el('tbody', {}, pool.dns.map((d) => el('tr', {},
        td(d.host + ':' + d.port + ' (' + d.server + ')'),
        td(el('span', {}, d.addresses.join(', ') || '–', d.refused.length ? el('div', { class: 'sub' }, 'refused: ' + d.refused.join(', ')) : null), 'wrap'),
        td(d.ttl_secs === null ? null : d.ttl_secs + ' s'),
        td(el('span', {}, d.last_result || 'pending', d.error ? el('div', { class: 'sub' }, d.error) : null), 'wrap'),
        td(d.next_resolution_in_secs === null ? null : 'in ' + duration(d.next_resolution_in_secs)),
      ))));
    return el('div', { class: 'pool', 'data-pool': pool.name },
      el('h3', {}, pool.name, ' ', el('span', { class: 'meta' },
        pool.balance + ' · health check: ' + (pool.health_check || 'none'))),
      serverTable, dns);
  });
  document.getElementById('pools').replaceChildren(...pools);
}

function renderConnections(table) {
  document.getElementById('open').textContent = '(' + table.open + ' open)';
  const rows = table.connections.map((c) => el('tr', { 'data-connection': c.id },
    num(c.id), td(c.listener),
    td(c.client ? el('span', {}, c.client, c.vpce ? el('div', { class: 'sub' }, c.vpce) : null) : null),
    td(c.sni),
    td(c.pool ? el('span', {}, c.pool, c.server ? el('div', { class: 'sub' }, c.server + ' ' + (c.server_addr || '')) : null) : null),
    td(c.source), num(duration(c.age_s)),
    num(bytes(c.bytes_c2s) + ' / ' + bytes(c.bytes_s2c)),
    silent(c.idle_c2s_s, c.idle_s2c_s),
    td(c.mode), td(c.phase + (c.closing ? ' (closing)' : '')),
  ));
  tbody('connections', rows, 11, 'no open connection');
}

// Silences each way; one approaching the NLB's idle timeout is highlighted.
function silent(c2s, s2c) {
  const cell = num(duration(c2s) + ' / ' + duration(s2c));
  if (Math.max(c2s || 0, s2c || 0) > NLB_IDLE_S / 2) cell.classList.add('long');
  return cell;
}

async function refresh() {
  const error = document.getElementById('error');
  try {
    const [status, table, metrics] = await Promise.all([
      fetchJson('/status'),
      fetchJson('/connections?order=longest&limit=' + CONNECTIONS_SHOWN).catch(() => ({ open: 0, connections: [] })),
      fetchMetrics(),
    ]);
    const perListener = rates(metrics);
    if (metrics) previous = metrics;
    renderHeader(status);
    renderSummary(status, perListener);
    renderListeners(status, perListener);
    renderPools(status);
    renderConnections(table);
    error.hidden = true;
    document.getElementById('updated').textContent = new Date().toLocaleTimeString();
    document.body.dataset.state = 'loaded';
  } catch (e) {
    error.textContent = 'Cannot read the relay: ' + e.message + ' (retrying)';
    error.hidden = false;
    document.body.dataset.state = 'error';
  }
}

async function loop() {
  await refresh();
  setTimeout(loop, EVERY_S * 1000);
}

document.getElementById('every').textContent = EVERY_S;
// At once (rates need two samples, so the second refresh comes after a second), then every
// EVERY_S seconds.
refresh().then(() => setTimeout(loop, 1000));
