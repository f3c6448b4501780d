// watch.js: the WHEP player. Connects on load, reconnects by itself with
// backoff, and keeps a stats overlay and window.cascadeStats up to date.
// When the session advertises the WHEP event stream and layer selection
// extensions (Link headers of the 201), it follows the server's ABR
// events (layers, switch, estimate, video, reconnect) and offers a
// quality menu; the event shapes are documented in wish/events.go.
'use strict';

(function () {
  const C = window.Cascade;
  const stream = C.streamName();
  // The page's query string goes through to the POST (e.g. ?rendition=480p):
  // the WHEP endpoint, not this page, interprets it. The quality menu
  // keeps ?rendition= in step with the viewer's choice.
  const params = new URLSearchParams(window.location.search);
  // endpoint is where offers go: this node's, until a "reconnect" event
  // names another one on the same origin.
  let endpoint = { path: '/whep/' + encodeURIComponent(stream), query: new URLSearchParams() };
  const infoURL = '/v1/streams/' + encodeURIComponent(stream);

  // The WHEP extensions (draft-ietf-wish-whep), found by their Link rel.
  const SSE_REL = 'urn:ietf:params:whep:ext:core:server-sent-events';
  const LAYER_REL = 'urn:ietf:params:whep:ext:core:layer';
  const RUNG_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/; // wish's rendition name syntax
  const MAX_RUNGS = 16;
  const HOP_PARAM = 'cascade_hop'; // node/cluster.go's redirect marker

  const GRACE_MS = 3000; // how long "disconnected"/"failed" may last before we reconnect
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 10000;
  const INFO_EVERY = 5; // refresh /v1/streams/{stream} every N stats ticks

  const video = document.getElementById('video');
  const statusEl = document.getElementById('status');
  const statsEl = document.getElementById('stats');
  const unmuteBtn = document.getElementById('unmute');
  const qualityField = document.getElementById('quality-field');
  const quality = document.getElementById('quality');
  const qualityNote = document.getElementById('quality-note');
  const whepURLEl = document.getElementById('whep-url');

  // whepURL is the endpoint with the page's query (the endpoint's own
  // query, from a "reconnect" URL, wins).
  function whepURL() {
    const q = new URLSearchParams(params);
    endpoint.query.forEach((v, k) => q.set(k, v));
    const qs = q.toString();
    return endpoint.path + (qs ? '?' + qs : '');
  }

  let pc = null;
  let session = null;
  let gen = 0; // bumped whenever a connection attempt is abandoned
  let attempt = 0; // failed attempts since the last "connected", for backoff
  let retryTimer = 0;
  let graceTimer = 0;
  let reconnects = 0;
  let prev = {}; // last inbound-rtp sample per kind, for per-second deltas
  let rendition = ''; // from /v1/streams, until the server's events say
  let tick = 0;
  let events = null; // the EventSource of the current session
  let layerURL = ''; // POST {Location}/layer, when the session has it
  let extensions = []; // the extensions the session advertised: 'events', 'layer'
  let abr = emptyABR();

  // emptyABR is what the server's events have told about this session.
  function emptyABR() {
    return {
      live: false, // a "layers" event arrived
      renditions: [], // [{name, width, height, bitrate}], best first
      current: '', // the rung being sent
      pinnedTo: '', // the rung the viewer chose, or '' for auto
      estimate: 0, // bits per second
      lastSwitch: null, // {from, to, reason}
      videoPaused: false,
      videoReason: '',
    };
  }

  function emptyStats() {
    return {
      stream,
      state: 'connecting',
      rendition: '',
      width: 0,
      height: 0,
      fps: 0,
      framesDecoded: 0,
      framesDropped: 0,
      bitrate: 0, // video, bits per second
      packetsLost: 0, // video
      jitterBufferMs: 0, // video
      codec: '',
      audio: null, // {codec, bitrate, packetsLost, jitterBufferMs} while audio flows
      reconnects: 0,
      // The WHEP extensions of the session, from its Link headers:
      extensions: [], // 'events', 'layer'
      // From the session's events, when it sends them:
      events: false, // the session's events arrive (a "layers" event came)
      renditions: [], // rung names, best first
      pinned: false,
      estimate: 0, // the server's estimate, bits per second
      lastSwitch: null, // {from, to, reason}
      videoPaused: false,
      updated: Date.now(),
    };
  }

  // window.cascadeStats is the latest sample. It is replaced by a fresh
  // object every second (only .state and the fields the server's events
  // set change in between), so a reader never sees half of one sample and
  // half of the next.
  window.cascadeStats = emptyStats();

  function status(text, state) {
    C.setStatus(statusEl, text, state);
    window.cascadeStats.state = state;
  }

  // teardown drops the current session: DELETE its resource, close the pc.
  function teardown() {
    clearTimeout(retryTimer);
    clearTimeout(graceTimer);
    retryTimer = 0;
    graceTimer = 0;
    prev = {};
    if (events) {
      events.close();
      events = null;
    }
    layerURL = '';
    extensions = [];
    abr = emptyABR();
    syncMenu();
    if (session) {
      session.close();
      session = null;
    }
    if (pc) {
      pc.ontrack = null;
      pc.onconnectionstatechange = null;
      pc.close();
      pc = null;
    }
  }

  async function connect() {
    const my = ++gen;
    teardown();
    status('connecting', 'connecting');
    try {
      if (typeof RTCPeerConnection !== 'function') throw new Error('this browser has no WebRTC');
      const url = whepURL();
      whepURLEl.textContent = window.location.origin + url;
      const ice = await C.iceServers(url);
      if (my !== gen) return;
      const p = pc = new RTCPeerConnection({ iceServers: ice });
      p.addTransceiver('video', { direction: 'recvonly' });
      p.addTransceiver('audio', { direction: 'recvonly' });
      const ms = new MediaStream();
      p.ontrack = (e) => {
        ms.addTrack(e.track);
        if (video.srcObject !== ms) video.srcObject = ms;
        video.play().catch(() => {}); // muted autoplay; a refusal is not fatal
      };
      p.onconnectionstatechange = () => {
        if (my === gen) onState(p.connectionState);
      };
      const s = session = new C.Session(url);
      await s.start(p);
      if (my !== gen) return;
      dropHop();
      layerURL = s.link(LAYER_REL);
      const sse = s.link(SSE_REL);
      extensions = (sse ? ['events'] : []).concat(layerURL ? ['layer'] : []);
      if (sse) subscribe(sse, my);
      refreshInfo();
    } catch (err) {
      if (my !== gen) return;
      retry(C.describe(err));
    }
  }

  function onState(state) {
    switch (state) {
      case 'connected':
        clearTimeout(graceTimer);
        graceTimer = 0;
        attempt = 0;
        status('connected', 'connected');
        break;
      case 'disconnected':
      case 'failed':
        status('connection ' + state, 'retrying');
        // ICE can recover from a short blip, so give it GRACE_MS, counted
        // from the first bad state, before starting over.
        if (!graceTimer) {
          graceTimer = setTimeout(() => {
            graceTimer = 0;
            retry('connection ' + state);
          }, GRACE_MS);
        }
        break;
      case 'closed':
        retry('connection closed');
        break;
      default:
        status(state, 'connecting');
    }
  }

  // retry abandons the current session and schedules a new one with
  // exponential backoff (1 s, 2 s, 4 s … 10 s), so a stream that is not
  // live yet (404) is picked up soon after it starts without hammering
  // the server.
  function retry(reason) {
    gen++;
    teardown();
    const delay = Math.min(BACKOFF_MIN_MS * Math.pow(2, attempt), BACKOFF_MAX_MS);
    attempt++;
    reconnects++;
    status(reason + ', retrying in ' + Math.round(delay / 1000) + ' s', 'retrying');
    retryTimer = setTimeout(connect, delay);
  }

  async function refreshInfo() {
    try {
      const res = await fetch(infoURL, { cache: 'no-store' });
      if (!res.ok) return;
      const s = await res.json();
      const list = Array.isArray(s.renditions) ? s.renditions : [];
      const want = params.get('rendition');
      const chosen = (want && list.find((r) => r.name === want)) || list[0];
      rendition = chosen ? chosen.name : '';
    } catch (e) {
      // Stats are best effort; keep the last known name.
    }
  }

  // subscribe follows the session's event stream. EventSource reconnects
  // by itself after a network error; once the session is gone the server
  // answers 404 and EventSource gives up. Every payload is checked: the
  // page trusts the shapes no more than any other input.
  function subscribe(url, my) {
    if (typeof EventSource !== 'function') return;
    const es = events = new EventSource(url);
    const on = (name, fn) => es.addEventListener(name, (e) => {
      if (my !== gen || events !== es) return;
      let d;
      try {
        d = JSON.parse(e.data);
      } catch (err) {
        return;
      }
      if (d && typeof d === 'object' && !Array.isArray(d)) {
        fn(d);
        drawABR();
      }
    });
    on('layers', onLayers);
    on('switch', (d) => {
      // An empty "to" is a switch to no video (see the "video" event).
      const to = str(d.to);
      abr.lastSwitch = { from: str(d.from), to, reason: str(d.reason) };
      if (num(d.estimate)) abr.estimate = num(d.estimate);
      if (!to) return;
      abr.current = to;
      // While pinned, the server switches only to the pinned rung.
      if (abr.pinnedTo) abr.pinnedTo = to;
      syncMenu();
    });
    on('estimate', (d) => {
      abr.estimate = num(d.bps);
      if (str(d.rendition)) abr.current = str(d.rendition);
    });
    on('video', (d) => {
      abr.videoPaused = d.paused === true;
      abr.videoReason = str(d.reason);
    });
    // "reconnect" is the draft's name; "move" is accepted as well.
    on('reconnect', move);
    on('move', move);
  }

  function str(v) {
    return typeof v === 'string' ? v.slice(0, 64) : '';
  }

  function num(v) {
    return typeof v === 'number' && isFinite(v) && v > 0 ? v : 0;
  }

  function onLayers(d) {
    const list = Array.isArray(d.renditions) ? d.renditions.slice(0, MAX_RUNGS) : [];
    abr.renditions = list
      .filter((r) => r && typeof r.name === 'string' && RUNG_RE.test(r.name))
      .map((r) => ({ name: r.name, width: num(r.width), height: num(r.height), bitrate: num(r.bitrate) }));
    if (str(d.current)) abr.current = str(d.current);
    // A pin takes effect at the next keyframe: until the "switch", current
    // is still the old rung, so keep the rung the viewer chose.
    const keep = abr.pinnedTo && abr.renditions.some((r) => r.name === abr.pinnedTo);
    abr.pinnedTo = d.pinned === true ? (keep ? abr.pinnedTo : abr.current) : '';
    abr.live = true;
    syncMenu();
  }

  // dropHop forgets the cluster's hop marker once a node has taken the
  // session. A move to another node's player carries it, so that node
  // serves the first POST rather than sending it on; later reconnects
  // (say, after this node drains too) must be free to be redirected again.
  function dropHop() {
    if (!params.has(HOP_PARAM) && !endpoint.query.has(HOP_PARAM)) return;
    params.delete(HOP_PARAM);
    endpoint.query.delete(HOP_PARAM);
    const qs = params.toString();
    window.history.replaceState(null, '', window.location.pathname + (qs ? '?' + qs : ''));
    whepURLEl.textContent = window.location.origin + whepURL();
  }

  // move starts a new session where the server says (the WHEP "reconnect"
  // event): at url if given, else at the same endpoint. This page may talk
  // only to its own origin (its CSP), so a move to another node opens
  // that node's player instead.
  function move(d) {
    let target = null;
    if (typeof d.url === 'string' && d.url !== '') {
      if (d.url.length > 2048) return;
      try {
        target = new URL(d.url, window.location.href);
      } catch (e) {
        return;
      }
      if (target.protocol !== 'http:' && target.protocol !== 'https:') return;
    }
    if (target && target.origin !== window.location.origin) {
      const m = /^\/whep\/([A-Za-z0-9][A-Za-z0-9._-]{0,127})\/?$/.exec(target.pathname);
      if (!m) return;
      const q = new URLSearchParams(params);
      new URLSearchParams(target.search).forEach((v, k) => q.set(k, v));
      const qs = q.toString();
      gen++;
      teardown();
      status('moving to ' + target.host, 'connecting');
      window.location.assign(target.origin + '/watch/' + m[1] + (qs ? '?' + qs : ''));
      return;
    }
    if (target) endpoint = { path: target.pathname, query: new URLSearchParams(target.search) };
    attempt = 0;
    reconnects++;
    connect();
  }

  // syncMenu rebuilds the quality menu from the "layers" event (only when
  // the rungs change, so an open menu is not disturbed) and shows the
  // current choice.
  let menuKey = '';
  function syncMenu() {
    const show = abr.live && layerURL !== '' && abr.renditions.length > 0;
    qualityField.hidden = !show;
    if (!show) return;
    const key = abr.renditions.map((r) => r.name).join(',');
    if (key !== menuKey) {
      menuKey = key;
      const opts = [new Option('Auto', 'auto')];
      for (const r of abr.renditions) {
        const label = r.name + (r.bitrate ? ' \u00b7 ' + C.formatBitrate(r.bitrate) : '');
        opts.push(new Option(label, r.name));
      }
      quality.replaceChildren(...opts);
    }
    const want = abr.renditions.some((r) => r.name === abr.pinnedTo) ? abr.pinnedTo : 'auto';
    if (!quality.disabled) quality.value = want;
  }

  quality.addEventListener('change', async () => {
    const choice = quality.value;
    const url = layerURL;
    if (!url) return;
    quality.disabled = true;
    qualityNote.textContent = '';
    try {
      const res = await fetch(url, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ rendition: choice }),
        cache: 'no-store',
      });
      if (!res.ok) throw new C.HTTPError(res.status, C.oneLine(await res.text()) || res.statusText);
      // Keep the choice for the next session and for a reload.
      if (choice === 'auto') params.delete('rendition');
      else params.set('rendition', choice);
      const qs = params.toString();
      history.replaceState(null, '', window.location.pathname + (qs ? '?' + qs : ''));
      whepURLEl.textContent = window.location.origin + whepURL();
      if (url === layerURL) abr.pinnedTo = choice === 'auto' ? '' : choice;
    } catch (err) {
      qualityNote.textContent = 'quality: ' + C.describe(err);
    } finally {
      quality.disabled = false;
      syncMenu();
    }
  });

  // inbound computes the per-second figures for one inbound-rtp entry.
  function inbound(kind, r, report) {
    const p = prev[kind];
    prev[kind] = r;
    const out = {
      bitrate: 0,
      packetsLost: r.packetsLost || 0,
      jitterBufferMs: 0,
      codec: '',
    };
    const dt = p ? r.timestamp - p.timestamp : 0;
    if (dt > 0) {
      out.bitrate = Math.max(0, (r.bytesReceived - p.bytesReceived) * 8 * 1000 / dt);
    }
    // Jitter-buffer delay over the last second when there is one: the
    // lifetime average hides the changes the overlay is there to show.
    const dn = p ? (r.jitterBufferEmittedCount || 0) - (p.jitterBufferEmittedCount || 0) : 0;
    if (dn > 0) {
      out.jitterBufferMs = ((r.jitterBufferDelay || 0) - (p.jitterBufferDelay || 0)) / dn * 1000;
    } else if (r.jitterBufferEmittedCount > 0) {
      out.jitterBufferMs = r.jitterBufferDelay / r.jitterBufferEmittedCount * 1000;
    }
    const codec = r.codecId && report.get(r.codecId);
    if (codec && codec.mimeType) out.codec = codec.mimeType.replace(/^(video|audio)\//, '');
    if (kind === 'video') {
      out.width = r.frameWidth || video.videoWidth || 0;
      out.height = r.frameHeight || video.videoHeight || 0;
      out.framesDecoded = r.framesDecoded || 0;
      out.framesDropped = r.framesDropped || 0;
      // framesPerSecond is missing in some browsers and lags at start-up;
      // fall back to the decoded-frames delta.
      out.fps = r.framesPerSecond || 0;
      if (!out.fps && dt > 0) {
        out.fps = Math.max(0, ((r.framesDecoded || 0) - (p.framesDecoded || 0)) * 1000 / dt);
      }
    }
    return out;
  }

  async function sample() {
    tick++;
    const p = pc;
    const s = emptyStats();
    s.state = statusEl.dataset.state || 'connecting';
    s.reconnects = reconnects;
    Object.assign(s, abrFields());
    if (p) {
      if (s.state === 'connected' && tick % INFO_EVERY === 0) refreshInfo();
      try {
        const report = await p.getStats();
        if (p !== pc) return; // replaced while we waited
        let v = null;
        let a = null;
        report.forEach((r) => {
          if (r.type !== 'inbound-rtp') return;
          const kind = r.kind || r.mediaType;
          if (kind === 'video') v = r;
          else if (kind === 'audio') a = r;
        });
        if (v) {
          const x = inbound('video', v, report);
          Object.assign(s, {
            width: x.width, height: x.height, fps: x.fps,
            framesDecoded: x.framesDecoded, framesDropped: x.framesDropped,
            bitrate: x.bitrate, packetsLost: x.packetsLost,
            jitterBufferMs: x.jitterBufferMs, codec: x.codec,
          });
        }
        if (a) {
          const x = inbound('audio', a, report);
          s.audio = { codec: x.codec, bitrate: x.bitrate, packetsLost: x.packetsLost, jitterBufferMs: x.jitterBufferMs };
        }
      } catch (e) {
        // getStats fails on a closed pc; show the empty sample.
      }
    }
    window.cascadeStats = s;
    draw(s);
  }

  // The overlay's rows are created once and only their text changes.
  const cells = {};
  function row(key, label) {
    const dt = document.createElement('dt');
    dt.textContent = label;
    const dd = document.createElement('dd');
    dd.dataset.key = key;
    statsEl.append(dt, dd);
    cells[key] = dd;
  }
  row('rendition', 'rendition');
  row('estimate', 'estimate');
  row('switch', 'last switch');
  row('resolution', 'resolution');
  row('fps', 'fps');
  row('bitrate', 'video');
  row('audio', 'audio');
  row('lost', 'lost');
  row('jitter', 'jitter buf');
  row('decoded', 'decoded');

  // abrFields are the sample's fields that the server's events set.
  function abrFields() {
    return {
      rendition: abr.current || rendition,
      extensions: extensions.slice(),
      events: abr.live,
      renditions: abr.renditions.map((r) => r.name),
      pinned: abr.pinnedTo !== '',
      estimate: abr.estimate,
      lastSwitch: abr.lastSwitch,
      videoPaused: abr.videoPaused,
    };
  }

  // drawABR shows what an event said at once, in a copy of the last
  // sample, rather than a second later.
  function drawABR() {
    window.cascadeStats = Object.assign({}, window.cascadeStats, abrFields());
    draw(window.cascadeStats);
  }

  function draw(s) {
    let name = s.rendition || '—';
    if (s.rendition && s.events) name += s.pinned ? ' (pinned)' : ' (auto)';
    if (s.videoPaused) name += ' \u00b7 video paused' + (abr.videoReason ? ' (' + abr.videoReason + ')' : '');
    cells.rendition.textContent = name;
    cells.estimate.textContent = s.estimate ? C.formatBitrate(s.estimate) : '—';
    const w = s.lastSwitch;
    cells.switch.textContent = w ? (w.from || '?') + ' \u2192 ' + (w.to || 'no video') + (w.reason ? ' (' + w.reason + ')' : '') : '—';
    cells.resolution.textContent = s.width && s.height ? s.width + 'x' + s.height + (s.codec ? ' ' + s.codec : '') : '—';
    cells.fps.textContent = s.fps ? s.fps.toFixed(1) : '0';
    cells.bitrate.textContent = C.formatBitrate(s.bitrate);
    cells.audio.textContent = s.audio ? C.formatBitrate(s.audio.bitrate) + (s.audio.codec ? ' ' + s.audio.codec : '') : '—';
    cells.lost.textContent = String(s.packetsLost + (s.audio ? s.audio.packetsLost : 0));
    cells.jitter.textContent = Math.round(s.jitterBufferMs) + ' ms';
    cells.decoded.textContent = String(s.framesDecoded);
  }

  function syncUnmute() {
    unmuteBtn.textContent = video.muted ? 'Unmute' : 'Mute';
  }
  unmuteBtn.addEventListener('click', () => {
    video.muted = !video.muted;
    syncUnmute();
    video.play().catch(() => {});
  });
  video.addEventListener('volumechange', syncUnmute);

  // pagehide (not unload) also covers the back/forward cache; the DELETE
  // is sent with keepalive so it outlives the page.
  window.addEventListener('pagehide', () => {
    gen++;
    teardown();
  });
  window.addEventListener('pageshow', (e) => {
    if (e.persisted) {
      attempt = 0;
      connect();
    }
  });

  draw(window.cascadeStats);
  setInterval(sample, 1000);
  connect();
})();
