// The Backstop dashboard's refresher. The server renders the first view (escaped);
// this script fetches the /status JSON every few seconds and rebuilds the same
// markup with createElement/textContent only, never an HTML-parsing sink (the page's
// CSP also requires Trusted Types, so such a sink would throw).
//
// When the gateway needs a client key, this page cannot know it and its fetch gets
// 401: it then reloads the whole page instead, which carries whatever credentials
// brought the browser here (e.g. a reverse proxy that adds the Authorization header).
'use strict';
(function () {
  var REFRESH_MS = 5000;
  var RELOAD_MS = 15000;
  var STATES = ['ok', 'degraded', 'cooldown', 'disabled', 'half_open'];
  var root = document.getElementById('dashboard');
  var asOf = document.getElementById('as-of');
  var live = document.getElementById('live');
  var refreshes = 0;
  if (!root) return;

  // An element with a class and children (strings become text nodes).
  function el(tag, cls, children) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    (children || []).forEach(function (c) {
      if (c === null || c === undefined) return;
      e.appendChild(typeof c === 'string' ? document.createTextNode(c) : c);
    });
    return e;
  }
  function attr(e, name, value) { e.setAttribute(name, value); return e; }
  function str(v) { return v === null || v === undefined ? '' : String(v); }
  function dash(v) { return v === null || v === undefined || v === '' ? '\u2014' : String(v); }

  function fmtMs(v) {
    if (typeof v !== 'number') return '\u2014';
    if (v < 1) return '<1 ms';
    if (v < 1000) return Math.round(v) + ' ms';
    return (v / 1000).toFixed(2) + ' s';
  }
  function fmtRate(r) { return typeof r === 'number' ? (r * 100).toFixed(1) + ' %' : '\u2014'; }
  function rel(deltaMs) {
    var a = Math.abs(deltaMs);
    if (a < 1000) return 'now';
    var s = Math.round(a / 1000);
    var t = s < 90 ? s + ' s' : s < 5400 ? Math.round(s / 60) + ' min'
      : s < 172800 ? Math.round(s / 3600) + ' h' : Math.round(s / 86400) + ' d';
    return deltaMs > 0 ? 'in ' + t : t + ' ago';
  }
  // A time cell: HH:MM:SS (UTC) and how far from the document's "now".
  function when(iso, nowMs) {
    if (typeof iso !== 'string' || iso.length < 19) return el('span', 'dim', ['\u2014']);
    var t = attr(attr(el('time', null, [iso.slice(11, 19)]), 'datetime', iso), 'title', iso);
    var at = Date.parse(iso);
    var kids = [t];
    if (!isNaN(at) && !isNaN(nowMs)) kids.push(' ', el('span', 'dim', ['(' + rel(at - nowMs) + ')']));
    return el('span', null, kids);
  }
  function badge(state) {
    var s = STATES.indexOf(state) >= 0 ? state : 'unknown';
    return el('span', 'state s-' + s, [str(state) || 'unknown']);
  }
  function errCell(e) {
    var td = el('td', 'err');
    if (!e || typeof e !== 'object') { td.className = 'dim'; td.textContent = '\u2014'; return td; }
    td.textContent = str(e.message);
    var title = str(e.reason) + (e.status ? ', HTTP ' + e.status : '') + (e.at ? ', at ' + e.at : '');
    td.setAttribute('title', title);
    return td;
  }
  function table(cls, heads, rows) {
    var tr = el('tr', null, heads.map(function (h) { return el('th', null, [h]); }));
    return el('table', cls, [el('thead', null, [tr]), el('tbody', null, rows)]);
  }
  function td(children, cls) { return el('td', cls || null, children); }
  function code(text) { return el('code', null, [str(text)]); }
  function list(v) { return Array.isArray(v) ? v : []; }

  function chains(doc) {
    var rows = list(doc.chains).map(function (c) {
      var active = c.active
        ? [el('span', 'chip active', [str(c.active)]), ' ',
           el('span', 'dim', [c.active_profile ? 'key ' + c.active_profile : ''])]
        : [el('span', 'state s-cooldown', ['none usable'])];
      var chips = [];
      list(c.targets).forEach(function (t, i) {
        if (i > 0) chips.push(el('span', 'arrow', ['\u2192']));
        chips.push(el('span', t === c.active ? 'chip active' : 'chip', [str(t)]));
      });
      return attr(el('tr', null, [td([code(c.agent)]), td(active), td([el('div', 'chips', chips)])]),
        'data-agent', str(c.agent));
    });
    return el('section', null, [el('h2', null, ['Chains']),
      el('div', 'card', [table('chains', ['Agent', 'Active target', 'Chain'], rows)])]);
  }

  function provider(p, nowMs) {
    var profiles = list(p.profiles).map(function (a) {
      return attr(el('tr', null, [
        td([code(a.id)]), td([code(dash(a.key))]), td([badge(a.state)]), td([dash(a.reason)]),
        td([when(a.until, nowMs)]), td([str(a.error_count === undefined ? 0 : a.error_count)], 'num'),
        td([when(a.last_used, nowMs)]), errCell(a.last_error)]), 'data-profile', str(a.id));
    });
    var models = list(p.models).map(function (m) {
      var lat = m.latency_ms || {};
      var req = m.requests || {};
      return attr(el('tr', null, [
        td([code(m.id)]), td([badge(m.state)]), td([dash(m.reason)]), td([when(m.until, nowMs)]),
        td([fmtMs(lat.p50)], 'num'), td([fmtMs(lat.p95)], 'num'), td([fmtRate(m.error_rate)], 'num'),
        td([str(req.ok || 0) + ' / ' + str(req.failed || 0)], 'num'), errCell(m.last_error)]),
        'data-model', str(m.id));
    });
    var head = el('div', 'card-head', [el('h3', null, [str(p.id)]), el('span', 'tag', [str(p.api)]),
      el('span', 'url', [str(p.base_url)])]);
    return attr(el('article', 'card provider', [head,
      el('h4', null, ['Keys']),
      table('profiles', ['Profile', 'Key', 'State', 'Reason', 'Until', 'Errors', 'Last used', 'Last error'], profiles),
      el('h4', null, ['Models']),
      table('models', ['Model', 'State', 'Reason', 'Until', 'p50', 'p95', 'Error rate', 'OK / failed', 'Last error'], models)
    ]), 'data-provider', str(p.id));
  }

  function events(doc, nowMs) {
    var evs = list(doc.events);
    var body = evs.length === 0 ? el('p', 'empty', ['No failovers yet.']) : el('ol', 'timeline', evs.map(function (e) {
      return attr(el('li', null, [when(e.at, nowMs), ' ', code(e.from), ' ', el('span', 'arrow', ['\u2192']), ' ',
        code(e.to), el('span', 'reason', [str(e.reason)]), ' ', el('code', 'dim', [str(e.request_id)])]),
        'data-request-id', str(e.request_id));
    }));
    return el('section', null, [el('h2', null, ['Failover timeline']), el('div', 'card', [body])]);
  }

  function stores(doc) {
    var st = doc.state && typeof doc.state === 'object' ? doc.state : {};
    var rows = ['cooldowns', 'sessions'].filter(function (n) {
      return st[n] && typeof st[n] === 'object';
    }).map(function (n) {
      var s = st[n];
      var up = s.connected !== false;
      return attr(el('tr', null, [td([n]), td([code(s.kind)]), td([s.location ? str(s.location) : '\u2014']),
        td([el('span', 'state ' + (up ? 's-ok' : 's-disabled'), [up ? 'reachable' : 'unreachable: serving the local view'])])]),
        'data-store', n);
    });
    if (rows.length === 0) return null;
    return el('section', null, [el('h2', null, ['State']),
      el('div', 'card', [table('stores', ['Store', 'Kind', 'Where', 'Backend'], rows)])]);
  }

  function render(doc) {
    var nowMs = Date.parse(doc.now);
    var providers = el('section', null, [el('h2', null, ['Providers'])]
      .concat(list(doc.providers).map(function (p) { return provider(p, nowMs); })));
    var parts = [chains(doc), providers, events(doc, nowMs)];
    var st = stores(doc);
    if (st) parts.push(st);
    root.replaceChildren.apply(root, parts);
    if (asOf) { asOf.textContent = str(doc.now).slice(11, 19) + ' UTC'; asOf.setAttribute('datetime', str(doc.now)); }
  }

  function setLive(cls, text) {
    if (!live) return;
    live.className = 'live ' + cls;
    live.textContent = text;
  }

  function refresh() {
    fetch(window.location.pathname, {
      headers: { Accept: 'application/json' }, cache: 'no-store', credentials: 'same-origin'
    }).then(function (resp) {
      if (resp.status === 401 || resp.status === 403) {
        setLive('live-reload', 'reloading every ' + RELOAD_MS / 1000 + ' s');
        window.setTimeout(function () { window.location.reload(); }, RELOAD_MS);
        return null;
      }
      if (!resp.ok) throw new Error('HTTP ' + resp.status);
      return resp.json().then(function (doc) {
        render(doc);
        refreshes += 1;
        document.body.setAttribute('data-refreshes', String(refreshes));
        setLive('live-on', 'live \u00b7 every ' + REFRESH_MS / 1000 + ' s');
        window.setTimeout(refresh, REFRESH_MS);
      });
    }).catch(function (err) {
      setLive('live-off', 'offline (' + str(err && err.message) + '), retrying');
      window.setTimeout(refresh, REFRESH_MS);
    });
  }
  refresh();
})();
