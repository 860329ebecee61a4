// Field telemetry charts. Served from our origin (CSP: script-src 'self'); the data comes
// from the same-origin /api/v1/charts/... endpoint named by the panel's data-chart-src, and
// is drawn with the vendored uPlot (update_server/dashboard/static/vendor/uplot, MIT).
// Each panel gets data-rendered="yes" (or "empty"/"error") when done; each chart carries
// data-metric and data-points so tests and operators can tell a drawn chart from an empty one.
(function () {
  "use strict";
  var PALETTE = ["#2457c5", "#c0392b", "#1f8a4c", "#b7791f", "#7b3fb5", "#0f8a8a",
                 "#d35400", "#5d6d7e", "#e84393", "#2d3436"];
  var ROLE_COLOURS = { canary: "#c0392b", control: "#2457c5" };

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) { node.className = cls; }
    if (text !== undefined) { node.textContent = text; }
    return node;
  }

  // One time axis for all series: the union of their bucket starts; a series without a value
  // at a time gets null (uPlot draws a gap).
  function align(series, key) {
    var times = {};
    series.forEach(function (s) { s.t.forEach(function (t) { times[t] = true; }); });
    var axis = Object.keys(times).map(Number).sort(function (a, b) { return a - b; });
    var data = [axis];
    series.forEach(function (s) {
      var at = {};
      s.t.forEach(function (t, i) { at[t] = s[key][i]; });
      data.push(axis.map(function (t) { return at[t] === undefined ? null : at[t]; }));
    });
    return data;
  }

  function colour(s, i) { return ROLE_COLOURS[s.role] || PALETTE[i % PALETTE.length]; }

  function chart(panel, metric, series) {
    var box = el("div", "chart");
    box.setAttribute("data-metric", metric.key);
    box.appendChild(el("h3", null, metric.label));
    panel.appendChild(box);
    var data = align(series, metric.key);
    var points = 0;
    data.slice(1).forEach(function (col) {
      col.forEach(function (v) { if (v !== null) { points += 1; } });
    });
    box.setAttribute("data-points", String(points));
    var width = Math.max(280, Math.min(560, panel.clientWidth / 2 - 24));
    var opts = {
      width: width, height: 180, scales: { x: { time: true } },
      legend: { show: series.length > 1 },
      series: [{}].concat(series.map(function (s, i) {
        return { label: s.label, stroke: colour(s, i), width: 2, spanGaps: false,
                 points: { show: s.t.length < 40 } };
      }))
    };
    new window.uPlot(opts, data, box);
  }

  function drill(panel, body) {
    var link = panel.getAttribute("data-chart-link");
    if (link === "cohort" && body.series.length) {
      var list = el("ul", "drill");
      body.series.forEach(function (s) {
        var a = el("a", null, s.label + " · " + s.devices + " devices");
        var q = new URLSearchParams({ model: s.model, version: s.version, tag: s.tag });
        a.href = panel.getAttribute("data-cohort-url") + "?" + q.toString();
        a.className = "cohort-link";
        var li = el("li");
        li.appendChild(a);
        list.appendChild(li);
      });
      panel.appendChild(el("h3", null, "Cohorts"));
      panel.appendChild(list);
    }
    if (link === "device" && body.devices) {
      var table = el("table", "drill");
      var head = el("tr");
      ["Device", "Tags", "Last p95 (ms)", "Last drift", "Reports"].forEach(function (h) {
        head.appendChild(el("th", null, h));
      });
      table.appendChild(head);
      body.devices.forEach(function (d) {
        var row = el("tr");
        var cell = el("td");
        var a = el("a", "device-link", d.device_id.slice(0, 16));
        a.href = panel.getAttribute("data-device-url") + "/" + encodeURIComponent(d.device_id);
        cell.appendChild(a);
        row.appendChild(cell);
        row.appendChild(el("td", null, d.tags.join(", ")));
        row.appendChild(el("td", "n", d.last_p95_ms === null ? "—" : d.last_p95_ms.toFixed(1)));
        row.appendChild(el("td", "n", d.last_drift === null ? "—" : d.last_drift.toFixed(3)));
        row.appendChild(el("td", "n", String(d.reports)));
        table.appendChild(row);
      });
      panel.appendChild(el("h3", null, "Devices"));
      panel.appendChild(table);
    }
  }

  function render(panel, body) {
    var status = panel.querySelector(".chart-status");
    var series = body.series.filter(function (s) { return s.t.length > 0; });
    if (!series.length) {
      status.textContent = "No field telemetry in this window yet.";
      panel.setAttribute("data-rendered", "empty");
      return;
    }
    status.remove();
    var wanted = panel.getAttribute("data-chart-metrics") === "gate" ? body.gate_metrics : null;
    var grid = el("div", "chart-grid");
    panel.appendChild(grid);
    body.metrics.forEach(function (m) {
      if (!wanted || wanted.indexOf(m.key) >= 0) { chart(grid, m, series); }
    });
    drill(panel, body);
    panel.setAttribute("data-rendered", "yes");
  }

  function load(panel) {
    fetch(panel.getAttribute("data-chart-src"), {
      credentials: "same-origin", headers: { Accept: "application/json" }
    }).then(function (response) {
      if (!response.ok) { throw new Error("HTTP " + response.status); }
      return response.json();
    }).then(function (body) { render(panel, body); }, function (err) {
      panel.querySelector(".chart-status").textContent =
        "Could not load the field telemetry (" + err.message + "); reload the page.";
      panel.setAttribute("data-rendered", "error");
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    Array.prototype.forEach.call(document.querySelectorAll("section.charts"), load);
  });
}());
