// The admin's live calls page (calls.review.consumers.LiveCallsConsumer): the ongoing calls as
// they start and end, one call's transcript and captions as they happen, and staff actions.
"use strict";
(function () {
  const root = document.getElementById("content-main");
  const list = document.querySelector("#live-calls tbody");
  const state = document.getElementById("live-state");
  const panel = document.getElementById("live-call");
  const title = document.getElementById("live-call-title");
  const callState = document.getElementById("live-call-state");
  const transcript = document.getElementById("live-transcript");
  const feedback = document.getElementById("live-feedback");
  const callLink = document.getElementById("live-call-link");
  const sayForm = document.getElementById("live-say");
  const sayText = document.getElementById("live-say-text");
  const endButton = document.getElementById("live-end");
  // Closed by the server for good: not logged in, not allowed. Anything else reconnects.
  const REFUSED_CODES = [4401, 4403];
  const RECONNECT_DELAY_MS = 2000;
  // A final line is spoken if speech was heard this shortly before it (SPOKEN_TRANSCRIPT_WINDOW_SECONDS).
  const SPOKEN_WINDOW_MS = 5000;
  // How long after a final line an interim of its words is taken as late, not a new caption.
  const LATE_CAPTION_MS = 3000;
  let heardSpeechAt = null;
  let lastFinal = null;
  // Calls by id: {row data, tr}.
  const calls = new Map();
  let socket = null;
  let watching = null;

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function clock(iso) {
    if (!iso) return "";
    const date = new Date(iso);
    return isNaN(date) ? "" : date.toLocaleTimeString([], { hour12: false });
  }

  // Time since the watched call started, as the call page writes it (+m:ss.s).
  let watchedStart = null;
  function sinceStart(iso) {
    if (!watchedStart || !iso) return "";
    const seconds = Math.max(0, (new Date(iso) - watchedStart) / 1000);
    const minutes = Math.floor(seconds / 60);
    return "+" + minutes + ":" + (seconds - minutes * 60).toFixed(1).padStart(4, "0");
  }

  function say(message, kind) {
    feedback.textContent = message;
    feedback.className = "parley-live-feedback " + (kind || "");
  }

  // --- The list ---------------------------------------------------------------------------

  function showEmpty() {
    const empty = list.querySelector("tr.empty");
    if (calls.size === 0 && !empty) {
      const row = el("tr", "empty");
      const cell = el("td", "", "No call is going on.");
      cell.colSpan = 4;
      row.append(cell);
      list.append(row);
    } else if (calls.size > 0 && empty) {
      empty.remove();
    }
  }

  function addCall(call) {
    if (!call || !call.callId || calls.has(call.callId)) return;
    const row = el("tr", "live-call");
    row.dataset.callId = call.callId;
    row.append(
      el("td", "", call.persona || call.agent),
      el("td", "", call.transport),
      el("td", "", call.from || "-"),
      el("td", "", clock(call.startedAt)),
    );
    row.addEventListener("click", () => watch(call.callId));
    list.prepend(row);
    calls.set(call.callId, { call, row });
    showEmpty();
  }

  function removeCall(callId, reason) {
    const known = calls.get(callId);
    if (known) {
      known.row.remove();
      calls.delete(callId);
    }
    showEmpty();
    if (callId === watching) {
      callState.textContent = "The call has ended" + (reason ? " (" + reason + ")." : ".");
      setActions(false);
    }
  }

  // --- One call ---------------------------------------------------------------------------

  function watch(callId) {
    watching = callId;
    for (const { row } of calls.values()) row.classList.toggle("selected", row.dataset.callId === callId);
    panel.hidden = false;
    transcript.replaceChildren(el("p", "parley-note", "Loading the transcript…"));
    say("");
    callLink.href = root.dataset.callUrl.replace("CALL_ID", encodeURIComponent(callId));
    send({ type: "watch", callId });
  }

  function setActions(enabled) {
    if (!sayForm) return;
    for (const control of sayForm.querySelectorAll("input, button")) control.disabled = !enabled;
  }

  function scrollDown() {
    transcript.scrollTop = transcript.scrollHeight;
  }

  // A turn's bubble, found by its message id or made.
  function turn(messageId, speaker) {
    let node = messageId ? transcript.querySelector(`.parley-turn[data-message-id="${CSS.escape(messageId)}"]`) : null;
    if (!node) {
      node = el("div", "parley-turn " + speaker);
      if (messageId) node.dataset.messageId = messageId;
      const meta = el("div", "parley-meta");
      meta.append(el("strong", "", speaker === "visitor" ? "Visitor" : title.dataset.persona || "Persona"));
      const now = new Date().toISOString();
      meta.append(el("span", "clock", clock(now) + " · " + sinceStart(now)));
      node.append(meta, el("div", "parley-bubble"));
      transcript.append(node);
    }
    return node;
  }

  function tag(node, className, text) {
    const meta = node.querySelector(".parley-meta");
    let found = meta.querySelector(".parley-tag." + className.split(" ")[0]);
    if (!found) {
      found = el("span", "parley-tag " + className);
      meta.append(found);
    }
    found.textContent = text;
  }

  function drawLine(line) {
    if (line.kind === "note") {
      transcript.append(el("div", "parley-note " + line.name.replace(".", "-"), "— " + line.text + " · " + line.offset + " —"));
      return;
    }
    const node = turn(line.messageId, line.speaker);
    node.querySelector(".clock").textContent = clock(line.at) + " · " + (line.offset || sinceStart(line.at));
    const bubble = node.querySelector(".parley-bubble");
    if (line.interrupted) {
      node.classList.add("interrupted");
      bubble.textContent = line.spokenText || "(nothing was heard)";
      tag(node, "cut", "✂ interrupted");
    } else {
      bubble.textContent = line.text;
    }
    if (line.speaker === "visitor" && line.channel) tag(node, "channel", line.channel === "typed" ? "⌨ typed" : "∿ " + line.channel);
  }

  // The visitor's words as they are heard (user.speaking): one caption bubble, replaced by the line.
  function caption(text) {
    let node = transcript.querySelector(".parley-turn.caption");
    if (!node) {
      node = turn(null, "visitor");
      node.classList.add("caption");
      tag(node, "caption", "captioning…");
    }
    node.querySelector(".parley-bubble").textContent = text;
  }

  function dropCaption() {
    const node = transcript.querySelector(".parley-turn.caption");
    if (node) node.remove();
  }

  function personaSpeaking(messageId, text) {
    const node = turn(messageId, "persona");
    const bubble = node.querySelector(".parley-bubble");
    if (!bubble.querySelector(".spoken")) {
      bubble.replaceChildren(el("span", "spoken", ""), el("span", "parley-unspoken", text));
    }
    node.dataset.meant = text;
  }

  // bot.word: the words played so far stand out from what is still to come.
  function personaWord(messageId, word) {
    const node = turn(messageId, "persona");
    if (node.dataset.joinedLate) return;
    const bubble = node.querySelector(".parley-bubble");
    let spoken = bubble.querySelector(".spoken");
    if (!spoken) {
      bubble.replaceChildren(el("span", "spoken", ""), el("span", "parley-unspoken", ""));
      spoken = bubble.querySelector(".spoken");
    }
    spoken.textContent = (spoken.textContent ? spoken.textContent + " " : "") + word;
    const meant = node.dataset.meant || "";
    const said = spoken.textContent.split(/\s+/).length;
    bubble.querySelector(".parley-unspoken").textContent = meant ? " " + meant.split(/\s+/).slice(said).join(" ") : "";
  }

  function personaFinished(messageId) {
    const node = turn(messageId, "persona");
    const bubble = node.querySelector(".parley-bubble");
    if (node.dataset.meant) bubble.textContent = node.dataset.meant;
  }

  function onEvent(name, data) {
    if (data.callId !== watching) return;
    switch (name) {
      case "speech.started":
      case "speech.ended":
        heardSpeechAt = Date.now();
        break;
      case "user.speaking":
        // An interim decode may come after the final line it led to: not a new caption.
        if (lastFinal && Date.now() - lastFinal.at < LATE_CAPTION_MS && lastFinal.text.includes(data.text.trim().toLowerCase())) break;
        caption(data.text);
        transcript.dataset.captions = String(Number(transcript.dataset.captions || 0) + 1);
        break;
      case "user.message": {
        // The event says how the line came; events stored before it did are guessed as the call
        // page guesses them: spoken when the voice detector heard the visitor shortly before.
        const spoken = data.channel
          ? data.channel === "spoken"
          : heardSpeechAt !== null && Date.now() - heardSpeechAt <= SPOKEN_WINDOW_MS;
        heardSpeechAt = null;
        lastFinal = { at: Date.now(), text: String(data.text).toLowerCase() };
        dropCaption();
        drawLine({
          kind: "turn",
          speaker: "visitor",
          messageId: data.messageId,
          text: data.text,
          at: new Date().toISOString(),
          channel: spoken ? "spoken" : "typed",
        });
        break;
      }
      case "bot.speaking":
        personaSpeaking(data.messageId, data.text);
        turn(data.messageId, "persona").dataset.state = "speaking";
        break;
      case "bot.word":
        personaWord(data.messageId, data.word);
        break;
      case "bot.finished":
        personaFinished(data.messageId);
        turn(data.messageId, "persona").dataset.state = "spoken";
        break;
      case "bot.interrupted": {
        const node = turn(data.messageId, "persona");
        node.classList.add("interrupted");
        node.dataset.state = "cut";
        tag(node, "cut", "✂ interrupted" + (data.playedMs != null ? " after " + data.playedMs + " ms" : ""));
        break;
      }
      case "message.confirmed":
        if (data.text) {
          const node = turn(data.messageId, "persona");
          const bubble = node.querySelector(".parley-bubble");
          if (!bubble.textContent) bubble.textContent = data.text;
          node.dataset.meant = node.dataset.meant || data.text;
        }
        break;
      case "llm.tool_call":
        for (const call of data.toolCalls || []) {
          transcript.append(el("div", "parley-note", "⚙ tool call: " + call.name + " " + call.arguments));
        }
        break;
      case "session.idle_warning":
        transcript.append(el("div", "parley-note", "— idle warning: " + data.remainingSeconds + " s left —"));
        break;
      case "call.ended":
        dropCaption();
        transcript.append(el("div", "parley-note call-ended", "— Call ended: " + data.reason + " —"));
        break;
    }
    scrollDown();
  }

  function onWatching(call) {
    if (call.callId !== watching) return;
    title.textContent = (call.persona || call.agent) + " · " + call.transport + " · " + call.callId;
    title.dataset.persona = call.persona || call.agent;
    watchedStart = call.startedAt ? new Date(call.startedAt) : null;
    delete transcript.dataset.captions;
    callState.textContent = call.ended ? "This call has ended." : "Live since " + clock(call.startedAt) + ".";
    transcript.replaceChildren();
    for (const line of call.lines) drawLine(line);
    if (call.speaking) {
      // Joined mid-sentence: the words played before are unknown, so the line is drawn whole
      // (not word by word) until it ends.
      personaSpeaking(call.speaking.messageId, call.speaking.text);
      const node = turn(call.speaking.messageId, "persona");
      node.dataset.joinedLate = "1";
      node.querySelector(".parley-bubble").textContent = call.speaking.text;
    }
    if (!call.lines.length && !call.speaking) transcript.append(el("p", "parley-note", "Nothing said yet."));
    setActions(!call.ended);
    scrollDown();
  }

  // --- Actions ----------------------------------------------------------------------------

  if (sayForm) {
    sayForm.addEventListener("submit", (event) => {
      event.preventDefault();
      if (!watching) return;
      say("Sending…");
      send({ type: "say", callId: watching, text: sayText.value });
    });
    endButton.addEventListener("click", () => {
      if (!watching || !window.confirm("End this call now? The visitor is hung up on.")) return;
      say("Ending the call…");
      send({ type: "end", callId: watching });
    });
  }

  function onDone(message) {
    if (message.action === "say") {
      sayText.value = "";
      say("The persona says your line now.", "ok");
      const node = turn(message.messageId, "persona");
      node.classList.add("human");
      tag(node, "staff", "typed by staff");
      const bubble = node.querySelector(".parley-bubble");
      if (!bubble.textContent) bubble.textContent = message.text;
      node.dataset.meant = node.dataset.meant || message.text;
      scrollDown();
    } else {
      say("The call is ending.", "ok");
    }
  }

  // --- The socket -------------------------------------------------------------------------

  function send(message) {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(message));
    else say("Not connected; trying again…", "error");
  }

  function connect() {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + window.location.host + root.dataset.socketPath);
    socket.addEventListener("message", (event) => {
      const message = JSON.parse(event.data);
      switch (message.type) {
        case "hello":
          for (const { row } of calls.values()) row.remove();
          calls.clear();
          for (const call of message.calls.slice().reverse()) addCall(call);
          showEmpty();
          state.replaceChildren(el("span", "parley-dot"), document.createTextNode("Live: calls appear as they start and leave as they end."));
          state.className = "parley-live-state";
          if (watching) send({ type: "watch", callId: watching });
          break;
        case "call.started":
          addCall(message.call);
          break;
        case "call.ended":
          removeCall(message.callId, message.reason);
          break;
        case "watching":
          onWatching(message.call);
          break;
        case "event":
          onEvent(message.event, message.data);
          break;
        case "done":
          onDone(message);
          break;
        case "error":
          if (message.status) {
            state.textContent = message.detail;
            state.className = "parley-live-state down";
          } else {
            say(message.detail, "error");
          }
          break;
      }
    });
    socket.addEventListener("close", (event) => {
      if (REFUSED_CODES.includes(event.code)) return;
      state.textContent = "Disconnected; reconnecting…";
      state.className = "parley-live-state down";
      window.setTimeout(connect, RECONNECT_DELAY_MS);
    });
  }

  connect();
})();
