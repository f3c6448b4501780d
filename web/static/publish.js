// publish.js: the browser WHIP publisher. Captures the camera or the
// screen, sends it with one sendonly video and one sendonly audio
// transceiver, and DELETEs the WHIP resource on Stop or when the page goes.
'use strict';

(function () {
  const C = window.Cascade;
  const stream = C.streamName();
  const whipURL = '/whip/' + encodeURIComponent(stream);

  const startBtn = document.getElementById('start');
  const stopBtn = document.getElementById('stop');
  const tokenIn = document.getElementById('token');
  const preview = document.getElementById('preview');
  const statusEl = document.getElementById('status');
  const info = document.getElementById('info');
  const sourceInputs = document.querySelectorAll('input[name="source"]');

  document.getElementById('whip-url').textContent = window.location.origin + whipURL;

  let pc = null;
  let session = null;
  let media = null;
  let gen = 0; // bumped by every start/stop, so late callbacks of an old run are ignored
  let statsTimer = 0;
  let prevOut = null;

  // window.cascadePublishStats is the latest outbound video sample, for
  // automated tests and debugging.
  window.cascadePublishStats = { state: 'idle', framesEncoded: 0, width: 0, height: 0, bitrate: 0, codec: '' };

  function status(text, state) {
    C.setStatus(statusEl, text, state);
    window.cascadePublishStats.state = state;
  }

  function setRunning(running) {
    startBtn.disabled = running;
    stopBtn.disabled = !running;
    tokenIn.disabled = running;
    sourceInputs.forEach((el) => { el.disabled = running; });
  }

  function selectedSource() {
    const el = document.querySelector('input[name="source"]:checked');
    return el ? el.value : 'camera';
  }

  async function capture(source) {
    const md = navigator.mediaDevices;
    if (!md) throw new Error('capture needs a secure context: open this page over HTTPS or on localhost');
    if (source === 'screen') {
      if (!md.getDisplayMedia) throw new Error('this browser cannot share the screen');
      return md.getDisplayMedia({ video: { frameRate: { ideal: 30 } }, audio: true });
    }
    const video = { width: 1280, height: 720 };
    try {
      return await md.getUserMedia({ video, audio: true });
    } catch (err) {
      // No microphone (or it is busy) should not stop a video publish.
      if (err && (err.name === 'NotFoundError' || err.name === 'NotReadableError' || err.name === 'OverconstrainedError')) {
        return md.getUserMedia({ video });
      }
      throw err;
    }
  }

  // teardown releases everything from a run; the DELETE is fire-and-forget.
  function teardown() {
    clearInterval(statsTimer);
    statsTimer = 0;
    prevOut = null;
    if (session) {
      session.close();
      session = null;
    }
    if (pc) {
      pc.onconnectionstatechange = null;
      pc.close();
      pc = null;
    }
    if (media) {
      media.getTracks().forEach((t) => t.stop());
      media = null;
    }
    preview.srcObject = null;
  }

  async function start() {
    const my = ++gen;
    teardown();
    setRunning(true);
    info.textContent = '';
    const source = selectedSource();
    try {
      if (typeof RTCPeerConnection !== 'function') throw new Error('this browser has no WebRTC');
      status(source === 'screen' ? 'choose a screen to share' : 'requesting camera', 'connecting');
      const m = await capture(source);
      if (my !== gen) { // Stop was pressed while the permission prompt was up
        m.getTracks().forEach((t) => t.stop());
        return;
      }
      media = m;
      preview.srcObject = m;
      m.getVideoTracks().forEach((t) => t.addEventListener('ended', () => {
        // The browser's own "stop sharing" button ends the track.
        if (my === gen) stop('capture ended');
      }));

      status('connecting', 'connecting');
      const ice = await C.iceServers(whipURL);
      if (my !== gen) return;
      const p = pc = new RTCPeerConnection({ iceServers: ice });
      const vt = m.getVideoTracks()[0];
      const at = m.getAudioTracks()[0];
      // Always offer both m-lines, even without a microphone, so the
      // server sees the same shape of offer from every publisher.
      const vtr = p.addTransceiver(vt || 'video', { direction: 'sendonly', streams: [m] });
      p.addTransceiver(at || 'audio', { direction: 'sendonly', streams: [m] });
      const h264 = C.preferH264(vtr);
      p.onconnectionstatechange = () => {
        if (my === gen) onState(p.connectionState);
      };

      session = new C.Session(whipURL, tokenIn.value.trim());
      await session.start(p);
      if (my !== gen) return;
      info.textContent = (h264 ? 'H264 preferred' : 'H264 preference not supported by this browser; the browser picks the codec') +
        (at ? '' : ' · no audio track');
      statsTimer = setInterval(() => sample(my), 1000);
    } catch (err) {
      if (my !== gen) return;
      teardown();
      setRunning(false);
      status('error: ' + C.describe(err), 'error');
    }
  }

  function onState(state) {
    switch (state) {
      case 'connected':
        status('publishing', 'connected');
        break;
      case 'disconnected':
        // ICE often recovers by itself; say so rather than giving up.
        status('connection interrupted, waiting…', 'retrying');
        break;
      case 'failed':
      case 'closed':
        gen++;
        teardown();
        setRunning(false);
        status('connection ' + state + ': press Start to try again', 'error');
        break;
      default:
        status(state, 'connecting');
    }
  }

  function stop(reason) {
    gen++;
    teardown();
    setRunning(false);
    status(reason || 'stopped', 'stopped');
  }

  async function sample(my) {
    const p = pc;
    if (!p || my !== gen) return;
    let out = null;
    let codec = '';
    try {
      const report = await p.getStats();
      report.forEach((r) => {
        if (r.type === 'outbound-rtp' && (r.kind || r.mediaType) === 'video') out = r;
      });
      if (out && out.codecId && report.get(out.codecId)) codec = report.get(out.codecId).mimeType.replace(/^video\//, '');
    } catch (e) {
      return;
    }
    if (!out || my !== gen) return;
    let bitrate = 0;
    if (prevOut && out.timestamp > prevOut.timestamp) {
      bitrate = Math.max(0, (out.bytesSent - prevOut.bytesSent) * 8 * 1000 / (out.timestamp - prevOut.timestamp));
    }
    prevOut = out;
    const s = window.cascadePublishStats;
    s.framesEncoded = out.framesEncoded || 0;
    s.width = out.frameWidth || 0;
    s.height = out.frameHeight || 0;
    s.fps = out.framesPerSecond || 0;
    s.bitrate = bitrate;
    s.codec = codec;
    info.textContent = 'sending ' + (codec || 'video') + ' ' + s.width + 'x' + s.height +
      ' @ ' + Math.round(s.fps) + ' fps, ' + C.formatBitrate(bitrate);
  }

  startBtn.addEventListener('click', start);
  stopBtn.addEventListener('click', () => stop());
  // pagehide (not unload) also fires when the page enters the back/forward
  // cache; the DELETE uses keepalive so it survives the navigation.
  window.addEventListener('pagehide', () => {
    if (session || pc) stop();
  });

  if (!navigator.mediaDevices) {
    status('capture needs a secure context: open this page over HTTPS or on localhost', 'error');
  }
})();
