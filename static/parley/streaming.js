/**
 * @file One live session's media side: the peer connection, the `session` data channel, the
 * microphone and the signalling socket, in the order and shape the Anam SDK uses.
 */

import { AnamEvent, AudioPermissionState, ConnectionClosedCode } from "./events.js";
import { MessageHistory } from "./message-history.js";
import { SignallingClient } from "./signalling.js";

/** The SDK's microphone constraints (`lib/InputAudioCapture.js`). */
export function inputAudioConstraints(deviceId) {
  const constraints = {
    echoCancellation: true,
    noiseSuppression: true,
    autoGainControl: true,
    voiceIsolation: true,
    channelCount: { ideal: 1 },
  };
  if (deviceId) constraints.deviceId = { exact: deviceId };
  return constraints;
}

/**
 * How long ICE may stay `disconnected` before the session is given up. The SDK restarts ICE
 * instead; Parley's server (aiortc) cannot restart ICE, so waiting for the network to come
 * back is all a client can do.
 */
const ICE_DISCONNECTED_GRACE_MILLISECONDS = 10_000;

/** Milliseconds between two ISO timestamps, never negative (the SDK's `executionTime`). */
function elapsedMilliseconds(start, end) {
  const value = Date.parse(end) - Date.parse(start);
  return Number.isFinite(value) && value > 0 ? value : 0;
}

/** camelCase tool-call payload of a `toolCall*` data-channel frame, as the SDK emits it. */
function toolCallPayload(data, startedAt) {
  const payload = {
    eventUid: data.event_uid,
    sessionId: data.session_id,
    toolCallId: data.tool_call_id,
    toolName: data.tool_name,
    toolType: data.tool_type,
    toolSubtype: data.tool_subtype,
    arguments: data.arguments,
    timestamp: data.timestamp,
    timestampUserAction: data.timestamp_user_action,
    userActionCorrelationId: data.user_action_correlation_id,
  };
  if (startedAt !== undefined) payload.executionTime = elapsedMilliseconds(startedAt, data.timestamp);
  return payload;
}

/**
 * @typedef {object} StreamingOptions
 * @property {string} sessionId
 * @property {string} engineHost
 * @property {string} engineProtocol
 * @property {string} signallingEndpoint
 * @property {object} clientConfig from the session start answer
 * @property {RTCIceServer[]} [iceServers] app override
 * @property {RTCConfiguration} [rtcConfiguration] app override
 * @property {boolean} [disableInputAudio]
 * @property {string} [audioDeviceId]
 * @property {MediaStream} [inputAudioStream] an app-provided microphone stream
 * @property {{isMuted: boolean}} inputAudioState the state to start from
 * @property {import("./events.js").EventEmitter} emitter
 * @property {Map<string, ToolCallHandler>} [toolHandlers] by tool name (registerToolCallHandler)
 */

/**
 * What the app does when the persona's LLM calls a tool, as in the Anam SDK.
 * @typedef {object} ToolCallHandler
 * @property {(payload: object) => Promise<string|void>} [onStart] for a client tool, its
 *   result (sent back to the LLM); a throw sends the error instead
 * @property {(payload: object) => Promise<void>} [onComplete]
 * @property {(payload: object) => Promise<void>} [onFail]
 */

