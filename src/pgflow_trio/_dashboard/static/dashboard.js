// Live updates for the dashboard. No inline scripts anywhere: the Content-Security-Policy forbids them.
//
// <main data-topics="runs run:<id> flow:<slug>" data-refresh="<s>" data-fallback-refresh="<s>">: an EventSource
// on <root>/events?topics=... gets a `change` when something the page shows changed; the page then fetches itself
// with fragment=1 and swaps <main>'s contents, keeping open <details> open (by id), the scroll position and the
// values of form fields (by name). `data-refresh` refreshes on a timer as well. Only when the stream fails or says
// `off` does the page refresh every `data-fallback-refresh` seconds; a page without topics and without
// `data-refresh` (a confirmation page, say) never refreshes. While the user is in a form field inside <main>, or a
// form there has unsaved changes, nothing is swapped: the refresh waits until the field loses focus or the form is
// submitted. A fragment that does not come back as HTML from the page itself (an auth redirect) is never swapped;
// a fetch is given up after FETCH_TIMEOUT_MS. #live-status[data-state] says on or off.
(function () {
  "use strict";
  var FETCH_TIMEOUT_MS = 10000;
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
  var deferred = false;
  var fallbackTimer = null;

  function setStatus(on) {
    if (status) { status.setAttribute("data-state", on ? "on" : "off"); }
  }

  function setLive(on) {
    live = on;
    setStatus(on);
    if (on && fallbackTimer !== null) { clearInterval(fallbackTimer); fallbackTimer = null; }
    if (!on && fallbackTimer === null) { fallbackTimer = setInterval(refresh, fallbackEvery * 1000); }
  }

  function fragmentUrl() {
    var url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    url.searchParams.delete("notice");
    url.searchParams.delete("notice_sig");
    return url.toString();
  }

  function openDetails() {
    var ids = [];
    main.querySelectorAll("details[open][id]").forEach(function (d) { ids.push(d.id); });
    return ids;
  }

  function isField(element) {
    return !!element && /^(INPUT|SELECT|TEXTAREA)$/.test(element.tagName);
  }

  function changed(field) {
    if (field.tagName === "SELECT") {
      return Array.prototype.some.call(field.options, function (o) { return o.selected !== o.defaultSelected; });
    }
    if (field.type === "checkbox" || field.type === "radio") { return field.checked !== field.defaultChecked; }
    if (field.type === "hidden") { return false; }
    return field.value !== field.defaultValue;
  }

  // The user is busy with a form in <main>: typing in a field there, or has changed one without submitting.
  function userIsEditing() {
    if (main.contains(document.activeElement) && isField(document.activeElement)) { return true; }
    return Array.prototype.some.call(main.querySelectorAll("form"), function (form) {
      return Array.prototype.some.call(form.elements, function (field) { return isField(field) && changed(field); });
    });
  }

  function fieldKey(field) {
    var form = field.form;
    return (form ? (form.getAttribute("action") || "") : "") + " " + field.name;
  }

  function fieldValues() {
    var values = {};
    main.querySelectorAll("input[name], select[name], textarea[name]").forEach(function (field) {
      if (field.type === "hidden" || field.type === "checkbox" || field.type === "radio") { return; }
      if (changed(field)) { values[fieldKey(field)] = field.value; }
    });
    return values;
  }

  function restoreValues(values) {
    main.querySelectorAll("input[name], select[name], textarea[name]").forEach(function (field) {
      var key = fieldKey(field);
      if (Object.prototype.hasOwnProperty.call(values, key)) { field.value = values[key]; }
    });
  }

  function swap(html) {
    var keep = openDetails();
    var values = fieldValues();
    var x = window.scrollX, y = window.scrollY;
    main.innerHTML = html;
    keep.forEach(function (id) {
      var d = document.getElementById(id);
      if (d && d.tagName === "DETAILS") { d.open = true; }
    });
    restoreValues(values);
    window.scrollTo(x, y);
  }

  function isOwnHtml(response) {
    var type = response.headers.get("content-type") || "";
    return response.ok && !response.redirected && type.indexOf("text/html") === 0;
  }

  function refresh() {
    if (busy) { again = true; return; }
    if (userIsEditing()) { deferred = true; return; }
    busy = true;
    var controller = window.AbortController ? new AbortController() : null;
    var timer = controller ? setTimeout(function () { controller.abort(); }, FETCH_TIMEOUT_MS) : null;
    fetch(fragmentUrl(), {
      credentials: "same-origin",
      headers: { "Accept": "text/html" },
      redirect: "follow",
      signal: controller ? controller.signal : undefined
    })
      .then(function (response) { return isOwnHtml(response) ? response.text() : null; })
      .then(function (html) {
        if (html === null) { return; }
        if (userIsEditing()) { deferred = true; return; }  // the user started typing meanwhile
        swap(html);
      })
      .catch(function () { /* the next change or timer tries again */ })
      .then(function () {
        if (timer !== null) { clearTimeout(timer); }
        busy = false;
        if (again) { again = false; refresh(); }
      });
  }

  // A refresh put off while the user was editing runs once they leave the field or submit.
  function retryDeferred() {
    if (!deferred) { return; }
    setTimeout(function () {
      if (deferred && !userIsEditing()) { deferred = false; refresh(); }
    }, 0);
  }
  main.addEventListener("focusout", retryDeferred);
  main.addEventListener("submit", function () { deferred = false; });
  main.addEventListener("reset", retryDeferred);

  setStatus(false);
  if (refreshEvery > 0) { setInterval(refresh, refreshEvery * 1000); }
  if (!topics) { return; }
  if (!window.EventSource) { setLive(false); return; }

  var source = new EventSource(root + "/events?topics=" + encodeURIComponent(topics));
  var greeted = false;
  source.addEventListener("hello", function () {
    if (greeted) { refresh(); }  // reconnected: changes may have been missed meanwhile
    greeted = true;
    setLive(true);
  });
  source.addEventListener("change", refresh);
  source.addEventListener("off", function () { setLive(false); });
  source.onerror = function () { if (live || fallbackTimer === null) { setLive(false); } };
})();
