// callvault console: the one script. Every page works without it; it adds seeking the
// player from a transcript line. No inline script anywhere (the CSP forbids it).
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const player = document.getElementById("player");
  if (!player) return;
  for (const button of document.querySelectorAll("button.seek")) {
    button.addEventListener("click", () => {
      const start = Number(button.dataset.start);
      if (!Number.isFinite(start)) return;
      player.currentTime = start;
      for (const line of document.querySelectorAll(".transcript li.current")) {
        line.classList.remove("current");
      }
      button.closest("li").classList.add("current");
      player.play().catch(() => {});  // autoplay rules may refuse; the seek stands
    });
  }
});