export class StreamingSession {
  /** @param {StreamingOptions} options */
  constructor(options) {
    this.options = options;
    this.sessionId = options.sessionId;
    this.emitter = options.emitter;
    this.history = new MessageHistory(this.emitter);
    /** @type {RTCPeerConnection|null} */
    this.peer = null;
    /** @type {RTCDataChannel|null} */
    this.channel = null;
    /** @type {HTMLVideoElement|null} */
    this.videoElement = null;
    this.inputAudioStream = options.inputAudioStream ?? null;
    this.ownsInputAudioStream = !options.inputAudioStream;
    this.inputAudioState = {
      isMuted: Boolean(options.inputAudioState?.isMuted),
      permissionState: AudioPermissionState.NOT_REQUESTED,
    };
    /** @type {RTCIceCandidateInit[]} remote candidates that came before the answer */
    this.pendingRemoteCandidates = [];
    this.answerApplied = false;
    this.connected = false;
    this.closed = false;
    this.disconnectTimer = null;
    /** @type {Map<string, string>} tool call id to its start timestamp */
    this.toolCallStarts = new Map();
    /** @type {Set<import("./client.js").TalkMessageStream>} */
    this.talkStreams = new Set();

    const { clientConfig } = options;
    const url = new URL(`${options.engineProtocol}://${options.engineHost}`);
    url.protocol = options.engineProtocol === "http" ? "ws:" : "wss:";
    url.pathname = options.signallingEndpoint ?? "/ws";
    url.searchParams.append("session_id", this.sessionId);
    this.signalling = new SignallingClient({
      url: url.toString(),
      sessionId: this.sessionId,
      heartbeatIntervalSeconds: clientConfig.heartbeatIntervalSeconds || 5,
      maxReconnectionAttempts: clientConfig.maxWsReconnectionAttempts || 5,
      onFrame: (frame) => this.onSignal(frame),
      onFirstOpen: () => this.startPeerConnection(),
      onGiveUp: () => {
        this.emitter.emit(AnamEvent.CONNECTION_CLOSED, ConnectionClosedCode.SIGNALLING_CLIENT_CONNECTION_FAILURE);
      },
    });
  }

  /** @param {HTMLVideoElement} element where audio and video play (one MediaStream). */
  setVideoElement(element) {
    this.videoElement = element;
  }

  /** Open the signalling socket; the peer connection follows on its first open. */
  start() {
    this.signalling.connect();
  }

  // --- peer connection ----------------------------------------------------------------

  iceServers() {
    const { iceServers, rtcConfiguration, clientConfig } = this.options;
    return iceServers ?? rtcConfiguration?.iceServers ?? clientConfig.iceServers ?? [];
  }

  async startPeerConnection() {
    if (this.closed || this.peer) return;
    try {
      const { rtcConfiguration, clientConfig } = this.options;
      const configuration = {
        iceCandidatePoolSize: 2,
        ...(rtcConfiguration ?? {}),
        iceServers: this.iceServers(),
      };
      const policy = rtcConfiguration?.iceTransportPolicy ?? clientConfig.iceTransportPolicy;
      if (policy) configuration.iceTransportPolicy = policy;
      const peer = new RTCPeerConnection(configuration);
      this.peer = peer;
      peer.addEventListener("track", (event) => this.onTrack(event));
      peer.addEventListener("icecandidate", (event) => {
        if (event.candidate) this.signalling.send("icecandidate", event.candidate.toJSON());
      });
      peer.addEventListener("iceconnectionstatechange", () => this.onIceState());
      peer.addEventListener("connectionstatechange", () => {
        if (peer.connectionState === "closed" && !this.closed) this.fail();
      });

      // Order matters to the server: data channel first, then video, then audio.
      this.setUpDataChannel(peer.createDataChannel("session", { ordered: true }));
      peer.addTransceiver("video", { direction: "recvonly" });
      if (this.options.disableInputAudio) {
        peer.addTransceiver("audio", { direction: "recvonly" });
      } else {
        peer.addTransceiver("audio", { direction: "sendrecv" });
        if (this.inputAudioStream) {
          await this.attachInputAudio();
        } else {
          // Not awaited: the offer goes out now; the track joins by replaceTrack later.
          this.requestMicrophone();
        }
      }

      const offer = await peer.createOffer();
      await peer.setLocalDescription(offer);
      this.signalling.send("offer", {
        connectionDescription: { type: offer.type, sdp: offer.sdp },
        userUid: this.sessionId,
      });
    } catch (error) {
      console.error("Parley client: could not set up the peer connection", error);
      this.fail();
    }
  }

