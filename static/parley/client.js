/**
 * @file Parley's browser client: the surface of `@anam-ai/js-sdk` 4.27.0, no dependencies.
 *
 * ```js
 * import { createClient, AnamEvent } from "/static/parley/client.js";
 * const client = createClient(sessionToken); // minted server-side; the API key stays there
 * client.addListener(AnamEvent.MESSAGE_HISTORY_UPDATED, (messages) => render(messages));
 * await client.streamToVideoElement("persona-video");
 * client.sendUserMessage("What are your opening hours?");
 * await client.stopStreaming();
 * ```
 *
 * It speaks the SDK's protocol (docs/anam-sdk-protocol.md): `POST {baseUrl}/v1/engine/session`
 * with the token, then the signalling websocket, a client-created `session` data channel,
 * video received and audio both ways, in one MediaStream played by the video element.
 * Not implemented: API-key mode, director notes, agent audio input, ICE restarts (Parley's
 * server cannot do them) and client telemetry. Tool handlers differ from the SDK's in one
 * way: `TOOL_CALL_COMPLETED`/`FAILED` are emitted once, when the server says so (the SDK
 * also emits them locally, before the server's frame, for client tools with handlers).
 */

import {
  AnamEvent,
  AudioPermissionState,
  ClientError,
  ConnectionClosedCode,
  ErrorCode,
  EventEmitter,
} from "./events.js";
import { StreamingSession } from "./streaming.js";

export { AnamEvent, AudioPermissionState, ClientError, ConnectionClosedCode, ErrorCode };

/** What `clientMetadata` says about this client on session start. */
export const CLIENT_METADATA = Object.freeze({ client: "parley-js", version: "1.0.0" });

/** Defaults of the SDK's `api` options. */
const DEFAULT_API_VERSION = "/v1";
const DEFAULT_REQUEST_TIMEOUT_MILLISECONDS = 10_000;
const DEFAULT_RETRY = Object.freeze({ maxAttempts: 3, initialBackoffMs: 250, maxBackoffMs: 2000 });

/**
 * @typedef {object} ClientOptions
 * @property {{baseUrl?: string, apiVersion?: string, requestTimeoutMs?: number,
 *   retry?: {maxAttempts?: number, initialBackoffMs?: number, maxBackoffMs?: number}}} [api]
 *   `baseUrl` defaults to the page's origin (the SDK's is api.anam.ai)
 * @property {boolean} [disableInputAudio] receive only: no microphone is asked for
 * @property {string} [audioDeviceId]
 * @property {RTCIceServer[]} [iceServers] instead of the server's
 * @property {RTCConfiguration} [rtcConfiguration]
 * @property {{endOfSpeechSensitivity?: number}} [voiceDetection]
 */

/**
 * Read the payload of a session token without verifying it (the server does that).
 * @param {string} token
 * @returns {object}
 */
export function decodeSessionToken(token) {
  const parts = typeof token === "string" ? token.split(".") : [];
  if (parts.length !== 3) throw new Error("Invalid session token format");
  try {
    const base64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (character) => character.charCodeAt(0));
    const payload = JSON.parse(new TextDecoder().decode(bytes));
    if (!payload || typeof payload !== "object") throw new Error("not an object");
    return payload;
  } catch (error) {
    throw new Error("Invalid session token format");
  }
}

/** The SDK's mapping of an error answer to a {@link ClientError}. */
function startSessionError(status, data) {
  const cause = data?.message;
  if (status === 400) return new ClientError("Invalid request to start session", ErrorCode.VALIDATION_ERROR, 400, cause);
  if (status === 401 || status === 403) {
    return new ClientError("Authentication failed when starting session", ErrorCode.AUTHENTICATION_ERROR, status, cause);
  }
  if (status === 402) return new ClientError("Please sign up for a plan to start a session", ErrorCode.NO_PLAN_FOUND, 402, cause);
  if (status === 429) {
    if (data?.error === "Concurrent session limit reached") {
      return new ClientError("Concurrency limit reached, please upgrade your plan", ErrorCode.MAX_CONCURRENT_SESSIONS_REACHED, 429, cause);
    }
    if (data?.error === "Spend cap reached") return new ClientError("Spend cap reached", ErrorCode.SPEND_CAP_REACHED, 429, cause);
    return new ClientError("Usage limit reached, please upgrade your plan", ErrorCode.USAGE_LIMIT_REACHED, 429, cause);
  }
  if (status === 503) {
    return new ClientError("There are no available personas, please try again later", ErrorCode.SERVICE_BUSY, 503, cause);
  }
  return new ClientError("Unknown error when starting session", ErrorCode.SERVER_ERROR, status, cause);
}

