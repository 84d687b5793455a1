/**
 * @file The public event vocabulary of Parley's browser client and a tiny event emitter.
 *
 * The names and values are those of `@anam-ai/js-sdk` 4.27.0 (`AnamEvent`,
 * `ConnectionClosedCode`, `AudioPermissionState`), so code written against the SDK can
 * switch to this client by changing its import.
 */

/**
 * Events a client emits; listeners get the same arguments as with the Anam SDK.
 * @readonly
 * @enum {string}
 */
export const AnamEvent = Object.freeze({
  /** `(messages: Message[])`: the whole history, after a chunk that ends a speech. */
  MESSAGE_HISTORY_UPDATED: "MESSAGE_HISTORY_UPDATED",
  /** `(event: MessageStreamEvent)`: one `speechText` chunk. */
  MESSAGE_STREAM_EVENT_RECEIVED: "MESSAGE_STREAM_EVENT_RECEIVED",
  /** `()`: ICE connected for the first time. */
  CONNECTION_ESTABLISHED: "CONNECTION_ESTABLISHED",
  /** `()`: the `session` data channel is open. */
  DATA_CHANNEL_OPEN: "DATA_CHANNEL_OPEN",
  /** `(code: ConnectionClosedCode, details?: string)`. */
  CONNECTION_CLOSED: "CONNECTION_CLOSED",
  /** `(stream: MediaStream)`: the microphone is attached to the call. */
  INPUT_AUDIO_STREAM_STARTED: "INPUT_AUDIO_STREAM_STARTED",
  /** `(stream: MediaStream)`: the persona's video track arrived. */
  VIDEO_STREAM_STARTED: "VIDEO_STREAM_STARTED",
  /** `()`: the first video frame is on screen (streamToVideoElement only). */
  VIDEO_PLAY_STARTED: "VIDEO_PLAY_STARTED",
  /** `(stream: MediaStream)`: the persona's audio track arrived. */
  AUDIO_STREAM_STARTED: "AUDIO_STREAM_STARTED",
  /** `(correlationId: string)`: the user spoke over a talk stream. */
  TALK_STREAM_INTERRUPTED: "TALK_STREAM_INTERRUPTED",
  /** `(sessionId: string)`: the server says the persona is ready. */
  SESSION_READY: "SESSION_READY",
  /** `(message: string)`. */
  SERVER_WARNING: "SERVER_WARNING",
  MIC_PERMISSION_PENDING: "MIC_PERMISSION_PENDING",
  MIC_PERMISSION_GRANTED: "MIC_PERMISSION_GRANTED",
  /** `(error: string)`: the session goes on without a microphone. */
  MIC_PERMISSION_DENIED: "MIC_PERMISSION_DENIED",
  INPUT_AUDIO_DEVICE_CHANGED: "INPUT_AUDIO_DEVICE_CHANGED",
  CLIENT_TOOL_EVENT_RECEIVED: "CLIENT_TOOL_EVENT_RECEIVED",
  TOOL_CALL_STARTED: "TOOL_CALL_STARTED",
  TOOL_CALL_COMPLETED: "TOOL_CALL_COMPLETED",
  TOOL_CALL_FAILED: "TOOL_CALL_FAILED",
  REASONING_HISTORY_UPDATED: "REASONING_HISTORY_UPDATED",
  REASONING_STREAM_EVENT_RECEIVED: "REASONING_STREAM_EVENT_RECEIVED",
  /** `(correlationId: string)`: voice activity started. */
  USER_SPEECH_STARTED: "USER_SPEECH_STARTED",
  /** `(correlationId: string)`: voice activity ended. */
  USER_SPEECH_ENDED: "USER_SPEECH_ENDED",
  /**
   * Parley extension (the Anam SDK ignores it): `({content, correlationId})`, the words heard so
   * far while the user speaks; they only ever grow. The final text arrives in the history.
   */
  USER_SPEECH_INTERIM: "USER_SPEECH_INTERIM",
  DIRECTOR_NOTE_CUE_APPLIED: "DIRECTOR_NOTE_CUE_APPLIED",
  PERSONA_CONFIG_UPDATE_APPLIED: "PERSONA_CONFIG_UPDATE_APPLIED",
});

