// callrelay test call page: a minimal Janus API client (WebSocket, janus-protocol) for
// janus.plugin.videocall, written for this page. No janus.js.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const PLUGIN = "janus.plugin.videocall";
  let adminSecret = null; // memory only
  let sess = null; // {token, ws_url, iceServers, expires_at}
  let ws = null, sessionId = 0, handleId = 0, keepaliveTimer = 0, refreshTimer = 0;
  let pc = null, localStream = null, myName = "", peerName = "", pendingOffer = null;
  let statsTimer = 0, lastStats = null;
  const pending = new Map(); // transaction -> {resolve, reject, event}

  function log(msg) {
    const l = $("log");
    l.textContent += new Date().toISOString().slice(11, 23) + " " + msg + "\n";
    l.scrollTop = l.scrollHeight;
  }
  function setState(state, text) {
    const s = $("status");
    s.dataset.state = state;
    s.textContent = text || state;
    document.body.dataset.state = state;
  }
  function tx() {
    const a = new Uint8Array(9);
    crypto.getRandomValues(a);
    return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // ------------------------------------------------------------------ test session
  async function mintSession() {
    const headers = { "X-Callrelay-Test-Page": "1" };
    if (adminSecret !== null) headers["X-Admin-Secret"] = adminSecret;
    const r = await fetch("test/session", { method: "POST", headers, cache: "no-store" });
    const body = await r.json().catch(() => ({}));
    if (r.status === 403 && body.need_secret) {
      const e = new Error(body.error || "admin secret required");
      e.needSecret = true;
      throw e;
    }
    if (!r.ok) throw new Error("POST test/session: HTTP " + r.status + " " + (body.error || ""));
    return body;
  }
  async function start() {
    setState("connecting", "getting a test token");
    try {
      sess = await mintSession();
    } catch (e) {
      if (e.needSecret) {
        $("secret-box").hidden = false;
        setState("need-secret", adminSecret === null ? "admin secret needed" : "wrong admin secret");
        log(e.message);
        return;
      }
      setState("error", e.message);
      return;
    }
    $("secret-box").hidden = true;
    $("relay-note").textContent = sess.relay_available ? "" : "(no TURN configured on the gateway: relay only cannot connect)";
    $("relay-only").dataset.available = String(!!sess.relay_available);
    showExpiry();
    // renew the token before it expires: requests carry the newest one
    refreshTimer = setInterval(async () => {
      try { const s = await mintSession(); sess = s; showExpiry(); log("test token renewed"); }
      catch (e) { log("token renewal failed: " + e.message); }
    }, Math.max(30, (sess.expires_in || 600) / 2) * 1000);
    connect();
  }
  function showExpiry() {
    const d = new Date(sess.expires_at * 1000);
    $("expires").textContent = "· token valid until " + d.toLocaleTimeString() + " (renewed automatically)";
  }

  // ------------------------------------------------------------------ Janus API
  function send(msg, wantEvent) {
    msg.transaction = tx();
    msg.token = sess.token;
    if (sessionId && msg.janus !== "create") msg.session_id = sessionId;
    return new Promise((resolve, reject) => {
      pending.set(msg.transaction, { resolve, reject, event: !!wantEvent });
      ws.send(JSON.stringify(msg));
      setTimeout(() => {
        if (pending.delete(msg.transaction)) reject(new Error(msg.janus + ": no reply within 10 s"));
      }, 10000);
    });
  }
  function message(body, jsep) {
    const m = { janus: "message", handle_id: handleId, body };
    if (jsep) m.jsep = jsep;
    return send(m, true);
  }
  function connect() {
    setState("connecting", "connecting to " + sess.ws_url);
    log("WebSocket " + sess.ws_url);
    ws = new WebSocket(sess.ws_url, "janus-protocol");
    ws.onopen = async () => {
      try {
        const c = await send({ janus: "create" });
        sessionId = c.data.id;
        const a = await send({ janus: "attach", plugin: PLUGIN });
        handleId = a.data.id;
        keepaliveTimer = setInterval(() => send({ janus: "keepalive" }).catch((e) => log(e.message)), 25000);
        $("register").disabled = false;
        setState("ready", "connected: register a name");
        log("session " + sessionId + ", handle " + handleId);
      } catch (e) {
        setState("error", e.message);
        log(e.message);
      }
    };
    ws.onerror = () => log("WebSocket error (certificate? port? see the browser console)");
    ws.onclose = (ev) => {
      clearInterval(keepaliveTimer);
      setState("error", "WebSocket closed (" + ev.code + ")");
      log("WebSocket closed " + ev.code);
      endCall("disconnected");
    };
    ws.onmessage = (ev) => {
      let m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      const p = m.transaction && pending.get(m.transaction);
      if (p) {
        if (m.janus === "ack" && p.event) return;
        pending.delete(m.transaction);
        if (m.janus === "error") return p.reject(new Error("error " + m.error.code + " " + m.error.reason));
        if (m.janus === "event") {
          const d = m.plugindata && m.plugindata.data || {};
          if (d.error_code) return p.reject(new Error("error " + d.error_code + " " + d.error));
          return p.resolve(m);
        }
        return p.resolve(m);
      }
      onEvent(m);
    };
  }

  function onEvent(m) {
    if (m.janus === "trickle" && pc) {
      const c = m.candidate || {};
      if (c.completed) pc.addIceCandidate(null).catch(() => {});
      else pc.addIceCandidate(c).catch((e) => log("remote candidate: " + e));
      return;
    }
    if (m.janus === "hangup") { endCall(m.reason || "hangup"); return; }
    if (m.janus === "webrtcup" || m.janus === "media" || m.janus === "keepalive") return;
    if (m.janus !== "event") return;
    const d = (m.plugindata && m.plugindata.data) || {};
    const r = d.result || {};
    if (d.error_code) { log("plugin error " + d.error_code + " " + d.error); return; }
    if (r.event === "incomingcall") {
      peerName = r.username;
      pendingOffer = m.jsep;
      $("caller").textContent = peerName;
      $("caller").dataset.username = peerName;
      $("incoming").hidden = false;
      setState("incoming", "incoming call from " + peerName);
      log("incoming call from " + peerName);
    } else if (r.event === "accepted") {
      if (m.jsep && pc) pc.setRemoteDescription(m.jsep).catch((e) => log("answer: " + e));
      setState("incall", "in call with " + peerName);
      log("call accepted by " + (r.username || peerName));
    } else if (r.event === "hangup") {
      endCall(r.reason || "hangup");
    } else if (r.event === "update" && m.jsep && pc) {
      pc.setRemoteDescription(m.jsep).catch((e) => log("update: " + e));
    }
  }

  // ------------------------------------------------------------------ media
  async function getMedia() {
    if (localStream) return localStream;
    try {
      localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    } catch (e) {
      log("no camera/microphone (" + e.name + "): sending a test pattern and tone");
      const canvas = document.createElement("canvas");
      canvas.width = 320; canvas.height = 240;
      const g = canvas.getContext("2d");
      let n = 0;
      setInterval(() => {
        g.fillStyle = "#234"; g.fillRect(0, 0, 320, 240);
        g.fillStyle = "#fff"; g.font = "28px sans-serif";
        g.fillText((myName || "test") + " " + (n++), 20, 130);
      }, 100);
      const stream = canvas.captureStream(10);
      try {
        const ac = new AudioContext();
        const osc = ac.createOscillator();
        const dst = ac.createMediaStreamDestination();
        osc.connect(dst); osc.start();
        dst.stream.getAudioTracks().forEach((t) => stream.addTrack(t));
      } catch (e2) { /* video only */ }
      localStream = stream;
    }
    $("local-video").srcObject = localStream;
    return localStream;
  }
  async function newPc() {
    const relay = $("relay-only").checked;
    pc = new RTCPeerConnection({ iceServers: sess.iceServers || [], iceTransportPolicy: relay ? "relay" : "all" });
    log("RTCPeerConnection, iceTransportPolicy " + (relay ? "relay" : "all"));
    (await getMedia()).getTracks().forEach((t) => pc.addTrack(t, localStream));
    pc.ontrack = (ev) => { $("remote-video").srcObject = ev.streams[0] || new MediaStream([ev.track]); };
    pc.onicecandidate = (ev) => {
      const candidate = ev.candidate ? { candidate: ev.candidate.candidate, sdpMid: ev.candidate.sdpMid, sdpMLineIndex: ev.candidate.sdpMLineIndex } : { completed: true };
      if (ws && handleId) ws.send(JSON.stringify({ janus: "trickle", candidate, session_id: sessionId, handle_id: handleId, transaction: tx(), token: sess.token }));
    };
    const upd = () => {
      $("stat-ice-state").textContent = pc.iceConnectionState;
      $("stat-connection-state").textContent = pc.connectionState;
      $("stats").dataset.iceState = pc.iceConnectionState;
      $("stats").dataset.connectionState = pc.connectionState;
    };
    pc.oniceconnectionstatechange = upd;
    pc.onconnectionstatechange = upd;
    upd();
    lastStats = null;
    clearInterval(statsTimer);
    statsTimer = setInterval(stats, 1000);
  }

  async function register() {
    const name = $("name").value.trim();
    if (!name) return;
    try {
      await message({ request: "register", username: name });
      myName = name;
      $("registered-as").textContent = "registered as " + name;
      $("registered-as").dataset.username = name;
      $("register").disabled = true;
      $("name").disabled = true;
      $("refresh").disabled = false;
      setState("registered", "registered as " + name);
      refreshList();
    } catch (e) { log("register: " + e.message); setState("ready", e.message); }
  }
  async function refreshList() {
    try {
      const r = await message({ request: "list" });
      const list = (r.plugindata.data.result.list || []).filter((u) => u !== myName);
      const ul = $("users");
      ul.textContent = "";
      ul.dataset.count = String(list.length);
      for (const u of list) {
        const li = document.createElement("li");
        li.dataset.user = u;
        const b = document.createElement("button");
        b.type = "button"; b.textContent = "Call"; b.dataset.call = u;
        b.onclick = () => call(u);
        li.append(u + " ", b);
        ul.append(li);
      }
      if (!list.length) ul.textContent = "(nobody else registered yet: open this page in another tab)";
    } catch (e) { log("list: " + e.message); }
  }
  async function call(user) {
    if (pc) return;
    peerName = user;
    $("peer").textContent = user; $("peer").dataset.username = user;
    setState("calling", "calling " + user);
    try {
      await newPc();
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      await message({ request: "call", username: user }, { type: offer.type, sdp: offer.sdp });
      $("hangup").disabled = false;
      log("calling " + user);
    } catch (e) { log("call: " + e.message); endCall("error"); }
  }
  async function accept() {
    $("incoming").hidden = true;
    $("peer").textContent = peerName; $("peer").dataset.username = peerName;
    try {
      await newPc();
      await pc.setRemoteDescription(pendingOffer);
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      await message({ request: "accept" }, { type: answer.type, sdp: answer.sdp });
      $("hangup").disabled = false;
      setState("incall", "in call with " + peerName);
    } catch (e) { log("accept: " + e.message); endCall("error"); }
  }
  function hangup() {
    message({ request: "hangup" }).catch(() => {});
    endCall("hung up");
  }
  function endCall(reason) {
    const s = $("status").dataset.state;
    const active = pc !== null || s === "incall" || s === "calling" || s === "incoming";
    if (pc) { pc.close(); pc = null; log("call ended: " + reason); }
    clearInterval(statsTimer);
    pendingOffer = null;
    $("incoming").hidden = true;
    $("hangup").disabled = true;
    $("remote-video").srcObject = null;
    $("peer").textContent = ""; $("peer").dataset.username = "";
    // The gateway's later hangup events for a call that already ended (core "Close PC",
    // "Remote WebRTC hangup") must not replace the reason the call really ended with.
    if (!active) return;
    $("stats").dataset.lastEnd = reason;
    // pc.close() fires no state events: show the call as over, not as still connected.
    for (const id of ["stat-ice-state", "stat-connection-state"]) $(id).textContent = "closed";
    $("stats").dataset.iceState = "closed";
    $("stats").dataset.connectionState = "closed";
    for (const id of ["stat-bitrate-in", "stat-bitrate-out"]) { $(id).textContent = "0"; $(id).dataset.kbps = "0"; }
    lastStats = null;
    setState("registered", "call ended (" + reason + ")");
  }

  // ------------------------------------------------------------------ stats
  async function stats() {
    if (!pc) return;
    const rep = await pc.getStats();
    const byId = new Map();
    rep.forEach((s) => byId.set(s.id, s));
    const lt = new Set(), rt = new Set();
    let pair = null, bin = 0, bout = 0, lost = 0, recv = 0;
    rep.forEach((s) => {
      if (s.type === "local-candidate") lt.add(s.candidateType);
      if (s.type === "remote-candidate") rt.add(s.candidateType);
      if (s.type === "transport" && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId);
      if (s.type === "inbound-rtp") { bin += s.bytesReceived || 0; lost += s.packetsLost || 0; recv += s.packetsReceived || 0; }
      if (s.type === "outbound-rtp") bout += s.bytesSent || 0;
    });
    if (!pair) rep.forEach((s) => { if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s; });
    const types = (el, set) => { const v = Array.from(set).sort().join(" "); el.textContent = v; el.dataset.types = v; };
    types($("stat-local-types"), lt);
    types($("stat-remote-types"), rt);
    const p = $("stat-pair");
    if (pair) {
      const l = byId.get(pair.localCandidateId) || {}, r = byId.get(pair.remoteCandidateId) || {};
      p.dataset.localType = l.candidateType || "";
      p.dataset.remoteType = r.candidateType || "";
      p.dataset.protocol = l.protocol || "";
      p.dataset.relayUrl = l.url || "";
      p.textContent = (l.candidateType || "?") + " " + (l.address || l.ip || "") + ":" + (l.port || "") +
        " ⇄ " + (r.candidateType || "?") + " " + (r.address || r.ip || "") + ":" + (r.port || "") +
        " over " + (l.protocol || "?") + (l.relayProtocol ? " (to TURN: " + l.relayProtocol + ")" : "") +
        (l.candidateType === "relay" && l.url ? " via " + l.url : "");
      if (pair.currentRoundTripTime !== undefined) {
        const ms = Math.round(pair.currentRoundTripTime * 1000);
        $("stat-rtt").textContent = ms + " ms"; $("stat-rtt").dataset.ms = String(ms);
      }
    }
    const now = performance.now();
    if (lastStats) {
      const dt = (now - lastStats.t) / 1000;
      const kin = Math.round((bin - lastStats.bin) * 8 / dt / 1000), kout = Math.round((bout - lastStats.bout) * 8 / dt / 1000);
      $("stat-bitrate-in").textContent = kin; $("stat-bitrate-in").dataset.kbps = String(kin);
      $("stat-bitrate-out").textContent = kout; $("stat-bitrate-out").dataset.kbps = String(kout);
    }
    lastStats = { t: now, bin, bout };
    $("stat-bytes-in").textContent = bin; $("stat-bytes-in").dataset.bytes = String(bin);
    $("stat-bytes-out").textContent = bout; $("stat-bytes-out").dataset.bytes = String(bout);
    if (recv + lost > 0) {
      const pct = (100 * lost / (recv + lost)).toFixed(1);
      $("stat-loss").textContent = pct + " % (" + lost + " of " + (recv + lost) + ")";
      $("stat-loss").dataset.percent = pct;
    }
  }

  // for debugging from the console: every getStats entry of the current call
  window.callrelayStats = async () => pc ? Array.from((await pc.getStats()).values()) : [];
  window.callrelaySdp = () => pc ? { local: pc.localDescription && pc.localDescription.sdp, remote: pc.remoteDescription && pc.remoteDescription.sdp } : null;

  // ------------------------------------------------------------------ wiring
  $("register").onclick = register;
  $("name").onkeydown = (e) => { if (e.key === "Enter") register(); };
  $("refresh").onclick = refreshList;
  $("accept").onclick = accept;
  $("decline").onclick = () => { $("incoming").hidden = true; hangup(); };
  $("hangup").onclick = hangup;
  $("secret-submit").onclick = () => { adminSecret = $("admin-secret").value; $("admin-secret").value = ""; start(); };
  $("admin-secret").onkeydown = (e) => { if (e.key === "Enter") $("secret-submit").click(); };
  window.addEventListener("beforeunload", () => {
    if (ws && ws.readyState === 1 && sessionId) ws.send(JSON.stringify({ janus: "destroy", session_id: sessionId, transaction: tx(), token: sess.token }));
  });
  start();
})();