/** Equal-jitter exponential backoff, as in the SDK. */
function backoffMilliseconds(attempt, retry) {
  const ceiling = Math.min(retry.maxBackoffMs, retry.initialBackoffMs * 2 ** (attempt - 1));
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

const sleep = (milliseconds) => new Promise((resolve) => setTimeout(resolve, milliseconds));

/**
 * A stream of text for the persona to speak, sent as `talkstream` frames on the signalling
 * socket. All chunks share one correlation id, which is what the server interrupts.
 */
export class TalkMessageStream {
  /**
   * @param {string} correlationId
   * @param {StreamingSession} session
   */
  constructor(correlationId, session) {
    this.correlationId = correlationId;
    this.session = session;
    /** @type {"unstarted"|"streaming"|"ended"|"interrupted"} */
    this.state = "unstarted";
    session.talkStreams.add(this);
  }

  /**
   * Send a chunk; the first one carries `startOfSpeech: true`.
   * @param {string} text
   * @param {boolean} endOfSpeech true on the last chunk
   * @throws {Error} if the stream has ended or was interrupted
   */
  async streamMessageChunk(text, endOfSpeech) {
    if (!this.isActive()) throw new Error(`Talk stream is not in an active state: ${this.state}`);
    const payload = {
      content: text,
      startOfSpeech: this.state === "unstarted",
      endOfSpeech: Boolean(endOfSpeech),
      correlationId: this.correlationId,
    };
    this.state = endOfSpeech ? "ended" : "streaming";
    if (!this.isActive()) this.session.talkStreams.delete(this);
    this.session.sendTalkStream(payload);
  }

  /** End the speech without more text (an empty final chunk). */
  async endMessage() {
    if (this.state !== "streaming") {
      console.warn(`Talk stream is not in an active state: ${this.state}`);
      return;
    }
    this.session.sendTalkStream({ content: "", startOfSpeech: false, endOfSpeech: true, correlationId: this.correlationId });
    this.state = "ended";
    this.session.talkStreams.delete(this);
  }

  /** @returns {boolean} chunks may still be sent */
  isActive() {
    return this.state === "unstarted" || this.state === "streaming";
  }

  /** @returns {string} */
  getCorrelationId() {
    return this.correlationId;
  }

  /** @param {string} correlationId the stream the server says the user spoke over */
  onInterrupted(correlationId) {
    if (correlationId !== this.correlationId) return;
    this.state = "interrupted";
    this.session.talkStreams.delete(this);
  }
}

/** A session with one persona. Create it with {@link createClient}. */
export class ParleyClient {
  /**
   * @param {string} sessionToken
   * @param {ClientOptions} [options]
   */
  constructor(sessionToken, options = {}) {
    const claims = decodeSessionToken(sessionToken);
    if (String(claims.type ?? "").toLowerCase() === "legacy") {
      throw new ClientError("Legacy session tokens are no longer supported", ErrorCode.CONFIGURATION_ERROR, 400);
    }
    this.sessionToken = sessionToken;
    this.organizationId = claims.accountId ?? null;
    this.options = options;
    const api = options.api ?? {};
    this.baseUrl = api.baseUrl ?? window.location.origin;
    this.apiVersion = api.apiVersion ?? DEFAULT_API_VERSION;
    this.requestTimeoutMilliseconds = api.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MILLISECONDS;
    this.retry = { ...DEFAULT_RETRY, ...(api.retry ?? {}) };
    this.emitter = new EventEmitter();
    /** @type {Map<string, import("./streaming.js").ToolCallHandler>} */
    this.toolHandlers = new Map();
    /** @type {StreamingSession|null} */
    this.session = null;
    this.sessionId = null;
    this.streaming = false;
    this.inputAudioState = { isMuted: false, permissionState: AudioPermissionState.NOT_REQUESTED };
  }

  // --- session start --------------------------------------------------------------------

  /** @returns {object} the start-session body: only what is set, as the SDK sends it */
  startSessionBody() {
    const body = { clientMetadata: { ...CLIENT_METADATA } };
    const sensitivity = this.options.voiceDetection?.endOfSpeechSensitivity;
    if (sensitivity !== undefined) body.sessionOptions = { voiceDetection: { endOfSpeechSensitivity: sensitivity } };
    return body;
  }

  /** One `POST /v1/engine/session`. Every failure becomes a {@link ClientError}. */
  async attemptStartSession() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), this.requestTimeoutMilliseconds);
    let response;
    let data;
    try {
      response = await fetch(`${this.baseUrl}${this.apiVersion}/engine/session`, {
        method: "POST",
        headers: { "Content-Type": "application/json", Authorization: `Bearer ${this.sessionToken}` },
        body: JSON.stringify(this.startSessionBody()),
        signal: controller.signal,
      });
      data = await response.json();
    } catch (error) {
      const cause = error?.name === "AbortError" ? "the server did not answer in time" : "the server could not be reached";
      throw new ClientError("Failed to start session", ErrorCode.SERVER_ERROR, 500, cause);
    } finally {
      clearTimeout(timer);
    }
    if (response.status !== 200 && response.status !== 201) throw startSessionError(response.status, data);
    return data;
  }

  /** Start the session, retrying network errors and 5xx with the same token, as the SDK does. */
  async startSession() {
    for (let attempt = 1; ; attempt += 1) {
      try {
        return await this.attemptStartSession();
      } catch (error) {
        const retryable = error instanceof ClientError && error.statusCode >= 500;
        if (!retryable || attempt >= this.retry.maxAttempts) throw error;
        await sleep(backoffMilliseconds(attempt, this.retry));
      }
    }
  }

  /** Start the session if none is live, and build its streaming side. */
  async startSessionIfNeeded() {
    if (this.session) return;
    const answer = await this.startSession();
    if (!answer?.sessionId || !answer.engineHost || !answer.engineProtocol || !answer.clientConfig) {
      throw new ClientError("Failed to start session", ErrorCode.SERVER_ERROR, 500, "the server's answer is incomplete");
    }
    this.sessionId = answer.sessionId;
    this.session = new StreamingSession({
      sessionId: answer.sessionId,
      engineHost: answer.engineHost,
      engineProtocol: answer.engineProtocol,
      signallingEndpoint: answer.signallingEndpoint,
      clientConfig: answer.clientConfig,
      iceServers: this.options.iceServers,
      rtcConfiguration: this.options.rtcConfiguration,
      disableInputAudio: this.options.disableInputAudio,
      audioDeviceId: this.options.audioDeviceId,
      inputAudioState: this.inputAudioState,
      emitter: this.emitter,
      toolHandlers: this.toolHandlers,
    });
  }

  // --- streaming ------------------------------------------------------------------------

  /**
   * Start a session and play the persona (video and voice) in a `<video>` element.
   * Resolves once the connection is under way; listen for `VIDEO_PLAY_STARTED`.
   * @param {string} videoElementId
   * @throws {ClientError} if the session could not start
   */
  async streamToVideoElement(videoElementId) {
    if (this.streaming) throw new Error("Already streaming");
    await this.startSessionIfNeeded();
    const element = document.getElementById(videoElementId);
    if (!(element instanceof HTMLVideoElement)) throw new Error(`No <video> element with id ${videoElementId}`);
    this.streaming = true;
    this.session.setVideoElement(element);
    this.session.start();
  }

  /**
   * Start a session without an element; resolves with `[videoStream, audioStream]` (in
   * arrival order) once both tracks arrived.
   * @returns {Promise<MediaStream[]>}
   */
  async stream() {
    if (this.streaming) throw new Error("Already streaming");
    await this.startSessionIfNeeded();
    this.streaming = true;
    const session = this.session;
    return new Promise((resolve) => {
      const streams = [];
      const kinds = new Set();
      const arrived = (kind) => (mediaStream) => {
        streams.push(mediaStream);
        kinds.add(kind);
        if (kinds.size === 2) {
          this.removeListener(AnamEvent.VIDEO_STREAM_STARTED, onVideo);
          this.removeListener(AnamEvent.AUDIO_STREAM_STARTED, onAudio);
          resolve(streams);
        }
      };
      const onVideo = arrived("video");
      const onAudio = arrived("audio");
      this.addListener(AnamEvent.VIDEO_STREAM_STARTED, onVideo);
      this.addListener(AnamEvent.AUDIO_STREAM_STARTED, onAudio);
      session.start();
    });
  }

  /**
   * End the session: `CONNECTION_CLOSED(NORMAL)`, then the microphone, socket and peer
   * connection are closed. Nothing is sent: the server sees the socket close.
   */
  async stopStreaming() {
    if (!this.session) return;
    this.emitter.emit(AnamEvent.CONNECTION_CLOSED, ConnectionClosedCode.NORMAL);
    this.inputAudioState = { ...this.session.getInputAudioState(), permissionState: this.inputAudioState.permissionState };
    this.session.shutdown();
    this.session = null;
    this.sessionId = null;
    this.streaming = false;
  }

  /** @returns {boolean} */
  isStreaming() {
    return this.streaming;
  }

  /** @returns {string|null} */
  getActiveSessionId() {
    return this.sessionId;
  }

  // --- talking --------------------------------------------------------------------------

  /**
   * The persona says this text verbatim (`POST /talk`).
   * @param {string} content
   */
  async talk(content) {
    if (!this.session) throw new Error("Failed to send talk command: session is not started.");
    if (!this.streaming) throw new Error("Failed to send talk command: not currently streaming.");
    await this.session.sendTalkCommand(content);
  }

  /**
   * Send typed text, handled as if the user had said it.
   * @param {string} content
   */
  sendUserMessage(content) {
    this.requireStreaming("send user message");
    this.sendDataMessage(
      JSON.stringify({
        content,
        timestamp: new Date().toISOString().replace("Z", ""),
        session_id: this.sessionId,
        message_type: "speech",
      }),
    );
  }

  /** Stop the persona mid-sentence. */
  interruptPersona() {
    this.requireStreaming("send interrupt command");
    this.sendDataMessage(
      JSON.stringify({ message_type: "interrupt", session_id: this.sessionId, timestamp: new Date().toISOString() }),
    );
  }

  /**
   * Give the persona's language model more context.
   * @param {string} content
   */
  addContext(content) {
    this.requireStreaming("add context");
    this.sendDataMessage(JSON.stringify({ message_type: "context", session_id: this.sessionId, content }));
  }

  /**
   * Send a raw string on the data channel (dropped if it is not open yet).
   * @param {string} message
   */
  sendDataMessage(message) {
    if (!this.session) throw new Error("Failed to send message: session is not started.");
    this.session.sendDataMessage(message);
  }

  /**
   * A stream of text chunks for the persona to speak.
   * @param {string} [correlationId] defaults to a random id
   * @returns {TalkMessageStream}
   */
  createTalkMessageStream(correlationId) {
    if (!this.session) throw new Error("Failed to start talk message stream: session is not started.");
    if (correlationId !== undefined && String(correlationId).trim() === "") {
      throw new Error("Failed to start talk message stream: correlationId is empty");
    }
    return new TalkMessageStream(correlationId ?? Math.random().toString(36).substring(2, 15), this.session);
  }

  /** @param {string} action */
  requireStreaming(action) {
    if (!this.streaming || !this.sessionId) throw new Error(`Failed to ${action}: not currently streaming`);
  }

  // --- microphone -----------------------------------------------------------------------

  /** @returns {{isMuted: boolean, permissionState: string}} */
  getInputAudioState() {
    if (this.session) this.inputAudioState = this.session.getInputAudioState();
    return { ...this.inputAudioState };
  }

  /** Send silence instead of the microphone (the track is disabled, nothing is signalled). */
  muteInputAudio() {
    return this.setMuted(true);
  }

  /** Send the microphone again. */
  unmuteInputAudio() {
    return this.setMuted(false);
  }

  /** @param {boolean} muted */
  setMuted(muted) {
    this.inputAudioState = this.session
      ? this.session.setMuted(muted)
      : { ...this.inputAudioState, isMuted: muted };
    return { ...this.inputAudioState };
  }

  // --- tools ----------------------------------------------------------------------------

  /**
   * Handle a tool of the persona's LLM in the page, as with the SDK. For a client tool,
   * `onStart` gets `{toolCallId, toolName, arguments, ...}` and its return value (a string)
   * is the tool's result; a throw reports the error. `onComplete` and `onFail` follow the
   * server's verdict. One handler per tool name; a later one replaces it.
   * @param {string} toolName
   * @param {import("./streaming.js").ToolCallHandler} handler
   * @returns {() => void} removes the handler
   */
  registerToolCallHandler(toolName, handler) {
    this.toolHandlers.set(toolName, handler);
    return () => {
      if (this.toolHandlers.get(toolName) === handler) this.toolHandlers.delete(toolName);
    };
  }

  // --- events ---------------------------------------------------------------------------

  /**
   * @param {string} event one of {@link AnamEvent}
   * @param {Function} callback
   */
  addListener(event, callback) {
    this.emitter.addListener(event, callback);
  }

  /**
   * @param {string} event
   * @param {Function} callback
   */
  removeListener(event, callback) {
    this.emitter.removeListener(event, callback);
  }
}

/**
 * Create a client for one session token (minted by your server; single use).
 * @param {string} sessionToken
 * @param {ClientOptions} [options]
 * @returns {ParleyClient}
 * @throws {Error} `Invalid session token format` if it is not a JWT with a JSON payload
 */
export function createClient(sessionToken, options = {}) {
  return new ParleyClient(sessionToken, options);
}
