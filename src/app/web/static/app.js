// The project's own script. htmx and its SSE extension do the live work; nothing inline.
document.addEventListener("htmx:sseError", () => {
  document.documentElement.dataset.live = "reconnecting";
});
document.addEventListener("htmx:sseOpen", () => {
  document.documentElement.dataset.live = "open";
});
