// watch.js: the WHEP player. Connects on load, reconnects by itself with
// backoff, and keeps a stats overlay and window.cascadeStats up to date.
'use strict';

(function () {
  const C = window.Cascade;
  const stream = C.streamName();
  // The page's query string goes through to the POST (e.g. ?rendition=480p):
  // the WHEP endpoint, not this page, interprets it.
  const whepURL = '/whep/' + encodeURIComponent(stream) + window.location.search;
  const infoURL = '/v1/streams/' + encodeURIComponent(stream);
  const wantRendition = new URLSearchParams(window.location.search).get('rendition');

  const GRACE_MS = 3000; // how long "disconnected"/"failed" may last before we reconnect
  const BACKOFF_MIN_MS = 1000;
  const BACKOFF_MAX_MS = 10000;
  const INFO_EVERY = 5; // refresh /v1/streams/{stream} every N stats ticks

  const video = document.getElementById('video');
  const statusEl = document.getElementById('status');
  const statsEl = document.getElementById('stats');
  const unmuteBtn = document.getElementById('unmute');

  document.getElementById('whep-url').textContent = window.location.origin + whepURL;

  let pc = null;
  let session = null;
  let gen = 0; // bumped whenever a connection attempt is abandoned
  let attempt = 0; // failed attempts since the last "connected", for backoff
  let retryTimer = 0;
  let graceTimer = 0;
  let reconnects = 0;
  let prev = {}; // last inbound-rtp sample per kind, for per-second deltas
  let rendition = '';
  let tick = 0;

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
      updated: Date.now(),
    };
  }

  // window.cascadeStats is the latest sample. It is replaced by a fresh
  // object every second (only .state changes in between), so a reader never
  // sees half of one sample and half of the next.
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
      const ice = await C.iceServers(whepURL);
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
      const s = session = new C.Session(whepURL);
      await s.start(p);
      if (my !== gen) return;
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
      const chosen = (wantRendition && list.find((r) => r.name === wantRendition)) || list[0];
      rendition = chosen ? chosen.name : '';
    } catch (e) {
      // Stats are best effort; keep the last known name.
    }
  }

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
    s.rendition = rendition;
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
  row('resolution', 'resolution');
  row('fps', 'fps');
  row('bitrate', 'video');
  row('audio', 'audio');
  row('lost', 'lost');
  row('jitter', 'jitter buf');
  row('decoded', 'decoded');

  function draw(s) {
    cells.rendition.textContent = s.rendition || '—';
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
