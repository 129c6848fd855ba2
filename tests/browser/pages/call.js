/* callrelay browser test client: one party of a Mattermost-style videocall, run through
 * the stock janus.js (1.1.2 or 0.2.3) against the gateway. Driven from Node through
 * playwright (`window.party.*`); everything it observes is recorded for assertions.
 *
 * Loaded after adapter.js and BEFORE janus.js, so the two wrappers below are what
 * janus.js finds as `RTCPeerConnection` and `WebSocket`.
 */
'use strict';

(function () {
  const t0 = performance.now();
  const now = () => Math.round(performance.now() - t0);

  const rec = {
    events: [], // {t, kind, ...}: everything janus.js or the plugin reported
    wsIn: [], // every JSON message janus.js received over its WebSocket
    wsOut: [], // every JSON message janus.js sent
    httpIn: [], // every JSON reply/event janus.js received over HTTP (long-poll arrays flattened)
    httpOut: [], // every JSON request janus.js POSTed
    pcs: [], // {passedPolicy, forcedPolicy, iceServers} per RTCPeerConnection created
  };
  function event(kind, data) {
    rec.events.push(Object.assign({ t: now(), wall: Date.now(), kind }, data || {}));
  }

  // ---- Relay-only guard -------------------------------------------------------------
  // Tests must stay on loopback: without iceTransportPolicy "relay" Chromium would also
  // gather (and probe from) the machine's interface address. Both janus.js generations
  // pass `iceTransportPolicy` from `new Janus({...})` into the RTCPeerConnection config
  // (0.2.3: pc_config in streamsDone; 1.1.2: pc_config in prepareWebrtcPeer), and the
  // page passes "relay" there. This wrapper records what janus.js passed (the tests
  // assert it was "relay") and forces "relay" anyway, so a regression in a library can
  // never leak a non-loopback candidate.
  //
  // The one exception is `?policy=all`, used only by test/nat.test.js, whose browsers run
  // inside the test's lab namespaces where every address that exists is the test's own:
  // there host and server-reflexive candidates must be tried, to show the NATs stop them.
  const forcedPolicy = new URLSearchParams(location.search).get('policy') === 'all' ? 'all' : 'relay';
  const NativePC = window.RTCPeerConnection;
  class RelayOnlyPeerConnection extends NativePC {
    constructor(config, ...rest) {
      const passed = config ? config.iceTransportPolicy : undefined;
      const forced = Object.assign({}, config || {}, { iceTransportPolicy: forcedPolicy });
      super(forced, ...rest);
      rec.pcs.push({ passedPolicy: passed, forcedPolicy: this.getConfiguration().iceTransportPolicy, iceServers: (config && config.iceServers) || [] });
      // State changes and the first remote RTP with wall-clock times, for timelines
      // (benches/browser): `unmute` fires when a remote track's first packet arrives.
      this.addEventListener('iceconnectionstatechange', () => event('pc-ice', { state: this.iceConnectionState }));
      this.addEventListener('connectionstatechange', () => event('pc-conn', { state: this.connectionState }));
      this.addEventListener('icegatheringstatechange', () => event('pc-gathering', { state: this.iceGatheringState }));
      this.addEventListener('icecandidate', (e) => event('pc-candidate', { typ: e.candidate ? (e.candidate.candidate.match(/ typ (\S+)/) || [])[1] : null }));
      this.addEventListener('track', (e) => {
        const kind = e.track.kind;
        if (e.track.muted) e.track.addEventListener('unmute', () => event('remote-unmute', { trackKind: kind }), { once: true });
        else event('remote-unmute', { trackKind: kind });
      });
    }
  }
  window.RTCPeerConnection = RelayOnlyPeerConnection;
  window.webkitRTCPeerConnection = RelayOnlyPeerConnection;

  // ---- WebSocket recorder -------------------------------------------------------------
  const NativeWS = window.WebSocket;
  class RecordingWebSocket extends NativeWS {
    constructor(url, protocols) {
      super(url, protocols);
      event('ws-open-requested', { url: String(url), protocols });
      this.addEventListener('message', (e) => {
        try {
          rec.wsIn.push(Object.assign({ t: now() }, JSON.parse(e.data)));
        } catch (err) {
          rec.wsIn.push({ t: now(), unparsable: String(e.data).slice(0, 200) });
        }
      });
      this.addEventListener('close', (e) => event('ws-close', { code: e.code }));
    }
    send(data) {
      try {
        rec.wsOut.push(Object.assign({ t: now() }, JSON.parse(data)));
      } catch (err) {
        rec.wsOut.push({ t: now(), unparsable: String(data).slice(0, 200) });
      }
      return super.send(data);
    }
  }
  window.WebSocket = RecordingWebSocket;

  // ---- HTTP recorder (REST + long poll): janus.js 1.1.2 uses fetch, 0.2.3 XMLHttpRequest.
  function recordHttpOut(url, body) {
    if (typeof body !== 'string') return;
    try {
      rec.httpOut.push(Object.assign({ t: now(), url: String(url) }, JSON.parse(body)));
    } catch (err) {
      /* not JSON: not a Janus request */
    }
  }
  function recordHttpIn(url, text) {
    let j;
    try {
      j = JSON.parse(text);
    } catch (err) {
      return;
    }
    for (const m of Array.isArray(j) ? j : [j]) rec.httpIn.push(Object.assign({ t: now(), url: String(url) }, m));
  }
  const nativeFetch = window.fetch.bind(window);
  window.fetch = async function (input, init) {
    const url = typeof input === 'string' ? input : input.url;
    recordHttpOut(url, init && init.body);
    const res = await nativeFetch(input, init);
    res.clone().text().then((text) => recordHttpIn(url, text), () => {});
    return res;
  };
  const NativeXHR = window.XMLHttpRequest;
  class RecordingXHR extends NativeXHR {
    open(method, url, ...rest) {
      this.__url = url;
      this.addEventListener('load', () => recordHttpIn(url, this.responseText));
      return super.open(method, url, ...rest);
    }
    send(body) {
      recordHttpOut(this.__url, body);
      return super.send(body);
    }
  }
  window.XMLHttpRequest = RecordingXHR;

  // ---- The party ----------------------------------------------------------------------
  let janus = null;
  let handle = null;
  let opts = null;
  let gen = null;

  function fail(where, err) {
    event('error', { where, error: typeof err === 'string' ? err : (err && (err.message || JSON.stringify(err))) || String(err) });
  }

  // Media the Mattermost webapp asked for (audio + video both ways, no data channel),
  // in each generation's own API: 0.2.x `media`, 1.x `tracks` (`media` is deprecated
  // there and only translated).
  function mediaOptions() {
    if (gen === '0.2.3') {
      return { media: { audioSend: true, videoSend: true, audioRecv: true, videoRecv: true, data: false } };
    }
    return { tracks: [{ type: 'audio', capture: true, recv: true }, { type: 'video', capture: true, recv: true }] };
  }

  function doCall() {
    event('creating-offer');
    handle.createOffer(Object.assign(mediaOptions(), {
      success(jsep) {
        event('offer-created', { sdpCandidates: (jsep.sdp.match(/a=candidate:/g) || []).length });
        event('call-sent');
        handle.send({ message: { request: 'call', username: opts.peerId }, jsep });
      },
      error(err) {
        fail('createOffer', err);
      },
    }));
  }

  const ufragOf = (sdp) => (sdp.match(/a=ice-ufrag:(\S+)/) || [])[1];

  function onMessage(msg, jsep) {
    const data = msg || {};
    const result = data.result || {};
    if (data.error_code !== undefined || data.error) {
      event('plugin-error', { code: data.error_code, error: data.error });
      return;
    }
    const ev = result.event;
    event('plugin-event', { event: ev, username: result.username, reason: result.reason, hasJsep: !!jsep, jsepType: jsep && jsep.type });
    if (ev === 'registered') {
      // Mattermost's webapp: the caller calls 750 ms after its registration.
      if (opts.role === 'caller') setTimeout(doCall, 750);
    } else if (ev === 'incomingcall') {
      if (!jsep) {
        fail('incomingcall', 'no offer jsep');
        return;
      }
      event('incoming-offer', { sdpCandidates: (jsep.sdp.match(/a=candidate:/g) || []).length, relayCandidates: (jsep.sdp.match(/typ relay/g) || []).length, srflxCandidates: (jsep.sdp.match(/typ srflx/g) || []).length, hostCandidates: (jsep.sdp.match(/typ host/g) || []).length, lines: jsep.sdp.split(/\r?\n/).filter((l) => /^(m=|a=mid|a=candidate|a=end-of-candidates)/.test(l)) });
      handle.createAnswer(Object.assign(mediaOptions(), {
        jsep,
        success(answer) {
          event('answer-created');
          event('accept-sent');
          handle.send({ message: { request: 'accept' }, jsep: answer });
        },
        error(err) {
          fail('createAnswer', err);
        },
      }));
    } else if (ev === 'accepted') {
      if (opts.role === 'caller') {
        if (!jsep) {
          fail('accepted', 'no answer jsep');
          return;
        }
        event('accepted-answer', { sdpCandidates: (jsep.sdp.match(/a=candidate:/g) || []).length, relayCandidates: (jsep.sdp.match(/typ relay/g) || []).length, srflxCandidates: (jsep.sdp.match(/typ srflx/g) || []).length, hostCandidates: (jsep.sdp.match(/typ host/g) || []).length, lines: jsep.sdp.split(/\r?\n/).filter((l) => /^(m=|a=mid|a=candidate|a=end-of-candidates)/.test(l)) });
        handle.handleRemoteJsep({ jsep, error: (err) => fail('handleRemoteJsep', err) });
      }
    } else if (ev === 'update') {
      // Renegotiation (janus.js 1.x videocall): `set` + jsep at one side reaches the other
      // as `update` + jsep. An offer is answered with `set` + answer; an answer is applied.
      if (!jsep) {
        fail('update', 'no jsep');
        return;
      }
      event('update-jsep', { jsepType: jsep.type, ufrag: ufragOf(jsep.sdp), relayCandidates: (jsep.sdp.match(/typ relay/g) || []).length });
      if (jsep.type === 'answer') {
        handle.handleRemoteJsep({ jsep, error: (err) => fail('handleRemoteJsep(update)', err) });
      } else {
        handle.createAnswer({
          jsep,
          success(answer) {
            event('update-answer-created', { ufrag: ufragOf(answer.sdp) });
            handle.send({ message: { request: 'set' }, jsep: answer });
          },
          error(err) {
            fail('createAnswer(update)', err);
          },
        });
      }
    } else if (ev === 'hangup') {
      // The webapp ends the call on the plugin's hangup event: close the PeerConnection.
      handle.hangup();
    }
  }

  let plainPc = null;

  async function addFakeMedia(pc) {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: true });
    for (const track of stream.getTracks()) pc.addTrack(track, stream);
  }

  function gatheringDone(pc) {
    return new Promise((resolve, reject) => {
      if (pc.iceGatheringState === 'complete') return resolve();
      const timer = setTimeout(() => reject(new Error('ICE gathering not complete after 10 s')), 10000);
      pc.addEventListener('icegatheringstatechange', () => {
        if (pc.iceGatheringState === 'complete') {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  }

  /** Inbound bytes per kind and the selected candidate pair of `pc`. */
  async function pcStats(pc) {
    if (!pc) return { pc: false };
    const report = await pc.getStats();
    const out = { pc: true, iceConnectionState: pc.iceConnectionState, connectionState: pc.connectionState, inbound: {}, pair: null, localCandidates: [], remoteCandidates: [], pairs: [] };
    let selectedPairId = null;
    const pairIds = [];
    report.forEach((s) => {
      if (s.type === 'inbound-rtp') {
        const kind = s.kind || s.mediaType;
        out.inbound[kind] = (out.inbound[kind] || 0) + (s.bytesReceived || 0);
      } else if (s.type === 'transport' && s.selectedCandidatePairId) {
        selectedPairId = s.selectedCandidatePairId;
      } else if (s.type === 'local-candidate') {
        out.localCandidates.push({ candidateType: s.candidateType, address: s.address, port: s.port, relayProtocol: s.relayProtocol, url: s.url });
      } else if (s.type === 'remote-candidate') {
        out.remoteCandidates.push({ candidateType: s.candidateType, address: s.address, port: s.port });
      } else if (s.type === 'candidate-pair') {
        pairIds.push(s.id);
      }
    });
    // Every pair ICE tried (state, checks sent/answered), for the NAT lab's evidence.
    for (const id of pairIds) {
      const p = report.get(id);
      const l = report.get(p.localCandidateId);
      const r = report.get(p.remoteCandidateId);
      out.pairs.push({
        state: p.state,
        requestsSent: p.requestsSent,
        responsesReceived: p.responsesReceived,
        requestsReceived: p.requestsReceived,
        local: l && `${l.candidateType} ${l.address}:${l.port}`,
        remote: r && `${r.candidateType} ${r.address}:${r.port}`,
      });
    }
    // Firefox has no `transport` stats: its selected pair carries `selected: true`.
    if (!selectedPairId) {
      report.forEach((s) => {
        if (s.type === 'candidate-pair' && s.selected === true) selectedPairId = s.id;
      });
    }
    if (selectedPairId) {
      const p = report.get(selectedPairId);
      const l = report.get(p.localCandidateId);
      const r = report.get(p.remoteCandidateId);
      out.pair = {
        state: p.state,
        bytesSent: p.bytesSent,
        bytesReceived: p.bytesReceived,
        local: l && { candidateType: l.candidateType, address: l.address, port: l.port, protocol: l.protocol, relayProtocol: l.relayProtocol, url: l.url },
        remote: r && { candidateType: r.candidateType, address: r.address, port: r.port, protocol: r.protocol },
      };
    }
    return out;
  }

  window.callPageInit = function () {
    gen = typeof Janus.isWebrtcSupported === 'function' && typeof Janus.mediaToTracks === 'function' ? '1.1.2' : '0.2.3';
    window.party = {
      rec,
      generation: () => gen,

      /** Fetches TURN credentials from the gateway (GET /turn-credentials?token=). */
      async turnCredentials(base, token) {
        const res = await fetch(`${base}/turn-credentials?token=${encodeURIComponent(token)}`);
        const text = await res.text();
        let json = null;
        try {
          json = JSON.parse(text);
        } catch (e) {
          /* keep null */
        }
        return { status: res.status, json, text: text.slice(0, 500) };
      },

      /** new Janus + attach videocall + register; resolves once `registered` arrives. */
      start(o) {
        opts = o;
        return new Promise((resolve, reject) => {
          Janus.init({
            debug: o.debug ? 'all' : ['warn', 'error'],
            callback() {
              janus = new Janus({
                server: o.server,
                token: o.token,
                iceServers: o.iceServers,
                iceTransportPolicy: o.policy || 'relay',
                success() {
                  event('session-created', { sessionId: janus.getSessionId() });
                  janus.attach({
                    plugin: 'janus.plugin.videocall',
                    opaqueId: 'callrelay-test-' + Janus.randomString(12),
                    success(h) {
                      handle = h;
                      event('attached', { handleId: h.getId() });
                      handle.send({ message: { request: 'register', username: o.userId } });
                    },
                    error(err) {
                      fail('attach', err);
                      reject(new Error('attach failed: ' + JSON.stringify(err)));
                    },
                    onmessage(msg, jsep) {
                      onMessage(msg, jsep);
                      if (msg && msg.result && msg.result.event === 'registered') resolve(msg.result);
                      if (msg && msg.error_code !== undefined) reject(new Error('register failed: ' + msg.error_code + ' ' + msg.error));
                    },
                    iceState(state) {
                      event('ice-state', { state });
                    },
                    webrtcState(on, reason) {
                      event('webrtc-state', { on, reason });
                    },
                    // 0.2.x reports whole remote streams, 1.x single tracks.
                    onlocalstream(stream) {
                      event('local-stream', { tracks: stream.getTracks().map((tr) => tr.kind) });
                    },
                    onremotestream(stream) {
                      event('remote-stream', { tracks: stream.getTracks().map((tr) => tr.kind) });
                      const v = document.getElementById('remote');
                      v.srcObject = stream;
                    },
                    onlocaltrack(track, on) {
                      event('local-track', { trackKind: track.kind, on });
                    },
                    onremotetrack(track, mid, on) {
                      event('remote-track', { trackKind: track.kind, mid, on });
                    },
                    oncleanup() {
                      event('cleanup');
                    },
                    ondetached() {
                      event('detached');
                    },
                  });
                },
                error(err) {
                  fail('session', err);
                  reject(new Error('Janus session failed: ' + (typeof err === 'string' ? err : JSON.stringify(err))));
                },
                destroyed() {
                  event('destroyed');
                },
              });
            },
          });
        });
      },

      /** getStats of janus.js' PeerConnection: inbound bytes per kind, selected pair. */
      stats() {
        return pcStats(handle && handle.webrtcStuff && handle.webrtcStuff.pc);
      },

      /** Renegotiates the running call with an ICE restart: `set` + new offer (1.x only). */
      renegotiate() {
        const before = handle.webrtcStuff.pc.localDescription.sdp;
        return new Promise((resolve, reject) => {
          handle.createOffer({
            iceRestart: true,
            success(jsep) {
              event('renegotiation-offer-created', { ufrag: ufragOf(jsep.sdp), previousUfrag: ufragOf(before) });
              handle.send({ message: { request: 'set' }, jsep });
              resolve({ ufrag: ufragOf(jsep.sdp), previousUfrag: ufragOf(before) });
            },
            error(err) {
              fail('createOffer(iceRestart)', err);
              reject(new Error('renegotiation offer failed: ' + JSON.stringify(err)));
            },
          });
        });
      },

      /** ICE ufrag of the current local/remote descriptions. */
      ufrags() {
        const pc = handle.webrtcStuff.pc;
        return { local: ufragOf(pc.localDescription.sdp), remote: ufragOf(pc.remoteDescription.sdp) };
      },

      /** The Mattermost hang-up: plugin `hangup` request, then close the PeerConnection. */
      hangup() {
        handle.send({ message: { request: 'hangup' } });
        handle.hangup();
      },

      /** detach the handle, then destroy the session; resolves when both are done. */
      finish() {
        return new Promise((resolve, reject) => {
          handle.detach({
            success() {
              event('detach-done');
              janus.destroy({
                success() {
                  event('destroy-done');
                  resolve();
                },
                error(err) {
                  fail('destroy', err);
                  reject(new Error('destroy failed: ' + JSON.stringify(err)));
                },
              });
            },
            error(err) {
              fail('detach', err);
              reject(new Error('detach failed: ' + JSON.stringify(err)));
            },
          });
        });
      },

      // ---- Plain RTCPeerConnection pair (no gateway, no janus.js): isolates the relay.
      async plainOffer(iceServers) {
        plainPc = new RTCPeerConnection({ iceServers, iceTransportPolicy: 'relay' });
        await addFakeMedia(plainPc);
        await plainPc.setLocalDescription(await plainPc.createOffer());
        await gatheringDone(plainPc);
        return { type: 'offer', sdp: plainPc.localDescription.sdp };
      },
      async plainAnswer(iceServers, offer) {
        plainPc = new RTCPeerConnection({ iceServers, iceTransportPolicy: 'relay' });
        await addFakeMedia(plainPc);
        await plainPc.setRemoteDescription(offer);
        await plainPc.setLocalDescription(await plainPc.createAnswer());
        await gatheringDone(plainPc);
        return { type: 'answer', sdp: plainPc.localDescription.sdp };
      },
      async plainAccept(answer) {
        await plainPc.setRemoteDescription(answer);
      },
      plainStats() {
        return pcStats(plainPc);
      },
      plainClose() {
        if (plainPc) plainPc.close();
      },

      /** A raw Janus `create` over a fresh WebSocket; resolves with the reply. */
      rawCreate(server, token) {
        return new Promise((resolve, reject) => {
          const ws = new NativeWS(server, 'janus-protocol');
          const timer = setTimeout(() => {
            ws.close();
            reject(new Error('no reply to create within 5 s'));
          }, 5000);
          ws.onopen = () => ws.send(JSON.stringify({ janus: 'create', transaction: 'raw-create-' + Date.now(), token }));
          ws.onmessage = (e) => {
            clearTimeout(timer);
            ws.close();
            resolve(JSON.parse(e.data));
          };
          ws.onerror = () => {
            clearTimeout(timer);
            reject(new Error('websocket error'));
          };
        });
      },
    };
    window.callPageReady = true;
  };
})();
