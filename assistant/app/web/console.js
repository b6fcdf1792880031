// The operator console: speaks /operator (docs/operators.md). Plain module, no build step.

const $ = (id) => document.getElementById(id);
const DASH = "—";
const show = (value) => (value === null || value === undefined || value === "" ? DASH : String(value));
// A user as a heading: the name when there is one, else the id the business knows them by.
const displayName = (user) => user.name || user.external_id || user.user_id || user.id;
// A user in a list: the name and the external id, or the external id alone.
const who = (user) => (user.name ? `${user.name} · ${user.external_id}` : displayName(user));
const el = (tag, cls, text) => {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
};

let ws = null;
let counter = 0;
let me = null;
let cursor = null;
let watching = null; // session id
let dialogue = null; // the watched conversation's dialogue state (docs/conversation.md)
let opening = null; // {sessionId, frames}: live frames that came before session.watch's answer
const waiting = new Map(); // ref -> {resolve}

function notice(text) { $("notice").textContent = text || ""; }

function call(type, fields = {}) {
  const id = `c${++counter}`;
  ws.send(JSON.stringify({ type, id, ...fields }));
  return new Promise((resolve) => waiting.set(id, resolve));
}

async function ok(type, fields) {
  const answer = await call(type, fields);
  if (answer.type === "error") { notice(`${type}: ${answer.message}`); throw new Error(answer.code); }
  notice("");
  return answer;
}

function onFrame(frame) {
  if ((frame.type === "result" || frame.type === "error") && waiting.has(frame.ref)) {
    const resolve = waiting.get(frame.ref);
    waiting.delete(frame.ref);
    resolve(frame);
    return;
  }
  if (frame.type === "session.turn" || frame.type === "session.state") {
    if (opening && frame.session_id === opening.sessionId) opening.frames.push(frame);
    else if (frame.session_id === watching) onLive(frame);
    return;
  }
  if (frame.type === "error") notice(frame.message);
}

function onLive(frame) {
  if (frame.type === "session.state") { setHeld(frame.status, frame.operator); return; }
  const box = $("watch-turns");
  const turn = frame.turn;
  const pushedBefore = box.querySelector(`.turn[data-role="user"][data-turn-id="${CSS.escape(turn.id)}"]`);
  if (turn.role === "assistant") {
    // A user turn is pushed before the models have read it: the reply that answers it
    // (its id is the user turn's) carries its labels.
    if (pushedBefore) setLabels(pushedBefore, turn.intent, turn.emotion);
    if (!box.querySelector(`.turn[data-answers="${CSS.escape(turn.id)}"]`)) addTurn(box, turn, turn.id);
    followReading(turn);
    return;
  }
  if (turn.role === "user" && pushedBefore) return; // already in the history
  addTurn(box, turn);
}

