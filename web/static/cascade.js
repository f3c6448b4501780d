// cascade.js: helpers shared by the Cascade pages (WHIP/WHEP sessions,
// ICE gathering, codec preference, formatting). Plain script, no build step
// and no dependencies, exposed as window.Cascade.
'use strict';

(function () {
  // The server-side stream name contract, checked again here so the index
  // form can refuse a bad name before navigating.
  const STREAM_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

  // How long to wait for ICE gathering before sending the offer anyway.
  // Host candidates arrive at once; a slow STUN/TURN server must not hold
  // up start-up, and the server's own candidates usually suffice.
  const ICE_WAIT_MS = 2000;

  // HTTPError carries the status and the server's one-line plain-text reason.
  class HTTPError extends Error {
    constructor(status, reason) {
      super(reason ? status + ' ' + reason : 'HTTP ' + status);
      this.name = 'HTTPError';
      this.status = status;
      this.reason = reason;
    }
  }

  // streamName returns the name the server validated and wrote into
  // <body data-stream>; reading it from the DOM means the scripts never
  // parse the URL or build HTML from it.
  function streamName() {
    return document.body.dataset.stream || '';
  }

  function validName(name) {
    return STREAM_RE.test(name);
  }

  // setStatus shows text in a status element; data-state is a small fixed
  // vocabulary (idle, connecting, connected, retrying, error, stopped) that
  // the CSS and automated tests key on, while the text is for people.
  function setStatus(el, text, state) {
    el.textContent = text;
    el.dataset.state = state || '';
  }

  function oneLine(s) {
    return String(s || '').trim().split('\n')[0].slice(0, 300);
  }

  function describe(err) {
    if (!err) return 'unknown error';
    if (err instanceof HTTPError) return err.message;
    if (err.name && err.message) return err.name + ': ' + err.message;
    return String(err.message || err);
  }

  // waitIceGathering resolves once gathering is complete or after ms,
  // whichever comes first. We send one offer with all candidates instead
  // of trickling them.
  function waitIceGathering(pc, ms) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      let timer = 0;
      const done = () => {
        clearTimeout(timer);
        pc.removeEventListener('icegatheringstatechange', check);
        resolve();
      };
      const check = () => {
        if (pc.iceGatheringState === 'complete') done();
      };
      timer = setTimeout(done, ms === undefined ? ICE_WAIT_MS : ms);
      pc.addEventListener('icegatheringstatechange', check);
    });
  }

  // parseLinks splits a Link header (RFC 8288) into {url, params}
  // entries, params keyed by lower-case name. fetch joins repeated headers
  // with ", "; quoted values may contain commas. At most 32 links are read.
  function parseLinks(header) {
    const out = [];
    if (!header) return out;
    const linkRe = /<([^>]*)>((?:\s*;\s*[A-Za-z-]+\s*=\s*(?:"[^"]*"|[^;,]*))*)/g;
    const paramRe = /;\s*([A-Za-z-]+)\s*=\s*(?:"([^"]*)"|([^;,]*))/g;
    let m;
    while ((m = linkRe.exec(header)) !== null && out.length < 32) {
      const params = {};
      let p;
      while ((p = paramRe.exec(m[2])) !== null) {
        params[p[1].toLowerCase()] = p[2] !== undefined ? p[2] : p[3].trim();
      }
      out.push({ url: m[1], params });
    }
    return out;
  }

  // parseIceLinks turns Link headers (RFC 9725 section 4.6) into
  // RTCIceServer entries.
  function parseIceLinks(header) {
    const out = [];
    for (const { url, params } of parseLinks(header)) {
      if (params.rel !== 'ice-server') continue;
      const server = { urls: url };
      if (params.username !== undefined) {
        server.username = params.username;
        server.credential = params.credential || '';
      }
      out.push(server);
    }
    return out;
  }

  // iceServers asks the endpoint (OPTIONS) for the STUN/TURN servers the
  // node is configured with. Any failure just means "none": the pages
  // still work wherever the node is directly reachable.
  async function iceServers(url) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), ICE_WAIT_MS);
    try {
      const res = await fetch(url, { method: 'OPTIONS', signal: ctl.signal, cache: 'no-store' });
      return parseIceLinks(res.headers.get('Link'));
    } catch (e) {
      return [];
    } finally {
      clearTimeout(timer);
    }
  }

  // preferH264 puts H264 (packetization-mode=1) first on a video
  // transceiver, since that is what the server forwards without
  // transcoding. It returns false, and changes nothing, where the browser
  // cannot (no setCodecPreferences, no H264).
  function preferH264(transceiver) {
    if (!transceiver || typeof transceiver.setCodecPreferences !== 'function') return false;
    // Chrome has at times validated the list against receiver rather than
    // sender capabilities; try both before giving up.
    const sources = [window.RTCRtpSender, window.RTCRtpReceiver];
    for (const src of sources) {
      try {
        const caps = src && src.getCapabilities && src.getCapabilities('video');
        if (!caps || !caps.codecs) continue;
        const h264 = caps.codecs.filter((c) =>
          c.mimeType.toLowerCase() === 'video/h264' &&
          /(^|;)\s*packetization-mode=1/.test(c.sdpFmtpLine || ''));
        if (h264.length === 0) continue;
        const rest = caps.codecs.filter((c) => !h264.includes(c));
        transceiver.setCodecPreferences(h264.concat(rest));
        return true;
      } catch (e) {
        // try the next capability list
      }
    }
    return false;
  }

  // Session is one WHIP or WHEP resource: POST the offer, remember the
  // Location and the Link headers, DELETE it when done.
  class Session {
    constructor(url, token) {
      this.url = url;
      this.token = token || '';
      this.location = null;
      this.links = [];
      this.base = '';
      this.closed = false;
    }

    // link returns the absolute URL of the 201's Link with rel, or '':
    // how the server advertises the WHEP extensions of this session.
    link(rel) {
      const l = this.links.find((x) => x.params.rel === rel);
      if (!l) return '';
      try {
        // A Link's URL is relative to the request's (RFC 8288 section 3.2).
        return new URL(l.url, this.base || window.location.href).href;
      } catch (e) {
        return '';
      }
    }

    headers(extra) {
      const h = Object.assign({}, extra);
      if (this.token) h.Authorization = 'Bearer ' + this.token;
      return h;
    }

    // start negotiates pc: offer, wait for ICE, POST, set the answer.
    async start(pc) {
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      await waitIceGathering(pc);
      if (this.closed) throw new Error('session closed');
      const res = await fetch(this.url, {
        method: 'POST',
        headers: this.headers({ 'Content-Type': 'application/sdp' }),
        body: pc.localDescription.sdp,
        cache: 'no-store',
      });
      const body = await res.text();
      if (!res.ok) throw new HTTPError(res.status, oneLine(body) || res.statusText);
      const loc = res.headers.get('Location');
      if (loc) this.location = new URL(loc, res.url || window.location.href).href;
      this.base = res.url || window.location.href;
      this.links = parseLinks(res.headers.get('Link'));
      if (this.closed) {
        // close() ran while the POST was in flight: free the resource the
        // server just created, or it would linger until ICE times out.
        this.close();
        throw new Error('session closed');
      }
      await pc.setRemoteDescription({ type: 'answer', sdp: body });
    }

    // close DELETEs the resource. keepalive lets the request outlive the
    // page, so it also works from pagehide.
    close() {
      this.closed = true;
      const loc = this.location;
      this.location = null;
      if (!loc) return Promise.resolve();
      return fetch(loc, { method: 'DELETE', headers: this.headers(), keepalive: true, cache: 'no-store' })
        .catch(() => {});
    }
  }

  function formatBitrate(bps) {
    if (!bps || !isFinite(bps)) return '0 kb/s';
    if (bps >= 1e6) return (bps / 1e6).toFixed(2) + ' Mb/s';
    return Math.round(bps / 1e3) + ' kb/s';
  }

  window.Cascade = {
    HTTPError,
    Session,
    describe,
    formatBitrate,
    iceServers,
    oneLine,
    parseIceLinks,
    parseLinks,
    preferH264,
    setStatus,
    streamName,
    validName,
    waitIceGathering,
  };
})();
