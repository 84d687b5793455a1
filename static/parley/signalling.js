/**
 * @file The signalling websocket of a session: JSON frames `{actionType, sessionId, payload}`,
 * heartbeats, buffering while closed, and reconnection as the Anam SDK does it.
 */

/** The socket counts as stable, and its retry budget is refilled, after this long open. */
const STABLE_CONNECTION_MILLISECONDS = 5000;
/** Reconnect delay grows by this much per failed attempt (100 ms, 200 ms, ...). */
const RECONNECT_STEP_MILLISECONDS = 100;

/**
 * @typedef {object} SignallingOptions
 * @property {string} url `ws(s)://host/path?session_id=...`
 * @property {string} sessionId carried by every outgoing frame
 * @property {number} heartbeatIntervalSeconds
 * @property {number} maxReconnectionAttempts
 * @property {(frame: {actionType: string, sessionId: string, payload: any}) => void} onFrame
 * @property {() => void} onFirstOpen called once, when the socket first opens
 * @property {() => void} onGiveUp called when the reconnection budget is spent
 */

export class SignallingClient {
  /** @param {SignallingOptions} options */
  constructor(options) {
    this.options = options;
    /** @type {WebSocket|null} */
    this.socket = null;
    /** @type {string[]} frames sent while the socket was not open */
    this.outbox = [];
    this.attempts = 0;
    this.stopped = false;
    this.openedOnce = false;
    this.heartbeatTimer = null;
    this.stableTimer = null;
    this.reconnectTimer = null;
  }

  /** Open the socket (again, after a drop). */
  connect() {
    if (this.stopped) return;
    const socket = new WebSocket(this.options.url);
    this.socket = socket;
    socket.onopen = () => this.onOpen(socket);
    socket.onclose = () => this.onClose(socket);
    socket.onerror = () => {}; // A close event always follows; handled there.
    socket.onmessage = (event) => this.onMessage(event);
  }

  /** @param {WebSocket} socket */
  onOpen(socket) {
    if (socket !== this.socket || this.stopped) return;
    for (const frame of this.outbox.splice(0)) socket.send(frame);
    const intervalMilliseconds = Math.max(1, this.options.heartbeatIntervalSeconds) * 1000;
    this.heartbeatTimer = setInterval(() => this.send("heartbeat", ""), intervalMilliseconds);
    this.stableTimer = setTimeout(() => {
      this.attempts = 0;
    }, STABLE_CONNECTION_MILLISECONDS);
    if (!this.openedOnce) {
      this.openedOnce = true;
      this.options.onFirstOpen();
    }
  }

  /** @param {WebSocket} socket */
  onClose(socket) {
    if (socket !== this.socket) return;
    this.clearTimers();
    if (this.stopped) return;
    this.attempts += 1;
    if (this.attempts <= this.options.maxReconnectionAttempts) {
      this.reconnectTimer = setTimeout(() => this.connect(), RECONNECT_STEP_MILLISECONDS * this.attempts);
      return;
    }
    this.stopped = true;
    this.options.onGiveUp();
  }

  /** @param {MessageEvent} event */
  onMessage(event) {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch (error) {
      console.error("Parley client: a signalling frame was not JSON", event.data);
      return;
    }
    if (frame && typeof frame === "object") this.options.onFrame(frame);
  }

  /**
   * Send a frame now, or when the socket (re)opens.
   * @param {string} actionType
   * @param {any} payload
   */
  send(actionType, payload) {
    const frame = JSON.stringify({ actionType, sessionId: this.options.sessionId, payload });
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(frame);
    } else if (!this.stopped) {
      this.outbox.push(frame);
    }
  }

  /** Close for good: no reconnection, no more frames. */
  stop() {
    this.stopped = true;
    this.clearTimers();
    clearTimeout(this.reconnectTimer);
    this.outbox = [];
    if (this.socket && this.socket.readyState <= WebSocket.OPEN) this.socket.close(1000);
  }

  clearTimers() {
    clearInterval(this.heartbeatTimer);
    clearTimeout(this.stableTimer);
    this.heartbeatTimer = null;
    this.stableTimer = null;
  }
}
