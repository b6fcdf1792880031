// The chat widget demo: /chat over WebSocket, behaviour events for the page's actions,
// streamed replies (reply.delta ... reply), a clarifying question's suggestions as buttons
// that answer it, operator messages, and voice notes (MediaRecorder's Opus, sent in parts;
// the bubble shows the transcript once the note is stored). No build step.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
$("external-id").value = params.get("user") || "demo-" + Math.random().toString(16).slice(2, 8);
$("name").value = params.get("name") || "";

let ws = null;
let counter = 0;
const pending = []; // events that happened before the chat started
const replies = new Map(); // turn_id -> bubble being streamed
const notes = new Map(); // voice note id -> its bubble, until the transcript comes
let recorder = null;
let recordLimit = null;

// A part's audio, base64 in a JSON frame, stays well under the 64 KiB frame limit.
const NOTE_PART_BYTES = 48000;
// The server takes notes of up to 60 s; the recording stops a little before.
const NOTE_MAX_MS = 59000;
const NOTE_TYPES = [["audio/webm;codecs=opus", "webm"], ["audio/ogg;codecs=opus", "ogg"]];

const nextId = (prefix) => `${prefix}-${Date.now().toString(36)}-${++counter}`;

function bubble(kind, text) {
  const div = document.createElement("div");
  div.className = `bubble ${kind}`;
  div.dataset.kind = kind;
  div.textContent = text;
  $("messages").append(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

function send(frame) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
}

function say(text) {
  // Whatever the customer says next answers (or drops) a question's suggestions.
  for (const row of document.querySelectorAll("#messages .suggestions")) row.remove();
  bubble("user", text);
  send({ type: "message", id: nextId("m"), text });
}

function suggest(choices) {
  const row = document.createElement("div");
  row.className = "suggestions row";
  for (const choice of choices) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "secondary suggestion";
    button.textContent = choice;
    button.addEventListener("click", () => say(choice));
    row.append(button);
  }
  $("messages").append(row);
  $("messages").scrollTop = $("messages").scrollHeight;
}

function base64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(text);
}

function sendNote(bytes, encoding) {
  for (const row of document.querySelectorAll("#messages .suggestions")) row.remove();
  const id = nextId("note");
  const b = bubble("user", "voice note…");
  b.classList.add("voice");
  b.dataset.note = id;
  notes.set(id, b);
  const parts = Math.max(1, Math.ceil(bytes.length / NOTE_PART_BYTES));
  for (let part = 0; part < parts; part++) {
    const data = base64(bytes.subarray(part * NOTE_PART_BYTES, (part + 1) * NOTE_PART_BYTES));
    send({ type: "audio", id, part, last: part === parts - 1, encoding, data });
  }
}

async function startRecording() {
  const chosen = NOTE_TYPES.find(([type]) => window.MediaRecorder && MediaRecorder.isTypeSupported(type));
  if (!chosen) {
    $("record-status").textContent = "this browser cannot record Opus voice notes";
    return;
  }
  const [type, encoding] = chosen;
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    $("record-status").textContent = `no microphone: ${err.message}`;
    return;
  }
  const chunks = [];
  recorder = new MediaRecorder(stream, { mimeType: type, audioBitsPerSecond: 32000 });
  recorder.addEventListener("dataavailable", (e) => { if (e.data.size) chunks.push(e.data); });
  recorder.addEventListener("stop", async () => {
    for (const track of stream.getTracks()) track.stop();
    const bytes = new Uint8Array(await new Blob(chunks, { type }).arrayBuffer());
    $("record-status").textContent = "";
    sendNote(bytes, encoding);
  });
  recorder.start();
  recordLimit = setTimeout(stopRecording, NOTE_MAX_MS);
  $("record").textContent = "Stop";
  $("record").dataset.recording = "true";
  $("record-status").textContent = "recording…";
}

function stopRecording() {
  clearTimeout(recordLimit);
  if (recorder && recorder.state !== "inactive") recorder.stop();
  recorder = null;
  $("record").textContent = "Record";
  delete $("record").dataset.recording;
}

function track(name, props = {}) {
  const item = { id: nextId("ev"), name, at: new Date().toISOString(), props };
  if (ws && ws.readyState === WebSocket.OPEN) send({ type: "event", ...item });
  else pending.push(item);
  $("shop-status").textContent = `sent behaviour event: ${name}`;
}

function onFrame(frame) {
  switch (frame.type) {
    case "welcome":
      $("status").textContent = "connected";
      $("status").dataset.sessionId = frame.session_id;
      $("text").disabled = false;
      $("send").disabled = false;
      $("record").disabled = false;
      if (pending.length) send({ type: "events", id: nextId("evs"), items: pending.splice(0) });
      break;
    case "ack": {
      // A voice note's last part is acked once the note is stored, with its transcript.
      const b = notes.get(frame.id);
      if (b && frame.transcript !== undefined) {
        b.textContent = frame.transcript;
        b.dataset.transcript = "true";
        notes.delete(frame.id);
      }
      break;
    }
    case "reply.delta": {
      let b = replies.get(frame.turn_id);
      if (!b) { b = bubble("bot", ""); replies.set(frame.turn_id, b); }
      b.textContent += frame.text;
      break;
    }
    case "reply": {
      const b = replies.get(frame.turn_id) || bubble("bot", "");
      b.textContent = frame.text;
      b.dataset.done = "true";
      if (frame.turn) b.dataset.turn = frame.turn;
      replies.delete(frame.turn_id);
      if (frame.suggestions && frame.suggestions.length) suggest(frame.suggestions);
      break;
    }
    case "operator.joined":
      bubble("system", `${frame.name || "An agent"} joined the chat`);
      break;
    case "operator.message":
      bubble("operator", frame.text);
      break;
    case "operator.left":
      bubble("system", "The agent left; the assistant is back");
      break;
    case "error": {
      const note = notes.get(frame.ref);
      if (note) {
        note.textContent = "voice note not sent";
        note.classList.add("failed");
        notes.delete(frame.ref);
      }
      bubble("system", `error: ${frame.message}`).classList.add("error");
      break;
    }
    default:
      break;
  }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/chat`);
  $("status").textContent = "connecting…";
  ws.addEventListener("open", () => {
    const user = { external_id: $("external-id").value.trim() };
    if ($("name").value.trim()) user.name = $("name").value.trim();
    send({ type: "hello", user });
    track("page_view", { path: location.pathname });
  });
  ws.addEventListener("message", (msg) => onFrame(JSON.parse(msg.data)));
  ws.addEventListener("close", () => {
    $("status").textContent = "disconnected";
    $("text").disabled = true;
    $("send").disabled = true;
    $("record").disabled = true;
    stopRecording();
  });
  $("connect").disabled = true;
}

$("connect").addEventListener("click", connect);
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  say(text);
  $("text").value = "";
});
$("record").addEventListener("click", () => (recorder ? stopRecording() : startRecording()));
$("act-search").addEventListener("click", () => track("search", { query: $("shop-query").value }));
$("act-cart").addEventListener("click", () => track("add_to_cart", { sku: "blender-500" }));
$("act-checkout").addEventListener("click", () =>
  track("payment_failed", { amount: 49.9, reason: "card_declined" }));
