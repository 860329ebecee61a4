// The dashboard's only script, served from our origin so the CSP needs no inline script.
// A form (or the button that sends it) with data-confirm="question" asks before it is sent
// (e.g. aborting a rollout, disabling devices).
document.addEventListener("submit", function (event) {
  var form = event.target;
  var button = event.submitter;
  var question = (button && button.getAttribute && button.getAttribute("data-confirm")) ||
    (form && form.getAttribute && form.getAttribute("data-confirm"));
  if (question && !window.confirm(question)) {
    event.preventDefault();
  }
});

// Devices: "select all" ticks every device shown.
document.addEventListener("change", function (event) {
  if (event.target && event.target.id === "select-all") {
    var boxes = document.querySelectorAll("input.pick");
    for (var i = 0; i < boxes.length; i++) { boxes[i].checked = event.target.checked; }
  }
});

// Groups: a live preview (device count and first names) while the selector is typed.
(function () {
  var input = document.getElementById("group-selector");
  var out = document.getElementById("group-preview");
  if (!input || !out) { return; }
  var timer = null;
  function show(text, isError) {
    out.textContent = text;
    out.className = isError ? "preview error" : "preview";
  }
  function run() {
    var value = input.value.trim();
    if (!value) { show("Type a selector to see how many devices it selects.", false); return; }
    var url = input.getAttribute("data-preview") + "?selector=" + encodeURIComponent(value);
    fetch(url, { credentials: "same-origin", headers: { "Accept": "application/json" } })
      .then(function (r) { return r.json().then(function (body) { return [r.ok, body]; }); })
      .then(function (res) {
        var ok = res[0], body = res[1];
        if (!ok) { show(body.error || "invalid selector", true); return; }
        var names = body.sample.map(function (d) { return d.name || d.device_id.slice(0, 16); });
        var more = body.count > names.length ? ", …" : "";
        show(body.count + " device" + (body.count === 1 ? "" : "s") + " match" +
             (names.length ? ": " + names.join(", ") + more : ""), false);
      })
      .catch(function () { show("preview unavailable", true); });
  }
  input.addEventListener("input", function () {
    if (timer) { clearTimeout(timer); }
    timer = setTimeout(run, 250);
  });
  if (input.value) { run(); }
})();