  onIceState() {
    const state = this.peer?.iceConnectionState;
    if (state === "connected" || state === "completed") {
      clearTimeout(this.disconnectTimer);
      this.disconnectTimer = null;
      if (!this.connected) {
        this.connected = true;
        this.emitter.emit(AnamEvent.CONNECTION_ESTABLISHED);
      }
    } else if (state === "failed") {
      this.fail();
    } else if (state === "disconnected" && !this.disconnectTimer) {
      this.disconnectTimer = setTimeout(() => {
        if (this.peer?.iceConnectionState === "disconnected") this.fail();
      }, ICE_DISCONNECTED_GRACE_MILLISECONDS);
    }
  }

  /** @param {RTCTrackEvent} event */
  onTrack(event) {
    const stream = event.streams[0];
    if (event.track.kind === "video") {
      this.emitter.emit(AnamEvent.VIDEO_STREAM_STARTED, stream);
      const element = this.videoElement;
      if (element) {
        // Audio plays from this element too: the server puts both tracks in one stream.
        element.srcObject = stream;
        const handle = element.requestVideoFrameCallback(() => {
          element.cancelVideoFrameCallback(handle);
          if (!this.closed) this.emitter.emit(AnamEvent.VIDEO_PLAY_STARTED);
        });
      }
    } else if (event.track.kind === "audio") {
      this.emitter.emit(AnamEvent.AUDIO_STREAM_STARTED, stream);
    }
  }

  /** The session failed on the WebRTC side: tell the app, then let everything go. */
  fail() {
    if (this.closed) return;
    this.emitter.emit(AnamEvent.CONNECTION_CLOSED, ConnectionClosedCode.WEBRTC_FAILURE);
    this.shutdown();
  }

  // --- signalling -----------------------------------------------------------------------

  /** @param {{actionType: string, sessionId: string, payload: any}} frame */
  async onSignal(frame) {
    if (this.closed) return;
    const { actionType, payload } = frame;
    switch (actionType) {
      case "answer":
        await this.applyAnswer(payload);
        break;
      case "icecandidate":
        if (this.answerApplied) await this.addRemoteCandidate(payload);
        else this.pendingRemoteCandidates.push(payload);
        break;
      case "endsession":
        this.emitter.emit(AnamEvent.CONNECTION_CLOSED, ConnectionClosedCode.SERVER_CLOSED_CONNECTION, payload);
        this.shutdown();
        break;
      case "warning":
        console.warn(`Parley client: warning from the server: ${payload}`);
        this.emitter.emit(AnamEvent.SERVER_WARNING, payload);
        break;
      case "sessionready":
        this.emitter.emit(AnamEvent.SESSION_READY, frame.sessionId);
        break;
      case "talkinputstreaminterrupted": {
        const correlationId = payload?.correlationId;
        for (const stream of this.talkStreams) stream.onInterrupted(correlationId);
        this.emitter.emit(AnamEvent.TALK_STREAM_INTERRUPTED, correlationId);
        break;
      }
      case "heartbeat":
        break;
      default:
        console.warn("Parley client: unknown signalling action", frame);
    }
  }

  async applyAnswer(payload) {
    const peer = this.peer;
    if (!peer || peer.signalingState !== "have-local-offer") return;
    try {
      await peer.setRemoteDescription(payload);
    } catch (error) {
      console.error("Parley client: the server's answer could not be applied", error);
      if (!this.answerApplied) this.fail();
      return;
    }
    this.answerApplied = true;
    for (const candidate of this.pendingRemoteCandidates.splice(0)) await this.addRemoteCandidate(candidate);
  }

  async addRemoteCandidate(candidate) {
    try {
      await this.peer?.addIceCandidate(candidate);
    } catch (error) {
      console.warn("Parley client: a remote ICE candidate was refused", error);
    }
  }

  // --- data channel ---------------------------------------------------------------------

