// Draws the charts a page describes in its <script type="application/json" id="chart-data"> block:
// [{canvas, labels, series: [{label, type, axis, data}], markers: [{at, text}], horizontal}].
// The series come from the same rows as the tables on the page; this file only draws them.
(function () {
  "use strict";
  var COLORS = ["#2f5bd3", "#1c8a4d", "#c23b3b", "#b7791f", "#7b3fb8", "#0f8a8a", "#6b7280", "#d9467a"];
  var AXES = {
    count: { position: "left", beginAtZero: true, title: "count" },
    share: { position: "right", min: 0, max: 1, title: "positive share" },
    score: { position: "top", min: -1, max: 1, title: "mean sentiment" }
  };

  // Promotions as dashed vertical lines, labelled: the trend before and after a new model version.
  var markers = {
    id: "markers",
    afterDatasetsDraw: function (chart) {
      var list = chart.options.plugins.markers && chart.options.plugins.markers.list;
      if (!list || !list.length) return;
      var x = chart.scales.x, area = chart.chartArea, ctx = chart.ctx, labels = chart.data.labels;
      list.forEach(function (m) {
        var i = labels.findIndex(function (l) { return l >= m.at; });
        if (i < 0) return;
        var px = x.getPixelForValue(i);
        ctx.save();
        ctx.strokeStyle = "#7b3fb8";
        ctx.setLineDash([5, 4]);
        ctx.beginPath(); ctx.moveTo(px, area.top); ctx.lineTo(px, area.bottom); ctx.stroke();
        ctx.setLineDash([]);
        ctx.fillStyle = "#7b3fb8";
        ctx.font = "11px system-ui, sans-serif";
        ctx.fillText(m.text, Math.min(px + 4, area.right - 120), area.top + 12);
        ctx.restore();
      });
    }
  };

  function scales(spec) {
    var out = {}, used = {};
    spec.series.forEach(function (s) { used[s.axis] = true; });
    var index = spec.horizontal ? "y" : "x";
    // Entity names are all shown; days are thinned to what fits.
    out[index] = { ticks: { autoSkip: !spec.horizontal, maxRotation: 0 } };
    Object.keys(used).forEach(function (axis) {
      var a = AXES[axis] || AXES.count;
      out[axis] = { type: "linear", position: spec.horizontal ? (axis === "score" ? "top" : "bottom") : a.position,
                    beginAtZero: !!a.beginAtZero, title: { display: true, text: a.title },
                    grid: { drawOnChartArea: axis === "count" } };
      if (a.min !== undefined) { out[axis].min = a.min; out[axis].max = a.max; }
      if (axis === "share") out[axis].ticks = { callback: function (v) { return Math.round(v * 100) + "%"; } };
    });
    return out;
  }

  function draw(spec) {
    var canvas = document.getElementById(spec.canvas);
    if (!canvas) return;
    var datasets = spec.series.map(function (s, i) {
      var color = COLORS[i % COLORS.length];
      var d = { label: s.label, type: s.type, data: s.data, borderColor: color, backgroundColor: color + (s.type === "bar" ? "99" : "33"),
                spanGaps: true, pointRadius: spec.labels.length > 60 ? 1 : 3, order: s.type === "line" ? 0 : 1 };
      d[spec.horizontal ? "xAxisID" : "yAxisID"] = s.axis;
      return d;
    });
    new window.Chart(canvas, {
      type: "bar",
      data: { labels: spec.labels, datasets: datasets },
      options: {
        indexAxis: spec.horizontal ? "y" : "x", animation: false, responsive: true, maintainAspectRatio: false,
        interaction: { mode: "index", intersect: false }, scales: scales(spec),
        plugins: { markers: { list: spec.markers || [] }, legend: { position: "bottom" } }
      },
      plugins: [markers]
    });
  }

  function start() {
    var node = document.getElementById("chart-data");
    if (node && window.Chart) JSON.parse(node.textContent).forEach(draw);
    document.documentElement.setAttribute("data-ready", "1");  // the browser test waits for this
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
