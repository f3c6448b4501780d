// index.js: the stream list. Polls /v1/streams and renders rows with DOM
// APIs (textContent only), so names from the API never become markup.
'use strict';

(function () {
  const C = window.Cascade;
  const POLL_MS = 2000;

  const rows = document.getElementById('stream-rows');
  const empty = document.getElementById('empty');
  const statusEl = document.getElementById('status');
  const form = document.getElementById('go');
  const nameIn = document.getElementById('stream-name');
  const watchBtn = document.getElementById('go-watch');

  function cell(tr, text, cls) {
    const td = document.createElement('td');
    if (text !== undefined) td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function link(href, text) {
    const a = document.createElement('a');
    a.href = href;
    a.textContent = text;
    return a;
  }

  function video(renditions) {
    if (!renditions || renditions.length === 0) return '—';
    return renditions.map((r) => {
      const size = r.width && r.height ? ' ' + r.width + 'x' + r.height : '';
      const rate = r.bitrate ? ' ' + C.formatBitrate(r.bitrate) : '';
      return r.name + ': ' + r.codec + size + rate;
    }).join(', ');
  }

  function render(streams) {
    const frag = document.createDocumentFragment();
    for (const s of streams) {
      // Names come from the server, which validates them, but the check
      // keeps a bad entry from producing a broken link.
      if (!C.validName(s.name)) continue;
      const enc = encodeURIComponent(s.name);
      const tr = document.createElement('tr');
      tr.dataset.stream = s.name;
      cell(tr).appendChild(link('/watch/' + enc, s.name));
      const badge = document.createElement('span');
      badge.className = 'badge' + (s.live ? ' live' : '');
      badge.textContent = s.live ? 'live' : 'offline';
      cell(tr).appendChild(badge);
      cell(tr, s.source || '—');
      cell(tr, video(s.renditions));
      cell(tr, s.audio && s.audio.codec ? s.audio.codec : '—');
      cell(tr, String(s.viewers || 0), 'num');
      const actions = cell(tr);
      actions.appendChild(link('/publish/' + enc, 'publish'));
      frag.appendChild(tr);
    }
    rows.replaceChildren(frag);
    empty.hidden = rows.children.length > 0;
  }

  async function poll() {
    try {
      const res = await fetch('/v1/streams', { cache: 'no-store' });
      if (!res.ok) throw new C.HTTPError(res.status, (await res.text()).trim());
      const data = await res.json();
      render(Array.isArray(data.streams) ? data.streams : []);
      C.setStatus(statusEl, 'updated ' + new Date().toLocaleTimeString(), 'connected');
    } catch (err) {
      C.setStatus(statusEl, 'cannot load streams: ' + C.describe(err), 'error');
    } finally {
      // Chain with setTimeout rather than setInterval so a slow server
      // never gets overlapping polls.
      setTimeout(poll, POLL_MS);
    }
  }

  function go(kind) {
    const name = nameIn.value.trim();
    if (!C.validName(name)) {
      nameIn.reportValidity();
      return;
    }
    window.location.href = '/' + kind + '/' + encodeURIComponent(name);
  }

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    go('publish');
  });
  watchBtn.addEventListener('click', () => go('watch'));

  poll();
})();