  /** @param {RTCDataChannel} channel */
  setUpDataChannel(channel) {
    this.channel = channel;
    channel.onopen = () => this.emitter.emit(AnamEvent.DATA_CHANNEL_OPEN);
    channel.onmessage = (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch (error) {
        console.error("Parley client: a data-channel frame was not JSON", event.data);
        return;
      }
      this.onDataMessage(message);
    };
  }

  /** @param {{messageType: string, data: any}} message */
  onDataMessage(message) {
    const data = message?.data ?? {};
    switch (message?.messageType) {
      case "speechText":
        this.history.receive(data);
        break;
      case "userSpeechStarted":
        this.emitter.emit(AnamEvent.USER_SPEECH_STARTED, data.user_action_correlation_id ?? "unknown");
        break;
      case "userSpeechEnded":
        this.emitter.emit(AnamEvent.USER_SPEECH_ENDED, data.user_action_correlation_id ?? "unknown");
        break;
      case "userSpeechInterim":
        this.emitter.emit(AnamEvent.USER_SPEECH_INTERIM, {
          content: String(data.content ?? ""),
          correlationId: data.user_action_correlation_id ?? "unknown",
        });
        break;
      case "toolCallStarted": {
        this.toolCallStarts.set(data.tool_call_id, data.timestamp);
        const payload = toolCallPayload(data);
        this.emitter.emit(AnamEvent.TOOL_CALL_STARTED, payload);
        this.runToolCallHandler(data, payload);
        break;
      }
      case "toolCallCompleted": {
        const payload = {
          ...toolCallPayload(data, this.toolCallStarts.get(data.tool_call_id) ?? data.timestamp),
          result: data.result,
          documentsAccessed: data.documents_accessed,
        };
        this.toolCallStarts.delete(data.tool_call_id);
        this.emitter.emit(AnamEvent.TOOL_CALL_COMPLETED, payload);
        this.notifyToolCallHandler(data, "onComplete", payload);
        break;
      }
      case "toolCallFailed": {
        const payload = {
          ...toolCallPayload(data, this.toolCallStarts.get(data.tool_call_id) ?? data.timestamp),
          errorMessage: data.error_message,
        };
        this.toolCallStarts.delete(data.tool_call_id);
        this.emitter.emit(AnamEvent.TOOL_CALL_FAILED, payload);
        this.notifyToolCallHandler(data, "onFail", payload);
        break;
      }
      default:
        break; // Unknown types are ignored, for forward compatibility.
    }
  }

  /**
   * The app's handler for a tool the LLM called, if it registered one. For a client tool,
   * what `onStart` returns (or throws) goes back as a `tool_result`, exactly as the SDK
   * sends it; the server then answers `toolCallCompleted` or `toolCallFailed`.
   * @param {object} data the `toolCallStarted` frame
   * @param {object} payload its camelCase form
   */
  async runToolCallHandler(data, payload) {
    if (data.session_id !== this.sessionId) return;
    const handler = this.options.toolHandlers?.get(data.tool_name);
    if (!handler?.onStart) return;
    let result;
    let errorMessage;
    try {
      result = await handler.onStart(payload);
    } catch (error) {
      errorMessage = `Error in handler: ${error instanceof Error ? error.message : String(error)}`;
    }
    if (data.tool_type !== "client") return;
    const message = {
      session_id: data.session_id,
      message_type: "tool_result",
      tool_call_id: data.tool_call_id,
      user_action_correlation_id: data.user_action_correlation_id,
      timestamp_user_action: data.timestamp_user_action,
    };
    if (errorMessage) message.error = errorMessage;
    else if (result !== undefined && result !== null) message.result = result;
    this.sendDataMessage(JSON.stringify(message));
  }

  /**
   * @param {object} data a `toolCallCompleted` or `toolCallFailed` frame
   * @param {"onComplete"|"onFail"} hook
   * @param {object} payload
   */
  async notifyToolCallHandler(data, hook, payload) {
    if (data.session_id !== this.sessionId) return;
    const handler = this.options.toolHandlers?.get(data.tool_name);
    if (!handler?.[hook]) return;
    try {
      await handler[hook](payload);
    } catch (error) {
      console.error(`Parley client: the ${hook} handler of tool ${data.tool_name} failed`, error);
    }
  }

