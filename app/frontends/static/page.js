// The try-it page: a token for one anonymous end user (POST page/token), a submit with it, the task's progress over
// its event stream (read with fetch: EventSource cannot send the Authorization header), then the images.
"use strict";

const MODEL = "doubao-seedream-4-0";
let held = null; // {token, expires_at}

const $ = (id) => document.getElementById(id);

function problem(status, body) {
  const error = body && body.error;
  return error ? `${status} ${error.code}: ${error.message}` : `HTTP ${status}`;
}

async function readJson(response) {
  try {
    return await response.json();
  } catch {
    return null;
  }
}

async function token() {
  if (held && held.expires_at - 30 > Date.now() / 1000) return held.token;
  const response = await fetch("page/token", { method: "POST" });
  const body = await readJson(response);
  if (!response.ok) throw new Error(problem(response.status, body));
  held = body;
  return held.token;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
}

function show(task) {
  $("task").hidden = false;
  $("task-id").textContent = task.id;
  $("status").textContent = task.status;
  $("progress").value = task.progress || 0;
  const last = $("events").lastElementChild;
  if (last && last.dataset.status === task.status && last.dataset.progress === String(task.progress || 0)) return;
  const item = document.createElement("li");
  item.dataset.status = task.status;
  item.dataset.progress = String(task.progress || 0);
  item.textContent = `${task.status} ${task.progress || 0}%`;
  $("events").append(item);
  if (task.status === "completed") {
    const urls = task.result && task.result.data ? task.result.data.map((image) => image.url) : [];
    $("images").replaceChildren(
      ...urls.map((url, index) => {
        const image = document.createElement("img");
        image.src = url;
        image.alt = `Image ${index + 1} of ${urls.length}`;
        return image;
      }),
    );
  } else if (task.status === "failed") {
    showError(task.error ? `${task.error.code}: ${task.error.message}` : "The task failed.");
  }
}

// Server-Sent Events over fetch: blocks separated by a blank line, each `data:` line one task object.
async function watch(taskId, bearer) {
  const response = await fetch(`v1/images/generations/${encodeURIComponent(taskId)}/events`, {
    headers: { Authorization: `Bearer ${bearer}`, Accept: "text/event-stream" },
  });
  if (response.status === 204) return;
  if (!response.ok) throw new Error(problem(response.status, await readJson(response)));
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trim())
        .join("\n");
      if (data) show(JSON.parse(data));
    }
  }
}

async function generate(event) {
  event.preventDefault();
  const button = $("submit");
  button.disabled = true;
  $("error").hidden = true;
  $("events").replaceChildren();
  $("images").replaceChildren();
  try {
    const bearer = await token();
    const response = await fetch("v1/images/generations", {
      method: "POST",
      headers: { Authorization: `Bearer ${bearer}`, "Content-Type": "application/json" },
      body: JSON.stringify({
        model: MODEL,
        prompt: $("prompt").value,
        size: $("size").value,
        n: Number($("n").value),
      }),
    });
    const task = await readJson(response);
    if (!response.ok) throw new Error(problem(response.status, task));
    show(task);
    await watch(task.id, bearer);
  } catch (error) {
    showError(error.message);
  } finally {
    button.disabled = false;
  }
}

document.addEventListener("DOMContentLoaded", () => $("generate").addEventListener("submit", generate));
