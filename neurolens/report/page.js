// neurolens report: the overview table sorts, and each group's chart is drawn when it
// scrolls into view (a page of 1,000 groups opens at once). Data: #report-data.
(function () {
  "use strict";
  var report = JSON.parse(document.getElementById("report-data").textContent);
  var drawn = {};

  function iso(seconds) { return new Date(seconds * 1000).toISOString(); }

  // plotly reads hover and annotation text as its own HTML subset (<a href>, <span style>):
  // a stored string reaches it only as text
  function plain(value) {
    return String(value).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  }

  function draw(index) {
    if (drawn[index]) return;
    drawn[index] = true;
    var group = report.groups[index];
    var div = document.querySelector('.chart[data-group="' + index + '"]');
    var x = group.t.map(iso);
    var hover = group.run.map(function (run, i) {
      var session = report.sessions[group.s[i]];
      var hw = report.hardware[group.hw[i]];
      return [run, session[0], session[1] || "-", hw[0] || "-", hw[1] || "-"].map(plain);
    });
    var traces = [];
    if (group.p99.some(function (v) { return v !== null; })) {  // no legend entry for a line not drawn
      traces.push({
        name: "p99", x: x, y: group.p99, mode: "lines", line: { width: 1, dash: "dot", color: "#8c959f" },
        hovertemplate: "p99 %{y:.4g} ms<extra></extra>"
      });
    }
    traces.push(
      {
        name: "median (p50)", x: x, y: group.y, mode: "lines+markers", customdata: hover,
        line: { color: "#0969da" }, marker: { size: 6 },
        hovertemplate: "run %{customdata[0]}<br>session %{customdata[1]}<br>%{x}<br>p50 %{y:.4g} ms" +
          "<br>commit %{customdata[2]}<br>%{customdata[3]} (driver %{customdata[4]})<extra></extra>"
      }
    );
    if (group.gpu.some(function (v) { return v !== null; })) {
      traces.push({
        name: "GPU utilization %", x: x, y: group.gpu, yaxis: "y2", mode: "lines",
        line: { width: 1, color: "#bf8700" }, hovertemplate: "GPU %{y:.0f}%<extra></extra>"
      });
    }
    if (group.cp.length) {
      traces.push({
        name: "change point", x: group.cp.map(function (i) { return x[i]; }),
        y: group.cp.map(function (i) { return group.y[i]; }), mode: "markers",
        marker: { symbol: "diamond-open", size: 14, color: "#8250df", line: { width: 2 } },
        hovertemplate: "level changes here<extra></extra>"
      });
    }
    if (group.verdict === "regressed") {
      var last = x.length - 1;
      traces.push({
        name: "regressed", x: [x[last]], y: [group.y[last]], mode: "markers",
        marker: { symbol: "x", size: 14, color: "#cf222e" },
        hovertemplate: "regressed " + plain(group.change) + " (threshold " + plain(report.threshold) + ")<extra></extra>"
      });
    }
    var shapes = group.hwchange.map(function (i) {
      return { type: "line", xref: "x", yref: "paper", x0: x[i], x1: x[i], y0: 0, y1: 1,
               line: { color: "#cf222e", width: 1, dash: "dash" } };
    });
    var notes = group.hwchange.map(function (i) {
      var before = report.hardware[group.hw[i - 1]], after = report.hardware[group.hw[i]];
      return { x: x[i], y: 1, xref: "x", yref: "paper", showarrow: false, yanchor: "bottom",
               text: "driver " + plain(before[1] || "-") + " \u2192 " + plain(after[1] || "-"),
               font: { size: 10, color: "#cf222e" } };
    });
    var layout = {
      // the date line under the times needs room: the axis takes the margin it needs
      margin: { l: 60, r: 60, t: 24, b: 64 }, hovermode: "closest", legend: { orientation: "h", y: -0.3 },
      xaxis: { automargin: true },
      yaxis: { title: { text: "latency (ms)" }, rangemode: "tozero" },
      yaxis2: { title: { text: "GPU %" }, overlaying: "y", side: "right", range: [0, 100], showgrid: false },
      shapes: shapes, annotations: notes
    };
    Plotly.newPlot(div, traces, layout, { displaylogo: false, responsive: true });
  }

  window.neurolensRenderAll = function () {
    report.groups.forEach(function (_, i) { draw(i); });
  };
  // a printed page (or a full-page capture) holds every chart, not only those scrolled to
  window.addEventListener("beforeprint", window.neurolensRenderAll);

  var charts = document.querySelectorAll(".chart");
  if ("IntersectionObserver" in window) {
    var observer = new IntersectionObserver(function (entries) {
      entries.forEach(function (entry) {
        if (entry.isIntersecting) {
          draw(Number(entry.target.dataset.group));
          observer.unobserve(entry.target);
        }
      });
    }, { rootMargin: "400px" });
    charts.forEach(function (chart) { observer.observe(chart); });
  } else {
    window.neurolensRenderAll();
  }

  // the overview sorts by any column; numbers by their data-value
  var table = document.getElementById("overview");
  table.querySelectorAll("th").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      table.querySelectorAll("th").forEach(function (other) { other.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
        var cmp = (x !== undefined && y !== undefined) ? Number(x) - Number(y)
          : a.cells[column].textContent.localeCompare(b.cells[column].textContent);
        return ascending ? cmp : -cmp;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
})();