  /**
   * Send a raw string on the data channel.
   * @param {string} text
   * @returns {boolean} false if the channel is not open (the frame is dropped, as in the SDK)
   */
  sendDataMessage(text) {
    if (this.channel?.readyState !== "open") return false;
    this.channel.send(text);
    return true;
  }

  // --- microphone -----------------------------------------------------------------------

  async requestMicrophone() {
    if (this.inputAudioState.permissionState === AudioPermissionState.PENDING) return;
    this.inputAudioState = { ...this.inputAudioState, permissionState: AudioPermissionState.PENDING };
    this.emitter.emit(AnamEvent.MIC_PERMISSION_PENDING);
    try {
      const stream = await navigator.mediaDevices.getUserMedia({
        audio: inputAudioConstraints(this.options.audioDeviceId),
      });
      if (this.closed) {
        stream.getTracks().forEach((track) => track.stop());
        return;
      }
      this.inputAudioStream = stream;
      this.inputAudioState = { ...this.inputAudioState, permissionState: AudioPermissionState.GRANTED };
      this.emitter.emit(AnamEvent.MIC_PERMISSION_GRANTED);
      await this.attachInputAudio();
    } catch (error) {
      console.error("Parley client: no microphone", error);
      this.inputAudioState = { ...this.inputAudioState, permissionState: AudioPermissionState.DENIED };
      this.emitter.emit(AnamEvent.MIC_PERMISSION_DENIED, error instanceof Error ? error.message : String(error));
    }
  }

  /** Put the microphone track on the audio transceiver (no renegotiation). */
  async attachInputAudio() {
    const stream = this.inputAudioStream;
    const track = stream?.getAudioTracks()[0];
    if (!this.peer || !track) return;
    this.applyMute();
    const transceiver = this.peer.getTransceivers().find((t) => t.receiver.track?.kind === "audio");
    try {
      if (!transceiver) throw new Error("no audio transceiver");
      await transceiver.sender.replaceTrack(track);
    } catch (error) {
      console.error("Parley client: replaceTrack failed; adding the track instead", error);
      this.peer.addTrack(track, stream);
    }
    this.emitter.emit(AnamEvent.INPUT_AUDIO_STREAM_STARTED, stream);
  }

  /**
   * @param {boolean} muted
   * @returns {{isMuted: boolean, permissionState: string}}
   */
  setMuted(muted) {
    this.inputAudioState = { ...this.inputAudioState, isMuted: muted };
    this.applyMute();
    return this.getInputAudioState();
  }

  applyMute() {
    for (const track of this.inputAudioStream?.getAudioTracks() ?? []) track.enabled = !this.inputAudioState.isMuted;
  }

  getInputAudioState() {
    return { ...this.inputAudioState };
  }

  // --- talk -----------------------------------------------------------------------------

  /** @param {object} payload a `talkstream` payload */
  sendTalkStream(payload) {
    this.signalling.send("talkstream", payload);
  }

  /** @param {string} content the persona says it verbatim */
  async sendTalkCommand(content) {
    const { engineProtocol, engineHost } = this.options;
    const response = await fetch(`${engineProtocol}://${engineHost}/talk?session_id=${this.sessionId}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ content }),
    });
    if (!response.ok) throw new Error("Parley client - talk: Failed to send talk command");
  }

  // --- the end --------------------------------------------------------------------------

  /** Stop the microphone, the socket and the peer connection. Safe to call twice. */
  shutdown() {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.disconnectTimer);
    if (this.ownsInputAudioStream) this.inputAudioStream?.getTracks().forEach((track) => track.stop());
    this.signalling.stop();
    try {
      this.channel?.close();
      this.peer?.close();
    } catch (error) {
      console.warn("Parley client: closing the peer connection failed", error);
    }
    this.talkStreams.clear();
  }
}
