// The chat widget demo: /chat over WebSocket, behaviour events for the page's actions,
// streamed replies (reply.delta ... reply) and operator messages. No build step.

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
$("external-id").value = params.get("user") || "demo-" + Math.random().toString(16).slice(2, 8);
$("name").value = params.get("name") || "";

let ws = null;
let counter = 0;
const pending = []; // events that happened before the chat started
const replies = new Map(); // turn_id -> bubble being streamed

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
      if (pending.length) send({ type: "events", id: nextId("evs"), items: pending.splice(0) });
      break;
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
      replies.delete(frame.turn_id);
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
    case "error":
      bubble("system", `error: ${frame.message}`).classList.add("error");
      break;
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
  });
  $("connect").disabled = true;
}

$("connect").addEventListener("click", connect);
$("composer").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  bubble("user", text);
  send({ type: "message", id: nextId("m"), text });
  $("text").value = "";
});
$("act-search").addEventListener("click", () => track("search", { query: $("shop-query").value }));
$("act-cart").addEventListener("click", () => track("add_to_cart", { sku: "blender-500" }));
$("act-checkout").addEventListener("click", () =>
  track("payment_failed", { amount: 49.9, reason: "card_declined" }));
