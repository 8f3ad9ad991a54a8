// Camera page: stream webcam frames to the server, draw the boxes it sends back.
// At most two frames in flight (one when drawing the <video> element, which cannot tell a new
// camera frame from an old one): while the server works on one, the next is already encoded
// and waiting in its latest-frame-wins slot, so a slow link or server never builds a backlog
// and the camera's own frame rate is reached when the server keeps up.
(function () {
  "use strict";

  const COLOURS = { with_mask: "#4caf50", mask_incorrect: "#ffa000", without_mask: "#e53935" };
  const NAMES = { with_mask: "mask", mask_incorrect: "incorrect", without_mask: "no mask" };
  const UNSURE_COLOUR = "#9e9e9e";
  const SEND_WIDTH = 640;
  const JPEG_QUALITY = 0.7;
  const ANSWER_TIMEOUT_MS = 5000;
  // A face missing from an answer keeps its last box, dashed, this long: the server looks for
  // small, far faces only on a camera's frame every 0.3 s (the detector's thorough pass) and
  // runs the cheap pass on the frames between, so far faces would otherwise blink.
  const HOLD_MS = 450;

  const $ = (id) => document.getElementById(id);
  const video = $("video");
  const overlay = $("overlay");
  const ctx = overlay.getContext("2d");
  const capture = document.createElement("canvas");
  const captureCtx = capture.getContext("2d");

  // State the page exposes for automated tests (and curious users in the console).
  const state = (window.maskwatch = {
    streaming: false, connected: false, framesSent: 0, framesAnswered: 0, errors: 0,
    lastDetections: null, boxesDrawn: 0, boxesHeld: 0, lastError: null, rtts: [], capture: null,
    cameraFrames: 0,
  });
  // Not enumerable, so reading the state as JSON (as the tests do) leaves it out.
  Object.defineProperty(state, "facesToDraw", { value: facesToDraw });

  let stream = null;
  let facing = "user";
  let seq = 0;
  const inFlight = new Map(); // seq -> {sentAt, watchdog}, in sending order

  function settle(upTo) {
    // Answers come in order: an answer (or error) for seq settles it and every earlier frame.
    for (const [s, entry] of inFlight) {
      if (upTo !== null && s > upTo) break;
      clearTimeout(entry.watchdog);
      inFlight.delete(s);
    }
  }
  let rttAvg = null;
  let answerTimes = [];

  const nameInput = $("camera-name");
  nameInput.value = localStorage.getItem("maskwatch.camera") || "";
  nameInput.addEventListener("change", () => localStorage.setItem("maskwatch.camera", nameInput.value.trim()));

  function showMessage(text, kind) {
    const box = $("message");
    box.textContent = text;
    box.className = "message " + (kind || "error");
    box.hidden = !text;
  }

  // Connected only while streaming: Stop disconnects, so a dashboard drops the camera at once.
  const socket = io({ autoConnect: false, auth: (cb) => cb({ camera: nameInput.value.trim() }) });
  const pill = $("connection");
  function setConnected(on) {
    state.connected = on;
    pill.textContent = on ? "connected" : state.streaming ? "reconnecting…" : "not streaming";
    pill.className = "pill " + (on ? "pill-on" : "pill-off");
  }
  setConnected(false);
  socket.on("connect", () => { setConnected(true); settle(null); pump(); });
  socket.on("disconnect", () => { setConnected(false); settle(null); held.clear(); });
  socket.on("connect_error", () => setConnected(false));

  socket.on("detections", (msg) => {
    const entry = inFlight.get(msg.seq);
    if (!entry) return; // a stale answer after a reconnect
    const rtt = performance.now() - entry.sentAt;
    settle(msg.seq);
    state.framesAnswered += 1;
    state.lastDetections = msg;
    rttAvg = rttAvg === null ? rtt : 0.8 * rttAvg + 0.2 * rtt;
    state.rtts.push(rtt);
    if (state.rtts.length > 1000) state.rtts.splice(0, state.rtts.length - 1000);
    const now = performance.now();
    answerTimes.push(now);
    answerTimes = answerTimes.filter((t) => now - t < 2000);
    const span = (now - answerTimes[0]) / 1000;
    $("hud-fps").textContent = span > 0 ? ((answerTimes.length - 1) / span).toFixed(1) : "–";
    $("hud-rtt").textContent = Math.round(rttAvg) + " ms";
    $("hud-faces").textContent = String(msg.faces.length);
    // The page's own cost per frame, for bench/browser.py (cleared every 500 frames).
    const t0 = performance.now();
    draw(msg);
    performance.measure("maskwatch-draw", { start: t0, end: performance.now() });
    if (state.framesAnswered % 500 === 0) performance.clearMeasures();
    pump();
  });

  // Alerts: the server confirms a person without a (correct) mask once per person.
  const banner = $("alert-banner");
  const alertMode = banner.dataset.alerts;
  const ALERT_TEXT = {
    without_mask: "No mask detected - please put on a mask.",
    mask_incorrect: "Mask worn incorrectly - please cover your nose and mouth.",
  };
  let bannerTimer = null;
  let audio = null;
  function beep() {
    try {
      audio = audio || new (window.AudioContext || window.webkitAudioContext)();
      const osc = audio.createOscillator(), gain = audio.createGain();
      osc.frequency.value = 880;
      gain.gain.setValueAtTime(0.2, audio.currentTime);
      gain.gain.exponentialRampToValueAtTime(0.001, audio.currentTime + 0.4);
      osc.connect(gain).connect(audio.destination);
      osc.start();
      osc.stop(audio.currentTime + 0.4);
    } catch (e) { /* no audio device: the banner is enough */ }
  }
  socket.on("alert", (a) => {
    state.alerts = (state.alerts || 0) + 1;
    if (alertMode === "off") return;
    banner.textContent = ALERT_TEXT[a.label] || "Please wear a mask.";
    banner.className = "alert-banner " + a.label;
    banner.hidden = false;
    clearTimeout(bannerTimer);
    bannerTimer = setTimeout(() => { banner.hidden = true; }, 5000);
    if (alertMode === "sound") beep();
  });

  socket.on("frame_error", (msg) => {
    state.errors += 1;
    state.lastError = msg;
    settle(msg.seq);
    showMessage("The server refused a frame: " + msg.message, "warning");
    setTimeout(pump, 250);
  });

  function resizeOverlay() {
    // Only when the view's size changed: resizing a canvas reallocates and clears it.
    const r = video.getBoundingClientRect();
    const dpr = window.devicePixelRatio || 1;
    const w = Math.round(r.width * dpr), h = Math.round(r.height * dpr);
    if (overlay.width === w && overlay.height === h) return;
    overlay.width = w;
    overlay.height = h;
    overlay.style.width = r.width + "px";
    overlay.style.height = r.height + "px";
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  }
  window.addEventListener("resize", resizeOverlay);

  const overlaps = (a, b) => a.x < b.x + b.w && b.x < a.x + a.w && a.y < b.y + b.h && b.y < a.y + a.h;

  // A label goes above its box, else below, else inside its top edge: the first place that
  // stays on the canvas and clear of the HUD and of labels already drawn (faces side by side).
  function placeLabel(box, tw, th, taken, width, height) {
    const candidates = [
      { x: box.x, y: box.y - th }, { x: box.x, y: box.y + box.h }, { x: box.x, y: box.y },
    ];
    for (const c of candidates) {
      const r = { x: Math.min(Math.max(c.x, 0), width - tw), y: c.y, w: tw, h: th };
      if (r.y >= 0 && r.y + th <= height && !taken.some((t) => overlaps(r, t))) return r;
    }
    const r = { x: Math.min(Math.max(box.x, 0), width - tw), y: Math.max(box.y - th, 0), w: tw, h: th };
    return r;
  }

  // The faces of this answer, then the tracks seen within HOLD_MS that it lacks ({face, held}).
  const held = new Map(); // track id -> { face, at }
  function facesToDraw(msg, now) {
    const shown = msg.faces.map((face) => ({ face, held: false }));
    for (const face of msg.faces) if (face.track) held.set(face.track, { face, at: now });
    for (const [track, entry] of held) {
      if (now - entry.at > HOLD_MS) held.delete(track);
      else if (entry.at !== now) shown.push({ face: entry.face, held: true });
    }
    return shown;
  }

  function draw(msg) {
    resizeOverlay();
    const r = video.getBoundingClientRect();
    ctx.clearRect(0, 0, r.width, r.height);
    // The video is letterboxed inside its box (object-fit: contain): map frame pixels onto it.
    const scale = Math.min(r.width / msg.width, r.height / msg.height);
    const ox = (r.width - msg.width * scale) / 2;
    const oy = (r.height - msg.height * scale) / 2;
    const small = r.width < 480;
    const fontPx = small ? 11 : 14, th = fontPx + 6;
    ctx.font = `600 ${fontPx}px system-ui, sans-serif`;
    ctx.textBaseline = "bottom";
    const hud = document.querySelector(".hud").getBoundingClientRect();
    const taken = [{ x: hud.left - r.left, y: hud.top - r.top, w: hud.width, h: hud.height }];
    const labels = [];
    const shown = facesToDraw(msg, performance.now());
    for (const { face, held: old } of shown) {
      const [x0, y0, x1, y1] = face.box;
      const box = { x: ox + x0 * scale, y: oy + y0 * scale, w: (x1 - x0) * scale, h: (y1 - y0) * scale };
      // An unsure face (calibrated score below the model's threshold) is grey and not counted.
      const colour = face.unsure ? UNSURE_COLOUR : COLOURS[face.label] || "#fff";
      ctx.lineWidth = small ? 2 : 3;
      ctx.strokeStyle = colour;
      ctx.setLineDash(old ? [6, 4] : []);
      ctx.strokeRect(box.x, box.y, box.w, box.h);
      const text = face.unsure ? "unsure" : `${NAMES[face.label] || face.label} ${Math.round(face.score * 100)}%`;
      const label = placeLabel(box, ctx.measureText(text).width + 8, th, taken, r.width, r.height);
      taken.push(label);
      labels.push(label);
      ctx.fillStyle = colour;
      ctx.fillRect(label.x, label.y, label.w, label.h);
      ctx.fillStyle = "#111";
      ctx.fillText(text, label.x + 4, label.y + label.h - 3);
    }
    state.labels = labels;
    state.hud = taken[0];
    state.boxesDrawn = shown.length;
    state.boxesHeld = shown.length - msg.faces.length;
  }

  // Where frames come from. Where the browser has MediaStreamTrackProcessor (Chromium), frames
  // are read from the camera track itself: unlike the <video> element, animation frames and
  // timers, a track keeps delivering when another tab is in front, so a door laptop used for
  // something else keeps streaming (bench/browser.py measures both). Elsewhere the page draws
  // the <video> element and says so when it is hidden.
  const TRACK_CAPTURE = typeof window.MediaStreamTrackProcessor === "function" && typeof OffscreenCanvas === "function"
    && typeof Worker === "function";
  // JPEG encoding happens in a worker (static/js/encoder.js): hidden pages have theirs deferred.
  const encoder = TRACK_CAPTURE ? new Worker("/static/js/encoder.js") : null;
  const encoding = new Map(); // id -> {resolve, reject}
  let encodeId = 0;
  if (encoder) {
    encoder.onmessage = (event) => {
      const { id, buffer, error } = event.data;
      const waiting = encoding.get(id);
      encoding.delete(id);
      if (waiting) error ? waiting.reject(new Error(error)) : waiting.resolve(buffer);
    };
  }

  function encodeInWorker(frame, width, height) {
    const id = ++encodeId;
    return new Promise((resolve, reject) => {
      encoding.set(id, { resolve, reject });
      encoder.postMessage({ id, frame, width, height, quality: JPEG_QUALITY }, [frame]);
    });
  }
  let trackCopy = null;
  let reader = null;
  let latest = null; // the newest camera frame not sent yet (a VideoFrame)
  let generation = 0; // a new camera (Start, flip, another device) starts a new reader

  async function readTrack(track) {
    const mine = ++generation;
    trackCopy = track;
    const myReader = (reader = new MediaStreamTrackProcessor({ track }).readable.getReader());
    try {
      for (;;) {
        const { value, done } = await myReader.read();
        if (done) break;
        if (mine !== generation) { value.close(); break; } // a newer reader took over
        state.cameraFrames += 1;
        if (latest) latest.close(); // only the newest frame matters: close the rest at once
        latest = value;
        pump();
      }
    } catch (err) {
      // the track ended (Stop, another camera chosen)
    }
    if (mine === generation && latest) { latest.close(); latest = null; }
  }

  // Without the track reader, a hidden page's <video> and timers slow to a crawl: say so.
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && state.streaming && state.capture === "video" && state.wasHidden) {
      showMessage("Streaming slowed down while this page was behind another tab or window: this browser " +
        "pauses hidden pages. Keep the camera page in front (Chrome or Edge keep streaming).", "warning");
    }
    state.wasHidden = document.visibilityState === "hidden";
  });

  function stopTrackReader() {
    if (reader) reader.cancel().catch(() => {});
    if (trackCopy) trackCopy.stop();
    reader = null;
    trackCopy = null;
  }

  function sendSize(vw, vh) {
    const w = Math.min(SEND_WIDTH, vw);
    return [w, Math.round((vh * w) / vw)];
  }

  function pump() {
    const limit = state.capture === "track" ? 2 : 1;
    if (!state.streaming || !state.connected || inFlight.size >= limit) return;
    if (state.capture === "track") {
      if (!latest) return; // the next camera frame calls pump again
      const frame = latest;
      latest = null;
      const [w, h] = sendSize(frame.displayWidth, frame.displayHeight);
      const t0 = performance.now();
      const bytes = encodeInWorker(frame, w, h); // the frame is transferred, the worker closes it
      performance.measure("maskwatch-capture", { start: t0, end: performance.now() });
      send(bytes);
      return;
    }
    if (video.readyState < 2) return;
    const vw = video.videoWidth, vh = video.videoHeight;
    if (!vw || !vh) { setTimeout(pump, 100); return; }
    const [w, h] = sendSize(vw, vh);
    if (capture.width !== w || capture.height !== h) { capture.width = w; capture.height = h; }
    const t0 = performance.now();
    captureCtx.drawImage(video, 0, 0, w, h);
    performance.measure("maskwatch-capture", { start: t0, end: performance.now() });
    send(new Promise((resolve) => capture.toBlob(resolve, "image/jpeg", JPEG_QUALITY))
      .then((blob) => (blob ? blob.arrayBuffer() : null)));
  }

  function send(bytesPromise) {
    const mySeq = ++seq;
    const entry = { sentAt: performance.now(), watchdog: null };
    inFlight.set(mySeq, entry);
    bytesPromise.then((image) => {
      if (!image || !inFlight.has(mySeq)) return;
      socket.emit("frame", { seq: mySeq, image, camera: nameInput.value.trim() || undefined,
        hidden: document.visibilityState === "hidden" || undefined });
      state.framesSent += 1;
      entry.watchdog = setTimeout(() => { if (inFlight.has(mySeq)) { settle(mySeq); pump(); } }, ANSWER_TIMEOUT_MS);
    }).catch(() => {
      // Encoding failed (the camera went away mid-frame): try the next frame.
      if (inFlight.has(mySeq)) { inFlight.delete(mySeq); setTimeout(pump, 250); }
    });
  }

  function cameraError(err) {
    const name = err && err.name;
    if (name === "NotAllowedError" || name === "SecurityError") {
      return "Camera permission was denied. Allow camera access for this site in the browser's " +
        "site settings (the camera icon in the address bar), then press Start camera again.";
    }
    if (name === "NotFoundError" || name === "OverconstrainedError" || name === "DevicesNotFoundError") {
      return "No camera was found. Connect a camera, or pick another one in the list, and press Start camera again.";
    }
    if (name === "NotReadableError" || name === "AbortError") {
      return "The camera is busy: close other apps or tabs that use it, then press Start camera again.";
    }
    return "The camera could not be started (" + (err && err.message ? err.message : name) + ").";
  }

  async function listDevices() {
    const select = $("device");
    const current = select.value;
    const devices = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
    select.innerHTML = "";
    const def = new Option("default", "");
    select.add(def);
    devices.forEach((d, i) => select.add(new Option(d.label || `camera ${i + 1}`, d.deviceId)));
    select.value = devices.some((d) => d.deviceId === current) ? current : "";
    $("flip").hidden = devices.length < 2;
  }

  async function start() {
    showMessage("");
    // Browsers allow sound only after a user gesture: this click is one.
    if (alertMode === "sound" && !audio) {
      try { audio = new (window.AudioContext || window.webkitAudioContext)(); } catch (e) { audio = null; }
    }
    if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      showMessage("Browsers only give cameras to secure pages. Open this page over https:// " +
        "(start the server with --certfile/--keyfile; see the README, \"Run at an entrance\"), " +
        "or on the server machine itself at http://localhost.", "error");
      return;
    }
    const [w, h] = $("resolution").value.split("x").map(Number);
    const deviceId = $("device").value;
    const constraints = {
      audio: false,
      video: deviceId ? { deviceId: { exact: deviceId }, width: { ideal: w }, height: { ideal: h } }
        : { facingMode: facing, width: { ideal: w }, height: { ideal: h } },
    };
    stopStream();
    try {
      stream = await navigator.mediaDevices.getUserMedia(constraints);
    } catch (err) {
      showMessage(cameraError(err), "error");
      return;
    }
    video.srcObject = stream;
    await video.play().catch(() => {});
    state.streaming = true;
    state.capture = TRACK_CAPTURE ? "track" : "video";
    if (TRACK_CAPTURE) readTrack(stream.getVideoTracks()[0].clone());
    if (!socket.connected) socket.connect();
    $("placeholder").hidden = true;
    $("start").hidden = true;
    $("stop").hidden = false;
    listDevices().catch(() => {});
    video.addEventListener("loadeddata", pump, { once: true });
    pump();
  }

  function stopStream() {
    stopTrackReader();
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
  }

  function stop() {
    state.streaming = false;
    held.clear();
    settle(null);
    socket.disconnect();
    stopStream();
    video.srcObject = null;
    resizeOverlay();
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    $("placeholder").hidden = false;
    $("start").hidden = false;
    $("stop").hidden = true;
    ["hud-fps", "hud-rtt", "hud-faces"].forEach((id) => ($(id).textContent = "–"));
  }

  $("start").addEventListener("click", start);
  $("stop").addEventListener("click", stop);
  $("flip").addEventListener("click", () => {
    facing = facing === "user" ? "environment" : "user";
    $("device").value = "";
    if (state.streaming) start();
  });
  $("device").addEventListener("change", () => { if (state.streaming) start(); });
  $("resolution").addEventListener("change", () => { if (state.streaming) start(); });
  if (navigator.mediaDevices && navigator.mediaDevices.enumerateDevices) listDevices().catch(() => {});
  if (!window.isSecureContext) {
    showMessage("This page is not secure (http:// on another machine): the browser will not allow the camera. " +
      "Use https:// - see the README, \"Run at an entrance\".", "warning");
  }
})();
