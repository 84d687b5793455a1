/**
 * @file The persona chat page: wires Parley's client to the page (video, captions, history,
 * microphone, typing) and shows the connection's state.
 *
 * The first Start uses the session token the server embedded in the page; a token is
 * single use, so any later Start asks the page's own endpoint for a fresh one.
 */

import { AnamEvent, ClientError, ConnectionClosedCode, ErrorCode, createClient } from "./client.js";

/**
 * The client has no timeout of its own (nor has the Anam SDK); a visitor should not watch a
 * spinner forever if the server never answers the offer.
 */
const CONNECT_TIMEOUT_MILLISECONDS = 45_000;
/** A finished caption stays on screen this long, then fades. */
const CAPTION_LINGER_MILLISECONDS = 6000;

const config = JSON.parse(document.getElementById("parley-page-config").textContent);
const personaName = config.persona.name;

const elements = {
  pill: document.getElementById("state-pill"),
  stateLabel: document.getElementById("state-label"),
  banner: document.getElementById("error-banner"),
  bannerText: document.getElementById("error-text"),
  bannerClose: document.getElementById("error-close"),
  screen: document.getElementById("screen"),
  video: document.getElementById("persona-video"),
  overlayText: document.getElementById("overlay-text"),
  caption: document.getElementById("caption"),
  captionSpeaker: document.getElementById("caption-speaker"),
  captionText: document.getElementById("caption-text"),
  start: document.getElementById("start-button"),
  stop: document.getElementById("stop-button"),
  interrupt: document.getElementById("interrupt-button"),
  mic: document.getElementById("mic-button"),
  micLabel: document.getElementById("mic-label"),
  micMeter: document.getElementById("mic-meter"),
  history: document.getElementById("history"),
  composer: document.getElementById("composer"),
  input: document.getElementById("message-input"),
  send: document.getElementById("send-button"),
};

const STATE_LABELS = { idle: "Ready", connecting: "Connecting…", live: "Live", ended: "Ended", error: "Error" };

/** Everything that belongs to one conversation; replaced on each Start. */
let conversation = null;
/** The embedded token is spent by the first Start. */
let embeddedToken = config.sessionToken || "";

// --- small view helpers ------------------------------------------------------------------

function setState(state) {
  elements.pill.dataset.state = state;
  elements.stateLabel.textContent = STATE_LABELS[state];
  document.body.dataset.state = state;
}

/**
 * @param {string} text
 * @param {"error"|"notice"|"info"} [tone]
 */
function showBanner(text, tone = "error") {
  elements.bannerText.textContent = text;
  elements.banner.dataset.tone = tone;
  elements.banner.hidden = false;
}

function hideBanner() {
  elements.banner.hidden = true;
}

function setTalking(enabled) {
  elements.input.disabled = !enabled;
  elements.send.disabled = !enabled;
  elements.interrupt.disabled = !enabled;
}

/** @param {"off"|"pending"|"on"|"muted"|"denied"} state */
function setMic(state) {
  const labels = { off: "Mic off", pending: "Asking for mic…", on: "Mic on", muted: "Muted", denied: "Mic blocked" };
  elements.mic.dataset.mic = state;
  elements.micLabel.textContent = labels[state];
  elements.mic.disabled = !(state === "on" || state === "muted");
  elements.mic.setAttribute("aria-pressed", String(state === "muted"));
  elements.mic.title = state === "on" ? "Mute the microphone" : state === "muted" ? "Unmute the microphone" : "";
  if (state !== "on") elements.micMeter.style.transform = "scaleX(0)";
}

function showCaption(speaker, text) {
  clearTimeout(showCaption.fadeTimer);
  elements.caption.hidden = false;
  elements.caption.classList.remove("caption-fading");
  elements.caption.dataset.speaker = speaker === "You" ? "user" : "persona";
  elements.captionSpeaker.textContent = speaker;
  elements.captionText.textContent = text;
}

function lingerCaption() {
  clearTimeout(showCaption.fadeTimer);
  showCaption.fadeTimer = setTimeout(() => elements.caption.classList.add("caption-fading"), CAPTION_LINGER_MILLISECONDS);
}

function hideCaption() {
  clearTimeout(showCaption.fadeTimer);
  elements.caption.hidden = true;
}

