// eigenprune dashboard: live job progress over the API's Server-Sent Events, evaluation polling,
// and the playground's two streamed completions. Pages are complete without it.
"use strict";

function follow(jobId, onEvent, onEnd) {
  const source = new EventSource("/v1/pruning/jobs/" + encodeURIComponent(jobId) + "/events");
  source.addEventListener("progress", (e) => onEvent(JSON.parse(e.data)));
  source.addEventListener("end", () => { source.close(); onEnd(); });
  source.onerror = () => { if (source.readyState === EventSource.CLOSED) onEnd(); };
  return source;
}

function showProgress(root, ev) {
  const bar = root.querySelector("progress");
  const phase = root.querySelector(".phase");
  const status = root.querySelector(".status");
  if (bar) bar.value = ev.fraction;
  if (phase) phase.textContent = ev.message;
  if (status && status.dataset.status === "queued") { status.textContent = "running"; status.dataset.status = "running"; }
}

async function jobJson(id) {
  const r = await fetch("/v1/pruning/jobs/" + encodeURIComponent(id), { credentials: "same-origin" });
  return r.ok ? r.json() : null;
}

// The jobs list: each unfinished row follows its job until it ends.
function liveRows() {
  document.querySelectorAll("tr[data-job]").forEach((row) => {
    const status = row.querySelector(".status");
    if (!status || !["queued", "running"].includes(status.dataset.status)) return;
    follow(row.dataset.job, (ev) => showProgress(row, ev), async () => {
      const job = await jobJson(row.dataset.job);
      if (!job) return;
      status.textContent = job.status;
      status.dataset.status = job.status;
      const bar = row.querySelector("progress");
      if (bar && job.status === "succeeded") bar.value = 1;
      const phase = row.querySelector(".phase");
      if (phase) phase.textContent = job.error ? job.error.code : "";
      const variant = row.querySelector(".variant");
      if (variant && job.pruned_model) {
        variant.innerHTML = "";
        const a = document.createElement("a");
        a.href = "/variants/" + encodeURIComponent(job.pruned_model);
        a.textContent = job.pruned_model;
        variant.appendChild(a);
      }
      const pct = (a) => (100 * a.accuracy).toFixed(2) + "%";
      const before = row.querySelector(".before");
      const after = row.querySelector(".after");
      if (before && job.result) before.textContent = pct(job.result.accuracy_before);
      if (after && job.result) after.textContent = pct(job.result.accuracy_after);
    });
  });
}

// A job's page: follow it, then reload to draw the results.
function liveJob() {
  const live = document.getElementById("live");
  if (!live) return;
  follow(live.dataset.job, (ev) => showProgress(live, ev), () => location.reload());
}

// An evaluation's page: poll until it ends, then reload.
function liveEvaluation() {
  const live = document.getElementById("live-evaluation");
  if (!live) return;
  const tick = async () => {
    const r = await fetch("/v1/evaluations/" + encodeURIComponent(live.dataset.job), { credentials: "same-origin" });
    const job = r.ok ? await r.json() : null;
    if (job && !["queued", "running"].includes(job.status)) location.reload();
    else setTimeout(tick, 1000);
  };
  setTimeout(tick, 1000);
}

// The playground: the same prompt to each model, streamed side by side.
async function stream(model, prompt, maxTokens, out) {
  out.textContent = "";
  out.setAttribute("aria-busy", "true");
  const r = await fetch("/v1/completions", {
    method: "POST",
    credentials: "same-origin",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ model, prompt, max_tokens: maxTokens, temperature: 0, stream: true }),
  });
  if (!r.ok) {
    const err = await r.json().catch(() => null);
    out.textContent = "error: " + (err && err.error ? err.error.message : r.status);
    out.setAttribute("aria-busy", "false");
    return;
  }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of chunk.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const data = line.slice(6);
        if (data === "[DONE]") continue;
        const msg = JSON.parse(data);
        if (msg.choices && msg.choices[0]) out.textContent += msg.choices[0].text;
      }
    }
  }
  out.setAttribute("aria-busy", "false");
  out.dataset.done = "true";
}

function playground() {
  const form = document.getElementById("playground");
  if (!form) return;
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const prompt = form.querySelector("[name=prompt]").value;
    const maxTokens = parseInt(form.querySelector("[name=max_tokens]").value, 10) || 16;
    document.querySelectorAll("pre[data-model]").forEach((out) => {
      out.dataset.done = "false";
      stream(out.dataset.model, prompt, maxTokens, out);
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  liveRows();
  liveJob();
  liveEvaluation();
  playground();
});
