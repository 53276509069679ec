"""The page ``nerfhead serve`` shows at ``/``: one self-contained HTML file (no CDN: the
server may run where nothing outside is reachable)."""

PAGE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>nerfhead serve</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2em; max-width: 52em; }
 video { width: 384px; height: 384px; background: #222; image-rendering: auto; }
 #stats { font-family: monospace; white-space: pre; }
 .err { color: #b00; }
 fieldset { margin: 1em 0; }
</style>
</head>
<body>
<h1>nerfhead serve</h1>
<p id="run"></p>
<fieldset>
 <legend>Audio that drives the speaker</legend>
 <label><input type="radio" name="src" value="mic" checked> microphone (use headphones: the
  speaker's voice comes back)</label><br>
 <label><input type="radio" name="src" value="file"> a file to play:
  <input type="file" id="file" accept="audio/*,video/*"></label>
</fieldset>
<button id="start">Start</button> <button id="stop" disabled>Stop</button>
<p class="err" id="error"></p>
<video id="video" autoplay playsinline></video>
<div id="stats"></div>
<script>
const token = new URLSearchParams(location.search).get("token") || "";
const auth = token ? {"Authorization": "Bearer " + token} : {};
let pc = null, session = null, timer = null, mic = null;
const $ = (id) => document.getElementById(id);

function showError(msg) { $("error").textContent = msg || ""; }

async function api(path, opts = {}) {
  opts.headers = Object.assign({}, opts.headers || {}, auth);
  const r = await fetch(path, opts);
  let body = null;
  try { body = await r.json(); } catch (e) { body = {error: r.statusText}; }
  if (!r.ok) {
    const msg = r.status === 503 ? "busy: " + (body.message || "all sessions are in use")
              : (body.error || r.statusText);
    throw new Error(msg);
  }
  return body;
}

async function health() {
  try {
    const h = await api("/api/health");
    $("run").textContent = `run ${h.run} (step ${h.step}, ${h.size[0]}x${h.size[1]}, ` +
      `${h.audio_kind} features); sessions ${h.sessions}/${h.max_sessions}; ` +
      `render ${h.expected_render_ms} ms/frame; motion: ${h.motion}; ${h.blinks}`;
  } catch (e) { showError(e.message); }
}

async function start() {
  showError("");
  const src = document.querySelector("input[name=src]:checked").value;
  const file = $("file").files[0];
  if (src === "file" && !file) { showError("choose a file first"); return; }
  $("start").disabled = true;
  try {
    pc = new RTCPeerConnection();
    const stream = new MediaStream();
    pc.ontrack = (e) => { stream.addTrack(e.track); $("video").srcObject = stream; };
    if (src === "mic") {
      mic = await navigator.mediaDevices.getUserMedia(
        {audio: {echoCancellation: true, noiseSuppression: false, channelCount: 1}});
      mic.getTracks().forEach((t) => pc.addTrack(t, mic));
    } else {
      pc.addTransceiver("audio", {direction: "recvonly"});
    }
    pc.addTransceiver("video", {direction: "recvonly"});
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
      if (pc.iceGatheringState === "complete") return resolve();
      pc.addEventListener("icegatheringstatechange", () => {
        if (pc.iceGatheringState === "complete") resolve();
      });
    });
    const answer = await api("/api/offer", {method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({sdp: pc.localDescription.sdp, type: pc.localDescription.type})});
    session = answer.session;
    await pc.setRemoteDescription(answer);
    if (src === "file") {
      await api(`/api/sessions/${session}/audio`, {method: "POST", body: file});
    }
    $("stop").disabled = false;
    timer = setInterval(poll, 500);
  } catch (e) {
    showError(e.message);
    await stop();
  }
}

async function poll() {
  if (!session) return;
  try {
    const s = await api(`/api/sessions/${session}`);
    let jb = "";
    if (pc) {
      const rep = await pc.getStats();
      rep.forEach((r) => {
        if (r.type === "inbound-rtp" && r.jitterBufferEmittedCount)
          jb += ` ${r.kind} jitter buffer ${(1000 * r.jitterBufferDelay / r.jitterBufferEmittedCount).toFixed(0)} ms;`;
      });
    }
    $("stats").textContent =
      `session ${s.session}  ${s.seconds} s\n` +
      `A/V offset now ${s.av_offset_ms} ms (mean ${s.av_offset_mean_ms}, max ${s.av_offset_max_ms}): the picture lags the sound by this\n` +
      `rendered ${s.rendered} frames at ${s.render_fps} FPS (${s.render_ms} ms each); dropped ${s.dropped}, repeated ${s.repeated} of ${s.shown} shown\n` +
      `latency in the server ${s.latency_ms} ms (audio arrival to its sound and frame leaving; delay ${s.delay_ms} ms, of it audio look-ahead ${s.lookahead_ms} ms)\n` +
      `browser:${jb || " -"}\n` +
      `audio pushed ${s.audio_pushed_s} s, queued ${s.queued_s} s, silence filled ${s.silence_filled_s} s` +
      (s.error ? `\nerror: ${s.error}` : "");
  } catch (e) {
    showError(e.message);
    await stop();
  }
}

async function stop() {
  clearInterval(timer);
  if (session) { try { await api(`/api/sessions/${session}`, {method: "DELETE"}); } catch (e) {} }
  session = null;
  if (pc) pc.close();
  pc = null;
  if (mic) mic.getTracks().forEach((t) => t.stop());
  mic = null;
  $("start").disabled = false;
  $("stop").disabled = true;
  health();
}

$("start").onclick = start;
$("stop").onclick = stop;
health();
</script>
</body>
</html>
"""
