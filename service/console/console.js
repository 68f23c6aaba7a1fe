// The console talks to the same REST routes as any client; the API key stays in this browser (localStorage).
"use strict";
const $ = (id) => document.getElementById(id);
const state = { key: localStorage.getItem("larimar-key") || "", memory: null, offset: 0, limit: 20, total: 0 };

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.key) headers["Authorization"] = `Bearer ${state.key}`;
  const r = await fetch(`/v1${path}`, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const data = r.headers.get("content-type")?.includes("json") ? await r.json() : null;
  if (!r.ok) throw new Error(`${r.status}: ${data?.detail ?? r.statusText}`);
  return data;
}

function say(text, ok = false) { $("status").textContent = text; $("status").className = ok ? "ok" : ""; }

async function guard(fn) {
  try { await fn(); } catch (e) { say(e.message); }
}

async function loadMemories() {
  const { memories } = await api("GET", "/memories");
  const list = $("memories");
  list.replaceChildren(...memories.map((m) => {
    const li = document.createElement("li");
    const b = document.createElement("button");
    b.textContent = `${m.name} (${m.facts})`;
    b.dataset.memory = m.name;
    if (m.name === state.memory) b.className = "current";
    b.onclick = () => guard(() => openMemory(m.name));
    li.append(b);
    return li;
  }));
  say(`${memories.length} memories`, true);
}

async function openMemory(name) {
  state.memory = name; state.offset = 0;
  $("memory-name").textContent = name;
  await loadFacts();
  await loadMemories().catch(() => {});
}

function row(f) {
  const tr = document.createElement("tr");
  tr.dataset.id = f.id;
  const text = document.createElement("td"); text.textContent = f.text; text.className = "fact-text";
  const created = document.createElement("td"); created.textContent = f.created_at.replace("T", " ").slice(0, 19);
  const sim = document.createElement("td"); sim.textContent = f.similarity != null ? f.similarity.toFixed(3) : "";
  const act = document.createElement("td");
  const forget = document.createElement("button");
  forget.textContent = "Forget"; forget.className = "forget";
  forget.onclick = () => guard(async () => {
    await api("DELETE", `/memories/${state.memory}/facts/${f.id}`);
    say("forgotten", true);
    await loadFacts();
  });
  act.append(forget);
  tr.append(text, created, sim, act);
  return tr;
}

async function loadFacts(q = $("search-text").value.trim()) {
  if (!state.memory) return;
  const params = new URLSearchParams({ limit: state.limit, offset: state.offset });
  if (q) params.set("q", q);
  let page;
  try {
    page = await api("GET", `/memories/${state.memory}/facts?${params}`);
  } catch (e) {
    if (e.message.startsWith("404")) page = { facts: [], total: 0 };  // a memory is created by its first write
    else throw e;
  }
  state.total = page.total;
  $("facts").replaceChildren(...page.facts.map(row));
  $("fact-count").textContent = `(${page.total} ${q ? "found" : "facts"})`;
  const last = Math.min(state.offset + state.limit, page.total);
  $("page").textContent = page.total ? `${state.offset + 1}-${last} of ${page.total}` : "";
  $("prev").disabled = q !== "" || state.offset === 0;
  $("next").disabled = q !== "" || last >= page.total;
}

$("key-form").onsubmit = (e) => {
  e.preventDefault();
  state.key = $("api-key").value.trim();
  localStorage.setItem("larimar-key", state.key);
  guard(loadMemories);
};
$("new-memory").onsubmit = (e) => { e.preventDefault(); guard(() => openMemory($("new-memory-name").value.trim())); };
$("add-fact").onsubmit = (e) => {
  e.preventDefault();
  guard(async () => {
    if (!state.memory) throw new Error("open a memory first");
    const f = await api("POST", `/memories/${state.memory}/facts`, { text: $("fact-text").value });
    $("fact-text").value = "";
    const conflicts = f.conflicts?.length ? ` (it may contradict: ${f.conflicts.map((c) => c.text).join("; ")})` : "";
    say(`written${conflicts}`, true);
    await loadFacts(""); await loadMemories();
  });
};
$("search").onsubmit = (e) => { e.preventDefault(); state.offset = 0; guard(() => loadFacts()); };
$("prev").onclick = () => guard(() => { state.offset = Math.max(0, state.offset - state.limit); return loadFacts(); });
$("next").onclick = () => guard(() => { state.offset += state.limit; return loadFacts(); });
$("ask").onsubmit = (e) => {
  e.preventDefault();
  guard(async () => {
    if (!state.memory) throw new Error("open a memory first");
    say("asking...", true);
    const r = await api("POST", `/memories/${state.memory}/query`, { prompt: $("prompt").value, memory_mode: $("mode").value });
    $("answer").textContent = r.answer;
    $("in-scope").textContent = r.in_scope ? "yes" : "no";
    $("decoder").textContent = r.decoder;
    $("used").replaceChildren(...r.facts.map((f) => {
      const li = document.createElement("li"); li.textContent = `${f.text} (${f.similarity.toFixed(3)})`; return li;
    }));
    $("timings").textContent = Object.entries(r.timings_ms).map(([k, v]) => `${k} ${v.toFixed(1)}`).join(", ");
    $("answer-box").hidden = false;
    say("answered", true);
  });
};

$("api-key").value = state.key;
guard(loadMemories);