/**
 * Why a connection closed: the first argument of `CONNECTION_CLOSED`.
 * @readonly
 * @enum {string}
 */
export const ConnectionClosedCode = Object.freeze({
  NORMAL: "CONNECTION_CLOSED_CODE_NORMAL",
  MICROPHONE_PERMISSION_DENIED: "CONNECTION_CLOSED_CODE_MICROPHONE_PERMISSION_DENIED",
  SIGNALLING_CLIENT_CONNECTION_FAILURE: "CONNECTION_CLOSED_CODE_SIGNALLING_CLIENT_CONNECTION_FAILURE",
  WEBRTC_FAILURE: "CONNECTION_CLOSED_CODE_WEBRTC_FAILURE",
  SERVER_CLOSED_CONNECTION: "CONNECTION_CLOSED_CODE_SERVER_CLOSED_CONNECTION",
});

/**
 * The microphone permission, as in `getInputAudioState().permissionState`.
 * @readonly
 * @enum {string}
 */
export const AudioPermissionState = Object.freeze({
  PENDING: "pending",
  GRANTED: "granted",
  DENIED: "denied",
  NOT_REQUESTED: "not_requested",
});

/**
 * Error codes of a failed session start (`ClientError.code`), as in the Anam SDK.
 * @readonly
 * @enum {string}
 */
export const ErrorCode = Object.freeze({
  VALIDATION_ERROR: "CLIENT_ERROR_CODE_VALIDATION_ERROR",
  AUTHENTICATION_ERROR: "CLIENT_ERROR_CODE_AUTHENTICATION_ERROR",
  NO_PLAN_FOUND: "CLIENT_ERROR_CODE_NO_PLAN_FOUND",
  USAGE_LIMIT_REACHED: "CLIENT_ERROR_CODE_USAGE_LIMIT_REACHED",
  SPEND_CAP_REACHED: "CLIENT_ERROR_CODE_SPEND_CAP_REACHED",
  MAX_CONCURRENT_SESSIONS_REACHED: "CLIENT_ERROR_CODE_MAX_CONCURRENT_SESSIONS_REACHED",
  SERVICE_BUSY: "CLIENT_ERROR_CODE_SERVICE_BUSY",
  SERVER_ERROR: "CLIENT_ERROR_CODE_SERVER_ERROR",
  CONFIGURATION_ERROR: "CLIENT_ERROR_CODE_CONFIGURATION_ERROR",
});

/**
 * A failure to start a session. `message` is the SDK's generic text; `cause` is the
 * server's own explanation (its `message` field) when it gave one.
 */
export class ClientError extends Error {
  /**
   * @param {string} message
   * @param {string} code one of {@link ErrorCode}
   * @param {number} statusCode the HTTP status (500 for network errors and timeouts)
   * @param {string} [cause] the server's explanation
   */
  constructor(message, code, statusCode, cause) {
    super(message);
    this.name = "ClientError";
    this.code = code;
    this.statusCode = statusCode;
    this.cause = cause;
  }
}

/**
 * A minimal synchronous event emitter. A listener that throws is logged and does not stop
 * the others (nor the client that emits).
 */
export class EventEmitter {
  constructor() {
    /** @type {Map<string, Set<Function>>} */
    this.listeners = new Map();
  }

  /**
   * @param {string} event
   * @param {Function} callback
   */
  addListener(event, callback) {
    if (!this.listeners.has(event)) this.listeners.set(event, new Set());
    this.listeners.get(event).add(callback);
  }

  /**
   * @param {string} event
   * @param {Function} callback
   */
  removeListener(event, callback) {
    this.listeners.get(event)?.delete(callback);
  }

  /**
   * @param {string} event
   * @param {...any} args
   */
  emit(event, ...args) {
    for (const callback of [...(this.listeners.get(event) ?? [])]) {
      try {
        callback(...args);
      } catch (error) {
        console.error(`Parley client: a ${event} listener failed`, error);
      }
    }
  }
}
