// shiftd dashboard: no inline script (the CSP forbids it); data comes in data- attributes.
"use strict";
(function () {
  function $(id) { return document.getElementById(id); }

  // Replaces el's content with url's every 2 s: the jobs list's first page (its rows) and
  // the overview's live part. A failed fetch (a restart) leaves the last one shown.
  function poll(el, url, then) {
    if (!url) return;
    setInterval(function () {
      fetch(url, { credentials: "same-origin", cache: "no-store" }).then(function (r) {
        if (r.ok && !r.redirected) return r.text();
      }).then(function (html) {
        if (typeof html === "string") { el.innerHTML = html; if (then) then(); }
      }).catch(function () {});
    }, 2000);
  }

  function setText(id, text) { var e = $(id); if (e) e.textContent = text; }

  // Job page: the log streams over Server-Sent Events. EventSource reconnects by itself
  // (to the next process after a restart) and resends the last line's id.
  function followLog(log) {
    var status = $("stream-status");
    if (log.getAttribute("data-final") === "true" || !window.EventSource) return;
    var es = new EventSource(log.getAttribute("data-events"));
    var last = 0;
    var spans = log.querySelectorAll("span.line");
    if (spans.length) last = +spans[spans.length - 1].getAttribute("data-seq");
    es.onopen = function () { status.textContent = "live"; };
    es.onerror = function () {
      if (es.readyState !== 2) status.textContent = "reconnecting";
      else status.textContent = "ended";
    };
    es.addEventListener("line", function (e) {
      var l = JSON.parse(e.data);
      if (l.seq <= last) return;
      last = l.seq;
      var atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      var s = document.createElement("span");
      s.className = "line";
      s.setAttribute("data-seq", l.seq);
      s.setAttribute("data-stream", l.stream);
      s.textContent = l.text + "\n";
      log.appendChild(s);
      if (atEnd) log.scrollTop = log.scrollHeight;
    });
    es.addEventListener("state", function (e) {
      var j = JSON.parse(e.data);
      var st = $("job-state");
      if (st) { st.textContent = j.state; st.className = "state " + j.state; }
      setText("job-attempts", j.attempts + " / " + j.max_attempts);
      setText("job-exit", j.exit);
      setText("job-started", j.started_at || "");
      setText("job-finished", j.finished_at || "");
      var final = ["succeeded", "failed", "cancelled"].indexOf(j.state) >= 0;
      var cancel = $("cancel");
      if (final && cancel) cancel.remove();
    });
    es.addEventListener("end", function () {
      es.close();
      status.textContent = "ended";
    });
  }

  // Stop bars: their width comes from data-width (no inline style under the CSP).
  function sizeBars() {
    var bars = document.querySelectorAll(".bar[data-width]");
    for (var i = 0; i < bars.length; i++) {
      bars[i].style.width = bars[i].getAttribute("data-width") + "%";
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    var rows = $("job-rows");
    if (rows) poll(rows, rows.getAttribute("data-rows-url"));
    var log = $("log");
    if (log) followLog(log);
    var live = $("overview-live");
    if (live) poll(live, live.getAttribute("data-refresh"), sizeBars);
    sizeBars();
  });
})();
