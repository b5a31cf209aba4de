// Live updates for the dashboard. No inline scripts anywhere: the Content-Security-Policy forbids them.
//
// <main data-topics="runs run:<id> flow:<slug>" data-refresh="<s>" data-fallback-refresh="<s>">: an EventSource
// on <root>/events?topics=... gets a `change` when something the page shows changed; the page then fetches itself
// with fragment=1 and swaps <main>'s contents, keeping open <details> open (by id) and the scroll position.
// `data-refresh` refreshes on a timer as well; while the stream is down or events are off, the page refreshes every
// `data-fallback-refresh` seconds. #live-status[data-state] says on or off.
(function () {
  "use strict";
  var main = document.getElementById("main");
  var status = document.getElementById("live-status");
  if (!main) { return; }
  var root = (document.querySelector("a.brand") || { getAttribute: function () { return "/"; } })
    .getAttribute("href").replace(/\/$/, "");
  var topics = (main.getAttribute("data-topics") || "").trim();
  var refreshEvery = parseFloat(main.getAttribute("data-refresh") || "") || 0;
  var fallbackEvery = parseFloat(main.getAttribute("data-fallback-refresh") || "") || 5;
  var live = false;
  var busy = false;
  var again = false;
  var fallbackTimer = null;

  function setLive(on) {
    live = on;
    if (status) { status.setAttribute("data-state", on ? "on" : "off"); }
    if (on && fallbackTimer !== null) { clearInterval(fallbackTimer); fallbackTimer = null; }
    if (!on && fallbackTimer === null) { fallbackTimer = setInterval(refresh, fallbackEvery * 1000); }
  }

  function fragmentUrl() {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    url.searchParams.delete("notice");
    return url.toString();
  }

  function openDetails() {
    var ids = [];
    main.querySelectorAll("details[open][id]").forEach(function (d) { ids.push(d.id); });
    return ids;
  }

  function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(fragmentUrl(), { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        var keep = openDetails();
        var x = window.scrollX, y = window.scrollY;
        main.innerHTML = html;
        keep.forEach(function (id) {
          var d = document.getElementById(id);
          if (d && d.tagName === "DETAILS") { d.open = true; }
        });
        window.scrollTo(x, y);
      })
      .catch(function () { /* the next change or timer tries again */ })
      .then(function () {
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  setLive(false);
  if (refreshEvery > 0) { setInterval(refresh, refreshEvery * 1000); }
  if (!topics || !window.EventSource) { return; }

  var source = new EventSource(root + "/events?topics=" + encodeURIComponent(topics));
  var greeted = false;
  source.addEventListener("hello", function () {
    if (greeted) { refresh(); }  // reconnected: changes may have been missed meanwhile
    greeted = true;
    setLive(true);
  });
  source.addEventListener("change", refresh);
  source.addEventListener("off", function () { setLive(false); });
  source.onerror = function () { if (live) { setLive(false); } };
})();
