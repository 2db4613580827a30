// HandoffRail HITL inbox: follow the tenant's event stream and drop rows that stop waiting.
// Plain script, no build step; loaded from this origin only (the page's CSP allows nothing else).
(function () {
  "use strict";

  function start() {
    var rows = document.getElementById("inbox");
    var live = document.getElementById("live-status");
    if (!rows || !live || !window.EventSource) {
      return;
    }
    var count = document.getElementById("count");
    var empty = document.getElementById("empty");
    var notice = document.getElementById("new-notice");

    function setState(state, text) {
      live.setAttribute("data-state", state);
      live.textContent = "Live updates: " + text;
    }

    function rowFor(packetId) {
      var all = rows.querySelectorAll("tr[data-packet-id]");
      for (var i = 0; i < all.length; i += 1) {
        if (all[i].getAttribute("data-packet-id") === packetId) {
          return all[i];
        }
      }
      return null;
    }

    function refreshCount() {
      var left = rows.querySelectorAll("tr[data-packet-id]").length;
      if (count) {
        count.textContent = String(Math.max(0, Number(count.textContent) - 1));
      }
      if (empty && left === 0) {
        empty.hidden = false;
      }
    }

    var base = document.body.getAttribute("data-base") || "/dashboard";
    var source = new EventSource(base + "/events");
    source.onopen = function () {
      setState("open", "on");
    };
    source.onerror = function () {
      setState(source.readyState === EventSource.CLOSED ? "closed" : "connecting",
        source.readyState === EventSource.CLOSED ? "off (reload the page)" : "reconnecting…");
    };
    source.onmessage = function (event) {
      var message;
      try {
        message = JSON.parse(event.data);
      } catch (_error) {
        return;
      }
      if (!message || typeof message.packet_id !== "string" || !message.data) {
        return;
      }
      var row = rowFor(message.packet_id);
      if (message.data.status !== "awaiting_human") {
        if (row) {
          row.parentNode.removeChild(row);
          refreshCount();
        }
      } else if (!row && notice) {
        notice.hidden = false;
      }
    };
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