/** @param {{id: string, role: string, content: string, interrupted?: boolean, live?: boolean}[]} messages */
function renderHistory(messages) {
  const items = messages.map((message) => {
    const item = document.createElement("li");
    item.className = `message message-${message.role}`;
    if (message.live) item.classList.add("message-live");
    // Only messages not shown before slide in; the whole list is rebuilt on each update.
    if (!renderHistory.shown.has(message.id)) item.classList.add("message-new");
    item.dataset.role = message.role;
    item.dataset.id = message.id;
    const who = document.createElement("span");
    who.className = "message-author";
    who.textContent = message.role === "user" ? "You" : personaName;
    const bubble = document.createElement("p");
    bubble.className = "message-bubble";
    bubble.textContent = message.content || "…";
    item.append(who, bubble);
    if (message.interrupted) {
      item.classList.add("message-interrupted");
      const badge = document.createElement("span");
      badge.className = "message-badge";
      badge.textContent = "interrupted";
      who.append(badge);
    }
    return item;
  });
  if (!items.length) return;
  renderHistory.shown = new Set(messages.map((message) => message.id));
  elements.history.replaceChildren(...items);
  elements.history.scrollTop = elements.history.scrollHeight;
}

renderHistory.shown = new Set();

/**
 * The history as the client last sent it, plus the persona's message while it is still being
 * spoken (the client adds a persona message to the history only once it ends).
 */
function showConversation(current) {
  const speaking = current.speaking;
  const known = speaking && current.finished.some((message) => message.id === speaking.id);
  renderHistory(speaking && !known ? [...current.finished, speaking] : current.finished);
}

function resetHistory() {
  renderHistory.shown = new Set();
  const empty = document.createElement("li");
  empty.className = "history-empty";
  empty.textContent = `Say hello to ${personaName}: ${personaName} will greet you first.`;
  elements.history.replaceChildren(empty);
}

// --- microphone level meter --------------------------------------------------------------

/** A live level meter for the microphone stream, drawn with WebAudio. */
class LevelMeter {
  /** @param {MediaStream} stream */
  constructor(stream) {
    this.context = new AudioContext();
    this.analyser = this.context.createAnalyser();
    this.analyser.fftSize = 512;
    this.context.createMediaStreamSource(stream).connect(this.analyser);
    this.samples = new Float32Array(this.analyser.fftSize);
    this.frame = requestAnimationFrame(() => this.draw());
  }

  draw() {
    this.analyser.getFloatTimeDomainData(this.samples);
    let sum = 0;
    for (const sample of this.samples) sum += sample * sample;
    const rms = Math.sqrt(sum / this.samples.length);
    // Speech sits around -40..-10 dBFS; map that range onto the bar.
    const level = Math.min(1, Math.max(0, (20 * Math.log10(rms + 1e-8) + 55) / 45));
    if (elements.mic.dataset.mic === "on") elements.micMeter.style.transform = `scaleX(${level.toFixed(3)})`;
    this.frame = requestAnimationFrame(() => this.draw());
  }

  stop() {
    cancelAnimationFrame(this.frame);
    this.context.close().catch(() => {});
  }
}

// --- session tokens ----------------------------------------------------------------------

function csrfToken() {
  return document.querySelector('meta[name="csrf-token"]')?.content ?? "";
}

/** A fresh single-use token from the page's endpoint. */
async function freshToken() {
  let response;
  let body = {};
  try {
    response = await fetch(config.tokenUrl, {
      method: "POST",
      headers: { "X-CSRFToken": csrfToken(), Accept: "application/json" },
      credentials: "same-origin",
    });
    body = await response.json().catch(() => ({}));
  } catch (error) {
    throw new Error("The server could not be reached. Check your connection and try again.");
  }
  if (!response.ok || !body.sessionToken) {
    throw new Error(body.message || `The server refused a new session (HTTP ${response.status}).`);
  }
  return body.sessionToken;
}

// --- one conversation --------------------------------------------------------------------

function describeStartFailure(error) {
  if (error instanceof ClientError) {
    const detail = error.cause ? `: ${error.cause}` : "";
    return `Could not start the session (${error.message}${detail}).`;
  }
  return error?.message || "Could not start the session.";
}

// The session limits' reasons, as the server sends them in `endsession` (the call's end reason).
const LIMIT_REASONS = {
  idle_timeout: "The session ended: nobody spoke for a while.",
  max_duration: "The session reached its time limit.",
};