function connect(key) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/operator`);
  ws.addEventListener("message", (msg) => onFrame(JSON.parse(msg.data)));
  ws.addEventListener("close", () => { $("whoami").textContent = "signed out"; });
  ws.addEventListener("open", async () => {
    const answer = await call("auth", { token: key });
    if (answer.type === "error") { notice(answer.message); sessionStorage.removeItem("operatorKey"); return; }
    me = answer;
    sessionStorage.setItem("operatorKey", key);
    $("whoami").textContent = `${me.operator.name} (${me.operator.role})`;
    $("whoami").dataset.role = me.operator.role;
    $("login").classList.add("hidden");
    $("app").classList.remove("hidden");
    if (!me.commands.includes("sessions.list")) $("live").classList.add("hidden");
    else refreshSessions();
  });
}

// search

function resultItem(item) {
  const li = el("li");
  const button = el("button", "secondary", who(item));
  button.dataset.userId = item.id;
  button.addEventListener("click", () => openProfile(item.id));
  li.append(button, labelsSpan(item.intent, item.emotion), el("span", "muted", ` · seen ${item.last_seen_at.slice(0, 16)}`));
  return li;
}

async function search(more) {
  const fields = { limit: 20 };
  for (const name of ["q", "emotion", "intent"]) if ($(name).value.trim()) fields[name] = $(name).value.trim();
  if (more && cursor) fields.cursor = cursor;
  const answer = await ok("profiles.search", fields);
  if (!more) $("results").replaceChildren();
  if (!answer.items.length && !more) $("results").append(el("li", "muted", "no match"));
  for (const item of answer.items) $("results").append(resultItem(item));
  cursor = answer.cursor;
  $("more").classList.toggle("hidden", !cursor);
}

// the profile view

function drawEmotionChart(points) {
  const svg = $("emotion-chart");
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const node = (tag, attrs, text) => {
    const n = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
    if (text) n.textContent = text;
    svg.append(n);
    return n;
  };
  if (!points.length) { node("text", { x: 10, y: 80 }, `${DASH} no emotion labels yet`); return; }
  const labels = [...new Set(points.map((p) => p.emotion))].sort();
  const x = (i) => 60 + (points.length === 1 ? 160 : (i * 330) / (points.length - 1));
  const y = (label) => 20 + (labels.indexOf(label) * 120) / Math.max(1, labels.length - 1);
  labels.forEach((label) => node("text", { x: 4, y: y(label) + 3 }, label));
  node("polyline", { class: "line", points: points.map((p, i) => `${x(i)},${y(p.emotion)}`).join(" ") });
  points.forEach((p, i) => {
    const c = node("circle", { class: "point", cx: x(i), cy: y(p.emotion), r: 4 });
    const title = document.createElementNS(ns, "title");
    title.textContent = `${p.at.slice(0, 19)} ${p.emotion}`;
    c.append(title);
  });
}

function drawContributions(shares) {
  const box = $("contributions");
  box.replaceChildren();
  for (const modality of ["text", "speech", "behaviour"]) {
    const share = Number(shares[modality] || 0);
    const row = el("div", "bar-row");
    const track = el("div", "track");
    const bar = el("div", "bar");
    bar.dataset.modality = modality;
    bar.dataset.share = share.toFixed(4);
    bar.style.width = `${(share * 100).toFixed(1)}%`;
    track.append(bar);
    row.append(el("span", "", modality), track, el("span", "muted", `${Math.round(share * 100)}%`));
    box.append(row);
  }
}

// A user's emotion and intent, the same wherever they are shown (docs/operators.md).
function labelsSpan(intent, emotion) {
  const span = el("span", "muted labels");
  setLabels(span, intent, emotion);
  return span;
}

function setLabels(node, intent, emotion) {
  const span = node.classList.contains("labels") ? node : node.querySelector(".labels");
  span.dataset.intent = intent || "";
  span.dataset.emotion = emotion || "";
  span.textContent = ` ${show(emotion)} · ${show(intent)}`;
}

// `answers`: for an assistant turn, the user turn it answers.
function addTurn(box, turn, answers) {
  const div = el("div", `turn ${turn.role}`);
  div.dataset.role = turn.role;
  if (turn.role === "user") div.dataset.turnId = turn.id;
  if (answers) div.dataset.answers = answers;
  const head = el("div", "who", `${turn.role} ${turn.at ? turn.at.slice(11, 19) : ""}`);
  if (turn.role === "user") head.append(labelsSpan(turn.intent, turn.emotion));
  div.append(head, el("div", "", turn.text));
  box.append(div);
  box.scrollTop = box.scrollHeight;
}

// The dialogue state in one line: the topic, how long the conversation has stayed on it, an
// open clarifying question and the details gathered.
function dialogueText(state) {
  if (!state) return `topic ${DASH}`;
  const parts = [state.topic
    ? `topic ${state.topic} (${show(state.topic_confidence)}, ${state.turns_on_topic} turn${state.turns_on_topic === 1 ? "" : "s"})`
    : `topic ${DASH}`];
  if (state.open_question) parts.push(`asked: ${state.open_question.choices.map((c) => c.suggestion).join(" / ")}`);
  const details = Object.entries(state.details || {});
  if (details.length) parts.push(`details: ${details.map(([k, v]) => `${k} ${v}`).join(", ")}`);
  return parts.join(" · ");
}

function showDialogue() {
  const line = $("watch-dialogue");
  line.textContent = dialogueText(dialogue);
  line.dataset.topic = (dialogue && dialogue.topic) || "";
}

// A live reply says how its message was read: a follow-up keeps the topic, a new request in
// scope sets it, a clarification leaves it and asks (the details are as of the last read).
function followReading(turn) {
  if (!turn.turn) return;
  const tag = el("span", "tag reading", turn.turn.replace("_", " "));
  tag.dataset.reading = turn.turn;
  const answer = $("watch-turns").querySelector(`.turn[data-answers="${CSS.escape(turn.id)}"] .who`);
  if (answer) answer.append(" ", tag);
  const state = dialogue || { topic: null, topic_confidence: null, turns_on_topic: 0, open_question: null, details: {} };
  if (turn.turn === "clarification") {
    dialogue = { ...state, open_question: { choices: (turn.suggestions || []).map((suggestion) => ({ suggestion })) } };
  } else if (turn.intent && turn.intent !== "out_of_scope") {
    const same = turn.intent === state.topic;
    dialogue = { ...state, open_question: null, topic: turn.intent, turns_on_topic: same ? state.turns_on_topic + 1 : 1, topic_confidence: same ? state.topic_confidence : null, details: same ? state.details : {} };
  } else {
    dialogue = { ...state, open_question: null };
  }
  showDialogue();
}

// Stored turns in order; each assistant turn answers the user turn before it.
function addTurns(box, turns) {
  let lastUser = null;
  for (const t of turns) {
    addTurn(box, t, t.role === "assistant" ? lastUser : undefined);
    if (t.role === "user") lastUser = t.id;
  }
}

async function openProfile(userId) {
  const { profile } = await ok("profile.get", { user_id: userId });
  $("profile").classList.remove("hidden");
  $("profile").dataset.userId = userId;
  $("profile-title").textContent = displayName(profile.user);
  $("profile-ids").textContent = `${profile.user.external_id} · ${profile.user.id} · ${profile.user.tenant}`;
  $("profile-emotion").textContent = show(profile.emotion);
  $("profile-intent").textContent = show(profile.intent);
  $("profile-counts").textContent = profile.profile
    ? `${profile.profile.turn_count} turns · ${profile.profile.event_count} events · ${profile.profile.model_version}`
    : "no profile yet";
  drawEmotionChart(profile.emotion_trend);
  drawContributions(profile.modality_contributions);
  $("top-intents").replaceChildren(...(profile.top_intents.length
    ? profile.top_intents.map((i) => el("li", "", `${i.label} × ${i.count}`))
    : [el("li", "muted", DASH)]));
  $("events").replaceChildren(...(profile.events.length
    ? profile.events.map((e) => el("li", "", `${e.at.slice(0, 19)} ${e.name} ${JSON.stringify(e.props)}`))
    : [el("li", "muted", DASH)]));
  const convs = $("conversations");
  convs.replaceChildren();
  for (const c of profile.conversations) {
    const box = el("div");
    box.append(el("div", "muted", `${c.channel} · ${c.status} · ${c.started_at.slice(0, 16)}`));
    box.append(el("div", "muted dialogue", dialogueText(c.dialogue_state)));
    addTurns(box, c.turns);
    convs.append(box);
  }
  $("neighbours").replaceChildren(...(profile.neighbours.length
    ? profile.neighbours.map((n) => {
      const li = el("li");
      const b = el("button", "secondary", who(n));
      b.addEventListener("click", () => openProfile(n.user_id));
      li.append(b, el("span", "muted", ` cos ${n.similarity.toFixed(3)}`));
      return li;
    })
    : [el("li", "muted", DASH)]));
}

// live sessions

async function refreshSessions() {
  const { sessions } = await ok("sessions.list");
  $("sessions").replaceChildren(...(sessions.length ? sessions.map((s) => {
    const li = el("li", s.connected ? "" : "offline");
    li.dataset.sessionId = s.session_id;
    li.dataset.connected = String(s.connected);
    const b = el("button", "secondary", who(s));
    b.dataset.sessionId = s.session_id;
    b.addEventListener("click", () => watch(s.session_id, s));
    const tags = el("span");
    if (!s.connected) tags.append(el("span", "tag disconnected", "disconnected"));
    if (s.waiting) tags.append(el("span", "tag waiting", "waiting"));
    tags.append(el("span", "tag", s.status === "operator" ? `with ${s.operator}` : "bot"));
    tags.append(labelsSpan(s.intent, s.emotion));
    li.append(b, tags);
    return li;
  }) : [el("li", "muted", "no live conversations")]));
  const watched = sessions.find((s) => s.session_id === watching);
  if (watched) setConnected(watched.connected);
}

function setConnected(connected) {
  $("watch-connection").classList.toggle("hidden", connected);
}

function setHeld(status, operator) {
  const mine = status === "operator" && me && operator === me.operator.name;
  $("watch-status").textContent = status === "operator" ? `with ${operator}` : status;
  $("watch-status").dataset.status = status;
  $("takeover").disabled = status !== "bot";
  $("release").disabled = !mine;
  $("reply-text").disabled = !mine;
  $("reply-send").disabled = !mine;
}

async function watch(sessionId, summary) {
  if (watching && watching !== sessionId) await call("session.unwatch", { session_id: watching });
  watching = null;
  // Watching starts before the server reads the history: keep what it pushes meanwhile.
  const pending = (opening = { sessionId, frames: [] });
  let answer;
  try {
    answer = await ok("session.watch", { session_id: sessionId });
  } finally {
    if (opening === pending) opening = null;
  }
  $("watch").classList.remove("hidden");
  $("watch").dataset.sessionId = sessionId;
  $("watch-title").textContent = who(summary);
  $("watch-turns").replaceChildren();
  addTurns($("watch-turns"), answer.turns);
  dialogue = answer.dialogue_state;
  showDialogue();
  setHeld(answer.status, answer.operator);
  setConnected(summary.connected);
  watching = sessionId;
  pending.frames.forEach(onLive);
}

$("login").addEventListener("submit", (e) => { e.preventDefault(); connect($("key").value.trim()); });
$("search").addEventListener("submit", (e) => { e.preventDefault(); search(false); });
$("more").addEventListener("click", () => search(true));
$("refresh-sessions").addEventListener("click", () => refreshSessions());
$("takeover").addEventListener("click", async () => {
  const answer = await ok("session.takeover", { session_id: watching });
  setHeld(answer.status, answer.operator);
  refreshSessions();
});
$("release").addEventListener("click", async () => {
  await ok("session.release", { session_id: watching });
  setHeld("bot", null);
  refreshSessions();
});
$("reply").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("reply-text").value.trim();
  if (!text) return;
  await ok("session.say", { session_id: watching, text });
  $("reply-text").value = "";
});
setInterval(() => { if (me && me.commands.includes("sessions.list") && ws.readyState === 1) refreshSessions(); }, 5000);
const saved = sessionStorage.getItem("operatorKey");
if (saved) connect(saved);
