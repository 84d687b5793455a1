// The call page's recording player (calls.review): a transcript line plays the recording from
// where it was said, and the line being heard is highlighted as the recording plays.
(function () {
  "use strict";
  // Start this much before a line (seconds): its first syllable is not cut.
  const LEAD_SECONDS = 0.25;
  const player = document.getElementById("recording-player");
  if (!player) return;
  const audio = player.querySelector("audio");
  // Where the call's start (each line's "time since the call started") falls in the recording.
  const shift = parseFloat(player.dataset.offset) || 0;
  const turns = Array.from(document.querySelectorAll(".parley-turn[data-offset]"))
    .map((element) => ({ element, at: parseFloat(element.dataset.offset) + shift }))
    .filter((turn) => Number.isFinite(turn.at))
    .sort((a, b) => a.at - b.at);
  let playing = null;

  function playFrom(turn) {
    audio.currentTime = Math.max(0, turn.at - LEAD_SECONDS);
    const started = audio.play();
    if (started && started.catch) started.catch(() => {}); // autoplay refused: the seek stays
    highlight();
  }

  function highlight() {
    const now = audio.currentTime + LEAD_SECONDS;
    let current = null;
    for (const turn of turns) {
      if (turn.at <= now) current = turn;
      else break;
    }
    if (current === playing) return;
    if (playing) playing.element.classList.remove("parley-playing");
    playing = current;
    if (playing) playing.element.classList.add("parley-playing");
  }

  for (const turn of turns) {
    turn.element.classList.add("parley-seekable");
    turn.element.tabIndex = 0;
    turn.element.title = "Play the recording from here";
    turn.element.addEventListener("click", () => {
      if (!window.getSelection().toString()) playFrom(turn); // selecting text does not seek
    });
    turn.element.addEventListener("keydown", (event) => {
      if (event.key === "Enter" || event.key === " ") {
        event.preventDefault();
        playFrom(turn);
      }
    });
  }
  audio.addEventListener("timeupdate", highlight);
  audio.addEventListener("seeked", highlight);
})();
