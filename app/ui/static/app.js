// The dashboard's live parts: charts drawn with uPlot, updated from the server's event streams.
(function () {
  "use strict";

  const FINAL = new Set(["succeeded", "failed", "cancelled", "pruned"]);
  const PALETTE = ["#1d4ed8", "#dc2626", "#15803d", "#9333ea", "#ea580c"];

  function number(value) {
    if (value === null || value === undefined) return "-";
    return typeof value === "number" ? String(Number(value.toPrecision(4))) : String(value);
  }

  function chart(element, series, data) {
    element.replaceChildren();
    const width = Math.max(320, element.clientWidth || 640);
    return new uPlot(
      {
        width: width,
        height: 260,
        scales: { x: { time: false } },
        axes: [
          // Epochs are whole numbers; losses are often far below 1, so label them in full.
          { label: "epoch", incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000] },
          { size: 64, values: (plot, splits) => splits.map(number) },
        ],
        series: [{ label: "epoch" }].concat(series),
      },
      data,
      element,
    );
  }

  function setBadge(badge, status) {
    badge.textContent = status;
    badge.className = badge.className.replace(/\bstatus-\S+/, "") + " status-" + status;
  }

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  // --- one run: curves, epoch table and status from /runs/{id}/events -------------------

  function runPage(source) {
    const info = JSON.parse(source.textContent);
    const epochs = new Map(info.epochs.map((epoch) => [epoch.epoch, epoch]));
    const lossElement = document.getElementById("loss-chart");
    const metricElement = document.getElementById("metric-chart");
    const metricFigure = document.getElementById("metric-figure");
    const rows = document.getElementById("epoch-rows");
    let lossChart = null;
    let metricChart = null;
    let metricNames = "";
    let summaryTimer = null;

    function draw() {
      const ordered = Array.from(epochs.values()).sort((a, b) => a.epoch - b.epoch);
      const x = ordered.map((epoch) => epoch.epoch);
      const losses = [
        x,
        ordered.map((epoch) => epoch.train_loss),
        ordered.map((epoch) => (epoch.val_loss === undefined ? null : epoch.val_loss)),
      ];
      if (lossChart === null) {
        lossChart = chart(
          lossElement,
          [
            { label: "train_loss", stroke: PALETTE[0], width: 2 },
            { label: "val_loss", stroke: PALETTE[1], width: 2, dash: [6, 4] },
          ],
          losses,
        );
      } else {
        lossChart.setData(losses);
      }
      lossElement.dataset.points = String(x.length);
      const names = Array.from(
        new Set(ordered.flatMap((epoch) => Object.keys(epoch.metrics || {}))),
      ).sort();
      if (names.length === 0) return;
      const values = [x].concat(
        names.map((name) =>
          ordered.map((epoch) => {
            const value = (epoch.metrics || {})[name];
            return value === undefined ? null : value;
          }),
        ),
      );
      metricFigure.hidden = false;
      if (metricChart === null || names.join() !== metricNames) {
        if (metricChart !== null) metricChart.destroy();
        metricNames = names.join();
        metricChart = chart(
          metricElement,
          names.map((name, index) => ({
            label: name,
            stroke: PALETTE[(index + 2) % PALETTE.length],
            width: 2,
          })),
          values,
        );
      } else {
        metricChart.setData(values);
      }
      metricElement.dataset.points = String(x.length);
    }

    function showEpoch(epoch) {
      const row = document.createElement("tr");
      row.dataset.epoch = String(epoch.epoch);
      const metrics = Object.entries(epoch.metrics || {})
        .map(([name, value]) => name + " " + number(value))
        .join(" ");
      row.append(
        cell(String(epoch.epoch)),
        cell(number(epoch.train_loss)),
        cell(number(epoch.val_loss)),
        cell(metrics),
        cell(number(epoch.seconds)),
        cell(String(epoch.attempt)),
      );
      const existing = rows.querySelector('tr[data-epoch="' + epoch.epoch + '"]');
      if (existing !== null) {
        existing.replaceWith(row);
        return;
      }
      const after = Array.from(rows.children).find(
        (other) => Number(other.dataset.epoch) > epoch.epoch,
      );
      rows.insertBefore(row, after || null);
    }

    function showStatus(status, progress) {
      setBadge(document.getElementById("run-status"), status);
      if (progress) {
        const bar = document.getElementById("run-progress");
        bar.max = progress.epochs;
        bar.value = progress.epoch;
        document.getElementById("run-progress-text").textContent =
          progress.epoch + "/" + progress.epochs + " epochs";
      }
      const summary = document.getElementById("run-summary");
      if (summary !== null && summary.dataset.status !== status) {
        // Replayed statuses arrive in a burst: fetch the facts and buttons once it settles.
        clearTimeout(summaryTimer);
        summaryTimer = setTimeout(() => {
          htmx.ajax("GET", "/ui/runs/" + info.id + "/summary", {
            target: "#run-summary",
            swap: "outerHTML",
          });
        }, 200);
      }
    }

    draw();
    if (info.final) return;
    const stream = new EventSource("/runs/" + info.id + "/events");
    stream.addEventListener("epoch", (event) => {
      const epoch = JSON.parse(event.data);
      epochs.set(epoch.epoch, epoch);
      showEpoch(epoch);
      draw();
    });
    stream.addEventListener("status", (event) => {
      const data = JSON.parse(event.data);
      showStatus(data.status, data.progress);
      // The stream ends after a final status; without this the browser would reconnect.
      if (FINAL.has(data.status)) stream.close();
    });
    window.addEventListener("resize", () => {
      for (const [plot, element] of [
        [lossChart, lossElement],
        [metricChart, metricElement],
      ]) {
        if (plot !== null) plot.setSize({ width: element.clientWidth || 640, height: 260 });
      }
    });
  }

  // --- the runs list: rows follow the project's stream /events ---------------------------

  function runsList(container) {
    const form = document.getElementById("run-filters");
    let timer = null;

    function reload() {
      clearTimeout(timer);
      timer = setTimeout(() => {
        const query = new URLSearchParams(new FormData(form)).toString();
        htmx.ajax("GET", "/ui/runs/table?" + query, { target: "#runs-table", swap: "innerHTML" });
      }, 300);
    }

    // A swapped-in table keeps the runs picked for comparison.
    let picked = [];
    container.addEventListener("htmx:beforeSwap", () => {
      picked = Array.from(container.querySelectorAll("input[name=ids]:checked")).map(
        (box) => box.value,
      );
    });
    container.addEventListener("htmx:afterSwap", () => {
      for (const box of container.querySelectorAll("input[name=ids]")) {
        box.checked = picked.includes(box.value);
      }
    });

    // From the newest event the page was rendered with; a reconnect sends Last-Event-ID.
    const stream = new EventSource("/events?after=" + container.dataset.eventsAfter);
    stream.addEventListener("status", (event) => {
      const data = JSON.parse(event.data);
      const row = document.getElementById("run-" + data.run_id);
      if (row === null) {
        if (data.status === "queued") reload();
        return;
      }
      setBadge(row.querySelector("[data-field=status]"), data.status);
      if (data.progress) {
        const bar = row.querySelector("progress");
        bar.max = data.progress.epochs;
        bar.value = data.progress.epoch;
        row.querySelector("[data-field=progress]").textContent =
          data.progress.epoch + "/" + data.progress.epochs;
      }
    });
    stream.addEventListener("epoch", (event) => {
      const data = JSON.parse(event.data);
      const row = document.getElementById("run-" + data.run_id);
      if (row === null) return;
      row.querySelector("[data-field=train_loss]").textContent = number(data.train_loss);
      row.querySelector("[data-field=val_loss]").textContent = number(data.val_loss);
      const metrics = data.metrics || {};
      const accuracy = metrics.val_accuracy ?? metrics.train_accuracy;
      if (accuracy !== undefined) {
        row.querySelector("[data-field=accuracy]").textContent = number(accuracy);
      }
      const bar = row.querySelector("progress");
      bar.value = Math.max(bar.value, data.epoch);
      row.querySelector("[data-field=progress]").textContent = bar.value + "/" + bar.max;
    });
  }

  // --- compare: every run's curves on one chart ------------------------------------------

  function comparePage(source) {
    const curves = JSON.parse(source.textContent);
    const element = document.getElementById("compare-chart");
    const x = Array.from(
      new Set(curves.flatMap((curve) => curve.epochs.map((epoch) => epoch.epoch))),
    ).sort((a, b) => a - b);
    const series = [];
    const data = [x];
    curves.forEach((curve, index) => {
      const byEpoch = new Map(curve.epochs.map((epoch) => [epoch.epoch, epoch]));
      const color = PALETTE[index % PALETTE.length];
      const pick = (name) =>
        x.map((at) => {
          const epoch = byEpoch.get(at);
          return epoch === undefined || epoch[name] === null ? null : epoch[name];
        });
      series.push({ label: curve.label + " train", stroke: color, width: 2, spanGaps: true });
      data.push(pick("train_loss"));
      if (curve.epochs.some((epoch) => epoch.val_loss !== null)) {
        series.push({
          label: curve.label + " val",
          stroke: color,
          width: 2,
          dash: [6, 4],
          spanGaps: true,
        });
        data.push(pick("val_loss"));
      }
    });
    chart(element, series, data);
    element.dataset.points = String(x.length);
    element.dataset.series = String(series.length);
  }

  document.addEventListener("DOMContentLoaded", () => {
    const run = document.getElementById("run-data");
    if (run !== null) runPage(run);
    const list = document.querySelector("[data-live-runs]");
    if (list !== null) runsList(list);
    const compare = document.getElementById("compare-data");
    if (compare !== null) comparePage(compare);
  });
})();