function describeClose(code, details) {
  switch (code) {
    case ConnectionClosedCode.SERVER_CLOSED_CONNECTION:
      if (LIMIT_REASONS[details]) return LIMIT_REASONS[details];
      return details ? `The session ended: ${details}.` : "The server ended the session.";
    case ConnectionClosedCode.SIGNALLING_CLIENT_CONNECTION_FAILURE:
      return "Lost the connection to the server. Press Start to try again.";
    case ConnectionClosedCode.WEBRTC_FAILURE:
      return "The audio and video connection failed. Press Start to try again.";
    case ConnectionClosedCode.MICROPHONE_PERMISSION_DENIED:
      return "The microphone is blocked.";
    default:
      return "";
  }
}

/** Wire one client to the page. */
function listen(client, current) {
  client.addListener(AnamEvent.CONNECTION_ESTABLISHED, () => {
    if (conversation !== current) return;
    setState("live");
    elements.overlayText.textContent = `${personaName} is joining…`;
  });
  client.addListener(AnamEvent.DATA_CHANNEL_OPEN, () => {
    if (conversation === current) setTalking(true);
  });
  client.addListener(AnamEvent.VIDEO_PLAY_STARTED, () => {
    if (conversation !== current) return;
    clearTimeout(current.connectTimer);
    elements.screen.dataset.video = "playing";
    setState("live");
    // Autoplay normally starts it; after a click, playing with sound is allowed.
    elements.video.play().catch(() => {});
  });
  client.addListener(AnamEvent.MESSAGE_STREAM_EVENT_RECEIVED, (event) => {
    if (conversation !== current) return;
    if (event.role === "persona") {
      if (current.captionId !== event.id) {
        current.captionId = event.id;
        current.captionText = "";
      }
      current.captionText += event.content;
      showCaption(personaName, current.captionText.trim() || "…");
      if (event.endOfSpeech) lingerCaption();
      current.speaking = {
        id: event.id,
        role: "persona",
        content: current.captionText.trim(),
        interrupted: event.interrupted,
        live: !event.endOfSpeech,
      };
      showConversation(current);
    } else if (event.role === "user" && event.endOfSpeech) {
      current.captionId = event.id;
      showCaption("You", event.content);
      lingerCaption();
    }
  });
  client.addListener(AnamEvent.MESSAGE_HISTORY_UPDATED, (messages) => {
    if (conversation !== current) return;
    current.finished = messages;
    if (current.speaking && messages.some((message) => message.id === current.speaking.id)) current.speaking = null;
    showConversation(current);
  });
  client.addListener(AnamEvent.MIC_PERMISSION_PENDING, () => conversation === current && setMic("pending"));
  client.addListener(AnamEvent.MIC_PERMISSION_DENIED, () => {
    if (conversation !== current) return;
    setMic("denied");
    showBanner("Microphone access is blocked, so you can type but not talk. Allow the microphone for this site and press Start again to use your voice.", "notice");
  });
  client.addListener(AnamEvent.INPUT_AUDIO_STREAM_STARTED, (stream) => {
    if (conversation !== current) return;
    setMic(client.getInputAudioState().isMuted ? "muted" : "on");
    try {
      current.meter = new LevelMeter(stream);
    } catch (error) {
      console.warn("Parley page: no level meter", error);
    }
  });
  client.addListener(AnamEvent.USER_SPEECH_STARTED, () => elements.mic.classList.add("mic-hearing"));
  client.addListener(AnamEvent.USER_SPEECH_ENDED, () => elements.mic.classList.remove("mic-hearing"));
  // The visitor's words while they speak, in the caption; the final text joins the history.
  client.addListener(AnamEvent.USER_SPEECH_INTERIM, ({ content }) => {
    if (conversation === current && content) showCaption("You", content);
  });
  client.addListener(AnamEvent.SERVER_WARNING, (message) => console.warn("Parley page: server warning:", message));
  client.addListener(AnamEvent.CONNECTION_CLOSED, (code, details) => {
    if (conversation !== current) return;
    const message = describeClose(code, details);
    const failed =
      code === ConnectionClosedCode.WEBRTC_FAILURE || code === ConnectionClosedCode.SIGNALLING_CLIENT_CONNECTION_FAILURE;
    // An end the server chose (a hang-up, a limit) is told plainly; a failure is an error.
    const ended = code === ConnectionClosedCode.SERVER_CLOSED_CONNECTION;
    if (failed) showBanner(message, "error");
    else if (message) showBanner(message, ended ? "info" : "notice");
    finish(failed ? "error" : "ended");
    if (code !== ConnectionClosedCode.NORMAL) client.stopStreaming().catch(() => {});
  });
}

