// The project's own script (no inline script anywhere: the CSP forbids it).
//
// Live updates: <body sse-connect="/api/v1/events"> (htmx's SSE extension) holds the event
// stream of a signed-in user. This script listens to its events and applies them by id:
//   task.updated          -> the task's row or panel: status, progress bar, message; when the
//                            status changes, the server's fragment is fetched again (its buttons
//                            change; not for a row whose task just started: same buttons); a task
//                            that ends shows a toast.
//   notification.created  -> the bell's count is fetched again; the notifications page reloads its list.
//   notification.updated  -> the bell shows the unread count the event carries.
//   task.log              -> the task page's output panel appends the lines it has not shown yet (by seq).
// Nothing is lost across a dropped connection: each stream starts after the last event id this
// page saw (the browser sends Last-Event-ID itself when it reconnects; a new stream gets
// ?last_event_id=), and after a reconnect the visible fragments are fetched again.
(function () {
  "use strict";

  const FINAL = ["succeeded", "failed", "cancelled"];
  const TOAST_MS = 6000;
  const toasted = new Set();
  const latest = new Map(); // task id -> {eventId, task}: the newest state this page has seen
  const wired = new WeakSet();
  let lastEventId = 0;
  let opened = false;

  function readLastEventId() {
    const value = parseInt(document.body.dataset.lastEventId || "0", 10);
    if (!Number.isNaN(value) && value > lastEventId) lastEventId = value;
  }

  // --- toasts -----------------------------------------------------------------------------

  function dismiss(toast) {
    if (!toast.isConnected || toast.classList.contains("leaving")) return;
    toast.classList.add("leaving");
    window.setTimeout(() => toast.remove(), 400);
  }

  function scheduleFade(toast) {
    window.setTimeout(() => dismiss(toast), TOAST_MS);
  }

  function toast(text, kind) {
    const box = document.getElementById("toasts");
    if (!box) return;
    const item = document.createElement("div");
    item.className = "toast" + (kind ? " toast-" + kind : "");
    const message = document.createElement("p");
    message.textContent = text;
    const close = document.createElement("button");
    close.type = "button";
    close.className = "toast-close";
    close.setAttribute("aria-label", "Dismiss");
    close.textContent = "×";
    item.append(message, close);
    box.append(item);
    scheduleFade(item);
  }

  document.addEventListener("click", (event) => {
    const close = event.target instanceof Element ? event.target.closest(".toast-close") : null;
    if (close) dismiss(close.closest(".toast"));
  });

  // --- the bell -----------------------------------------------------------------------------

  function setUnread(count) {
    const bell = document.getElementById("bell");
    const number = document.getElementById("unread-count");
    if (!bell || !number) return;
    number.textContent = String(count);
    bell.setAttribute("aria-label", "Notifications, " + count + " unread");
    bell.classList.toggle("has-unread", count > 0);
  }

  // htmx.ajax without a `source` issues every request from <body>, and of the requests waiting
  // behind one in flight htmx keeps only the last: a bell refresh would drop a task row's refetch
  // (and the other way round). So each request has its own source, and the bell asks again when a
  // refresh was wanted while its request was under way.
  let bellTimer = 0;
  let bellBusy = false;
  let bellAgain = false;
  function refreshBell() {
    window.clearTimeout(bellTimer);
    bellTimer = window.setTimeout(fetchBell, 150);
  }

  function fetchBell() {
    const bell = document.getElementById("bell");
    if (!bell) return;
    if (bellBusy) {
      bellAgain = true;
      return;
    }
    bellBusy = true;
    htmx.ajax("GET", "/notifications/bell", { source: bell, target: bell, swap: "outerHTML" }).finally(() => {
      bellBusy = false;
      if (bellAgain) {
        bellAgain = false;
        fetchBell();
      }
    });
  }

  // --- tasks --------------------------------------------------------------------------------

  function applyTask(element, task) {
    const percent = Math.max(0, Math.min(100, Math.floor(task.progress.percent)));
    const bar = element.querySelector('[role="progressbar"]');
    if (bar) {
      bar.setAttribute("aria-valuenow", String(percent));
      const meter = bar.querySelector("progress");
      if (meter) meter.value = percent;
      const text = bar.querySelector(".progress-text");
      if (text) text.textContent = percent + "%";
    }
    const status = element.querySelector(".status");
    if (status) {
      status.textContent = task.status;
      status.className = "status status-" + task.status;
    }
    const message = element.querySelector(".task-message");
    if (message) message.textContent = task.error || (task.progress && task.progress.message) || "";
  }

  // The buttons a task's status gives (tasks_macros.html `actions`): queued and running have the same.
  function sameButtons(before, after) {
    const active = ["queued", "running"];
    return before === after || (active.includes(before) && active.includes(after));
  }

  function refetch(element, taskId) {
    if (element.id === "task-panel") {
      // Its own source (see the bell): a refetch asked for while one is under way is dropped with the
      // element that one replaces, and `catchUp` brings the new element up to date.
      htmx.ajax("GET", "/tasks/" + taskId + "/panel", { source: element, target: element, swap: "outerHTML" });
      return;
    }
    // A row: only its buttons are fetched again. Its link and text stay the same elements (applyTask
    // keeps them current), so a click on them is never lost to a swap; `catchUpButtons` fetches the
    // buttons again if the task moved on while they were on their way.
    const buttons = element.querySelector(".task-actions");
    if (!buttons) return;
    htmx.ajax("GET", "/tasks/" + taskId + "/row", {
      source: buttons,
      target: buttons,
      swap: "outerHTML",
      select: ".task-actions",
    });
  }

  // A task's row or panel shows `task`, as of event `eventId`.
  function updateTask(element, task, eventId) {
    const before = element.dataset.status;
    applyTask(element, task);
    if (element.id === "task-panel") {
      if (before !== task.status) refetch(element, task.id);
      return;
    }
    element.dataset.status = task.status;
    element.dataset.eventId = String(eventId);
    const starts = element.querySelector(".task-starts");
    if (starts && task.status !== "queued") starts.remove();
    if (!sameButtons(before, task.status)) refetch(element, task.id);
  }

  let listTimer = 0;
  function refreshTaskList() {
    window.clearTimeout(listTimer);
    listTimer = window.setTimeout(() => htmx.trigger(document.body, "tasks-changed"), 200);
  }

  function onTask(event) {
    const task = JSON.parse(event.data);
    const eventId = parseInt(event.lastEventId || "0", 10);
    latest.set(task.id, { eventId, task });
    const elements = document.querySelectorAll('[data-task-id="' + task.id + '"]');
    elements.forEach((element) => updateTask(element, task, eventId));
    if (!elements.length && document.getElementById("task-list")) refreshTaskList();
    if (FINAL.includes(task.status)) {
      const key = task.id + ":" + task.attempts + ":" + task.status;
      if (!toasted.has(key)) {
        toasted.add(key);
        const words = { succeeded: "succeeded", failed: "failed", cancelled: "was cancelled" };
        toast(task.title + " " + words[task.status], task.status);
      }
    }
  }

  // A fragment rendered before the newest event this page saw is brought up to date at once.
  function catchUp(element) {
    const known = latest.get(element.dataset.taskId);
    const rendered = parseInt(element.dataset.eventId || "0", 10);
    if (known && known.eventId > rendered) updateTask(element, known.task, known.eventId);
  }

  // A list refresh merged into the page (idiomorph) leaves a row alone when the row already shows a
  // newer event than the one the refresh was rendered at: its bar never steps back (then forward
  // again with `catchUp`), and the events still to come bring it on.
  if (window.Idiomorph) {
    window.Idiomorph.defaults.callbacks.beforeNodeMorphed = (shown, rendered) => {
      if (!(shown instanceof Element) || !(rendered instanceof Element) || !shown.dataset.taskId) return true;
      return parseInt(shown.dataset.eventId || "0", 10) <= parseInt(rendered.dataset.eventId || "0", 10);
    };
  }

  // Buttons rendered before the newest event their row saw, for another status, are fetched again.
  function catchUpButtons(buttons) {
    const row = buttons.closest(".task-row");
    if (!row || !row.dataset.taskId) return;
    const rendered = parseInt(buttons.dataset.eventId || "0", 10);
    const seen = parseInt(row.dataset.eventId || "0", 10);
    if (seen > rendered && !sameButtons(buttons.dataset.status, row.dataset.status)) refetch(row, row.dataset.taskId);
  }

  // --- task output ----------------------------------------------------------------------------

  function logLine(line) {
    const item = document.createElement("li");
    item.className = "log-line log-" + line.level;
    item.dataset.seq = String(line.seq);
    const time = document.createElement("time");
    time.dateTime = line.created_at;
    time.textContent = String(line.created_at).slice(11, 19);
    const level = document.createElement("span");
    level.className = "log-level";
    level.textContent = line.level;
    const message = document.createElement("span");
    message.className = "log-message";
    message.textContent = line.message;
    item.append(time, " ", level, " ", message);
    return item;
  }

  // Lines the page rendered (or was sent before) are skipped by seq: a replay after a reconnect adds nothing twice.
  function onTaskLog(event) {
    const data = JSON.parse(event.data);
    document.querySelectorAll('[data-log-task="' + data.task_id + '"]').forEach((log) => {
      const list = log.querySelector(".log-lines");
      if (!list) return;
      let last = parseInt(log.dataset.lastSeq || "0", 10);
      const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 8;
      data.lines.forEach((line) => {
        if (line.seq <= last) return;
        list.append(logLine(line));
        last = line.seq;
      });
      log.dataset.lastSeq = String(last);
      const keep = parseInt(log.dataset.keep || "200", 10);
      while (list.children.length > keep) list.firstElementChild.remove();
      const empty = log.querySelector(".log-empty");
      if (empty && list.children.length) empty.hidden = true;
      if (atBottom) log.scrollTop = log.scrollHeight;
    });
  }

  // --- notifications ------------------------------------------------------------------------

  function onNotificationCreated(event) {
    const notification = JSON.parse(event.data);
    refreshBell();
    htmx.trigger(document.body, "notifications-changed");
    if (notification.category === "system") toast(notification.title + ": " + notification.message, "");
  }

  function onNotificationUpdated(event) {
    const data = JSON.parse(event.data);
    if (typeof data.unread === "number") setUnread(data.unread);
  }

  // --- the stream -----------------------------------------------------------------------------

  function remember(handler) {
    return (event) => {
      const id = parseInt(event.lastEventId || "0", 10);
      if (!Number.isNaN(id) && id > lastEventId) lastEventId = id;
      handler(event);
    };
  }

  function wire(source) {
    if (wired.has(source)) return;
    wired.add(source);
    source.addEventListener("task.updated", remember(onTask));
    source.addEventListener("task.log", remember(onTaskLog));
    source.addEventListener("notification.created", remember(onNotificationCreated));
    source.addEventListener("notification.updated", remember(onNotificationUpdated));
  }

  function refreshVisible() {
    document.querySelectorAll(".live-fragment").forEach((element) => htmx.trigger(element, "app:refresh"));
    refreshBell();
  }

  document.addEventListener("htmx:sseOpen", (event) => {
    document.documentElement.dataset.live = "open";
    wire(event.detail.source);
    if (opened) refreshVisible(); // back after a drop: fetch what is on screen again
    opened = true;
  });

  // --- htmx set-up ----------------------------------------------------------------------------

  // Deferred scripts run in order once the document is parsed, before htmx processes it: the
  // stream htmx opens for <body> already uses this.
  readLastEventId();
  // A task's output opens at its newest line.
  document.querySelectorAll("[data-log-task]").forEach((log) => {
    log.scrollTop = log.scrollHeight;
  });
  if (window.htmx) {
    // Every stream (the first, and a new one after the browser gave up on the old) starts after the
    // last event this page has seen: the page was rendered as of data-last-event-id.
    htmx.createEventSource = (url) => {
      const separator = url.includes("?") ? "&" : "?";
      const full = lastEventId ? url + separator + "last_event_id=" + lastEventId : url;
      const source = new EventSource(full, { withCredentials: true });
      // While the browser reconnects by itself (readyState CONNECTING, sending Last-Event-ID), the
      // extension need not hear of the error (htmx would log it to the console); once the stream is
      // closed for good, the extension opens a new one, with backoff.
      let extensionHandler = null;
      Object.defineProperty(source, "onerror", {
        get: () => extensionHandler,
        set: (handler) => {
          extensionHandler = handler;
        },
      });
      // htmx logs what the extension is handed to the console: a sentence rather than "[object Event]".
      source.addEventListener("error", () => {
        document.documentElement.dataset.live = "reconnecting";
        if (source.readyState === EventSource.CLOSED && extensionHandler) {
          extensionHandler("Live updates: the server refused the event stream; opening a new one shortly.");
        }
      });
      return source;
    };
  }

  // A time zone field nobody has filled in yet starts at the browser's own zone (without a script: UTC).
  function localTimezone(root) {
    let name = "";
    try {
      name = Intl.DateTimeFormat().resolvedOptions().timeZone || "";
    } catch (error) {
      name = "";
    }
    if (!name) return;
    root.querySelectorAll("input[data-local-timezone]").forEach((input) => {
      input.value = name;
      input.removeAttribute("data-local-timezone");
    });
  }
  localTimezone(document);

  document.addEventListener("htmx:load", (event) => {
    const element = event.detail.elt;
    if (!(element instanceof Element)) return;
    localTimezone(element);
    if (element.classList.contains("toast")) scheduleFade(element);
    if (element.dataset.taskId) catchUp(element);
    element.querySelectorAll("[data-task-id]").forEach(catchUp);
    if (element.classList.contains("task-actions")) catchUpButtons(element);
  });

  // After a form comes back with errors, put the keyboard on its first field to fix (the swap
  // replaced the button that had the focus).
  document.addEventListener("htmx:afterSettle", (event) => {
    const config = event.detail.requestConfig;
    const form = config ? config.elt : null;
    if (!(form instanceof HTMLFormElement)) return;
    const action = form.getAttribute("action");
    const invalid = document.querySelector('form[action="' + action + '"] [aria-invalid="true"]');
    if (invalid instanceof HTMLElement) invalid.focus();
  });
})();