/** Tear the page's side of a conversation down and show the end state. */
function finish(state) {
  const current = conversation;
  conversation = null;
  clearTimeout(current?.connectTimer);
  current?.meter?.stop();
  setState(state);
  setTalking(false);
  setMic("off");
  elements.mic.classList.remove("mic-hearing");
  elements.start.hidden = false;
  elements.start.disabled = false;
  elements.start.querySelector("span").textContent = "Start again";
  elements.stop.hidden = true;
  elements.screen.dataset.video = state === "error" ? "error" : "ended";
  elements.video.srcObject = null;
  elements.overlayText.textContent =
    state === "error" ? "The conversation could not continue." : `Conversation ended. Press Start to talk to ${personaName} again.`;
  hideCaption(); // The overlay speaks now; the last words are in the history.
}

async function start() {
  hideBanner();
  hideCaption();
  resetHistory();
  const current = {
    client: null,
    captionId: null,
    captionText: "",
    meter: null,
    connectTimer: null,
    finished: [],
    speaking: null,
  };
  conversation = current;
  current.connectTimer = setTimeout(() => {
    if (conversation !== current) return;
    showBanner(`${personaName} did not answer in time. Press Start to try again.`, "error");
    const client = current.client;
    finish("error");
    client?.stopStreaming().catch(() => {});
  }, CONNECT_TIMEOUT_MILLISECONDS);
  setState("connecting");
  elements.start.disabled = true;
  elements.start.hidden = true;
  elements.stop.hidden = false;
  elements.screen.dataset.video = "loading";
  elements.overlayText.textContent = `Connecting to ${personaName}…`;
  setMic("off");

  let fromPage = Boolean(embeddedToken);
  try {
    for (let attempt = 0; ; attempt += 1) {
      const token = fromPage ? embeddedToken : await freshToken();
      embeddedToken = "";
      if (conversation !== current) return; // Stopped while waiting.
      const client = createClient(token);
      current.client = client;
      listen(client, current);
      try {
        await client.streamToVideoElement(elements.video.id);
        if (conversation !== current) await client.stopStreaming(); // Stopped while starting.
        return;
      } catch (error) {
        // An embedded token may have expired while the page sat open: one retry, fresh token.
        const stale = error instanceof ClientError && error.code === ErrorCode.AUTHENTICATION_ERROR;
        if (!(fromPage && stale && attempt === 0)) throw error;
        fromPage = false;
      }
    }
  } catch (error) {
    if (conversation !== current) return;
    console.error("Parley page: session start failed", error);
    showBanner(describeStartFailure(error), "error");
    finish("error");
  }
}

async function stop() {
  const current = conversation;
  if (!current) return;
  if (current.client) {
    await current.client.stopStreaming(); // Emits CONNECTION_CLOSED(NORMAL): finish() runs.
  }
  if (conversation === current) finish("ended");
}

// --- controls ----------------------------------------------------------------------------

elements.start.addEventListener("click", () => start());
elements.stop.addEventListener("click", () => stop());
elements.interrupt.addEventListener("click", () => {
  try {
    conversation?.client?.interruptPersona();
  } catch (error) {
    console.warn("Parley page: interrupt failed", error);
  }
});
elements.mic.addEventListener("click", () => {
  const client = conversation?.client;
  if (!client) return;
  const state = client.getInputAudioState().isMuted ? client.unmuteInputAudio() : client.muteInputAudio();
  setMic(state.isMuted ? "muted" : "on");
});
elements.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const text = elements.input.value.trim();
  const client = conversation?.client;
  if (!text || !client) return;
  try {
    client.sendUserMessage(text);
    elements.input.value = "";
  } catch (error) {
    showBanner(`Your message could not be sent: ${error.message}`, "error");
  }
});
elements.bannerClose.addEventListener("click", hideBanner);
window.addEventListener("pagehide", () => {
  conversation?.client?.stopStreaming();
});

if (config.error) setState("error");
else setState("idle");
