// rnnkit playground: plain JavaScript against rnnkit's own API (no library, nothing fetched elsewhere).
"use strict";

const $ = (id) => document.getElementById(id);
let RUNS = [];

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)};
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({error: `${response.status} ${response.statusText}`}));
  if (!response.ok) throw new Error(data.error || `${response.status} ${response.statusText}`);
  return data;
}

function setStatus(panel, message, isError = false) {
  const status = $(`${panel}-status`);
  status.textContent = message;
  status.classList.toggle("error", isError);
}

const fmt = (x, digits = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(digits));
const shown = (c) => (c === "\n" ? "⏎" : c === " " ? "␣" : c);

// ---- colours -------------------------------------------------------------------------------------
function mix(a, b, t) { return a.map((v, i) => Math.round(v + (b[i] - v) * t)); }
function surprisalColour(bits, max = 8) {
  const stops = [[255, 255, 255], [253, 224, 197], [245, 158, 114], [217, 65, 43]];
  const t = Math.min(Math.max(bits / max, 0), 1) * (stops.length - 1);
  const i = Math.min(Math.floor(t), stops.length - 2);
  return `rgb(${mix(stops[i], stops[i + 1], t - i).join(",")})`;
}
function divergingColour(v) {  // v in [-1, 1]
  const t = Math.min(Math.max(v, -1), 1);
  const c = t < 0 ? mix([255, 255, 255], [43, 108, 176], -t) : mix([255, 255, 255], [192, 57, 43], t);
  return `rgb(${c.join(",")})`;
}

// ---- character views with a selection (hover, or arrow keys on the focused view) -----------------
function characterView(panel, describe) {
  const output = $(`${panel}-output`), detail = $(`${panel}-detail`);
  let selected = -1;
  function select(i) {
    const spans = output.children;
    if (selected >= 0 && spans[selected]) spans[selected].classList.remove("selected");
    selected = i;
    if (i < 0 || !spans[i]) { detail.textContent = ""; return; }
    spans[i].classList.add("selected");
    detail.textContent = describe(i);
  }
  output.addEventListener("mouseover", (e) => {
    if (e.target.parentNode === output) select(Array.prototype.indexOf.call(output.children, e.target));
  });
  output.addEventListener("keydown", (e) => {
    const last = output.children.length - 1;
    if (last < 0) return;
    if (e.key === "ArrowRight") select(Math.min(selected + 1, last));
    else if (e.key === "ArrowLeft") select(Math.max(selected - 1, 0));
    else if (e.key === "Home") select(0);
    else if (e.key === "End") select(last);
    else return;
    e.preventDefault();
  });
  return {
    clear() { output.replaceChildren(); select(-1); },
    add(char, colour, className) {
      const span = document.createElement("span");
      span.textContent = char;
      if (colour) span.style.backgroundColor = colour;
      if (className) span.className = className;
      output.appendChild(span);
      return span;
    },
    select,
  };
}

function alternatives(top) {
  return top ? top.map(([c, p]) => `${shown(c)} ${fmt(p * 100, 1)}%`).join("   ") : "";
}

// ---- runs ----------------------------------------------------------------------------------------
async function loadRuns() {
  try {
    RUNS = await api("/api/runs");
  } catch (e) {
    $("runs-summary").textContent = `Cannot read the served runs: ${e.message}`;
    return;
  }
  $("runs-summary").textContent = RUNS.map((r) =>
    `${r.name}: ${r.model} ${r.layers}×${r.hidden}, ${r.parameters.toLocaleString()} parameters, ` +
    `val ppl ${fmt(r.val_ppl, 2)} (${fmt(r.val_bpc, 3)} bits/char), ${r.checkpoint} checkpoint`).join(" · ");
  document.querySelectorAll(".run-select").forEach((select, index) => {
    select.replaceChildren(...RUNS.map((r) => new Option(r.name, r.name)));
    if (select.id === "compare-b" && RUNS.length > 1) select.selectedIndex = 1;
  });
  fillLayers();
}

function runInfo(name) { return RUNS.find((r) => r.name === name); }

// ---- panel 1: streamed generation ----------------------------------------------------------------
let generation = null;
const genView = characterView("gen", (i) => {
  const e = genEvents[i];
  return e ? `'${shown(e.char)}' p=${fmt(e.p * 100, 1)}%   best: ${alternatives(e.top)}` : "prompt";
});
let genEvents = [];

function sliderOutputs() {
  for (const [id, render] of [["gen-temperature", (v) => Number(v).toFixed(2)],
                              ["gen-top-k", (v) => (Number(v) === 0 ? "off" : v)],
                              ["gen-top-p", (v) => Number(v).toFixed(2)],
                              ["gen-alpha", (v) => Number(v).toFixed(2)]]) {
    const input = $(id), out = $(`${id}-value`);
    const update = () => { out.textContent = render(input.value); };
    input.addEventListener("input", update);
    update();
  }
}

function parseEvents(buffer, onEvent) {
  // server-sent events: blocks separated by a blank line, fields "event:" and "data:"
  const blocks = buffer.split("\n\n");
  const rest = blocks.pop();
  for (const block of blocks) {
    let event = "message", data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data += line.slice(5).replace(/^ /, "");
    }
    if (data) onEvent(event, JSON.parse(data));
  }
  return rest;
}

async function startGeneration() {
  stopGeneration();
  const params = new URLSearchParams({
    run: $("gen-run").value, prefix: $("gen-prefix").value, n: $("gen-n").value || "300",
    temperature: $("gen-temperature").value, top_k: $("gen-top-k").value, top_p: $("gen-top-p").value,
    alpha: $("gen-alpha").value, greedy: $("gen-greedy").checked ? "true" : "false"});
  if ($("gen-seed").value !== "") params.set("seed", $("gen-seed").value);
  const controller = new AbortController();
  generation = controller;
  genView.clear();
  genEvents = [];
  $("gen-start").disabled = true;
  $("gen-stop").disabled = false;
  setStatus("gen", "Generating…");
  let count = 0;
  try {
    const response = await fetch(`/api/generate?${params}`, {signal: controller.signal});
    if (!response.ok) {
      const data = await response.json().catch(() => ({}));
      throw new Error(data.error || `${response.status} ${response.statusText}`);
    }
    const reader = response.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer = parseEvents(buffer + decoder.decode(value, {stream: true}), (event, data) => {
        if (event === "start") {
          for (const c of data.prefix) { genEvents.push(null); genView.add(c, null, "prefix"); }
        } else if (event === "message") {
          genEvents.push(data);
          genView.add(data.char, surprisalColour(-Math.log2(Math.max(data.p, 1e-12)), 10));
          count += 1;
        } else if (event === "done") {
          setStatus("gen", `${data.chars} characters in ${fmt(data.seconds, 2)} s`);
        } else if (event === "error") {
          throw new Error(data.error);
        }
      });
    }
  } catch (e) {
    if (e.name === "AbortError") setStatus("gen", `Stopped after ${count} characters`);
    else setStatus("gen", e.message, true);
  } finally {
    if (generation === controller) generation = null;
    $("gen-start").disabled = false;
    $("gen-stop").disabled = true;
  }
}

function stopGeneration() { if (generation) generation.abort(); }

// ---- panel 2: surprisal heatmap ------------------------------------------------------------------
let scored = null;
const scoreView = characterView("score", (i) => {
  const c = scored && scored.chars[i];
  if (!c) return "";
  if (c.bits === null) return `'${shown(c.char)}' first character: nothing before it to predict from`;
  return `'${shown(c.char)}' ${fmt(c.bits, 2)} bits, rank ${c.rank}   best: ${alternatives(c.top)}`;
});

async function scoreText() {
  setStatus("score", "Scoring…");
  try {
    scored = await api("/api/score", {run: $("score-run").value, text: $("score-text").value});
  } catch (e) { setStatus("score", e.message, true); return; }
  scoreView.clear();
  for (const c of scored.chars) scoreView.add(c.char, c.bits === null ? null : surprisalColour(c.bits));
  setStatus("score", `${scored.tokens} predicted characters: ${fmt(scored.bpc, 4)} bits/char, ` +
    `perplexity ${fmt(scored.ppl, 3)}` + (scored.unknown.length ? ` (read as unknown: ${scored.unknown.join("")})` : ""));
}

// ---- panel 3: hidden units -----------------------------------------------------------------------
let acts = null, unitOrder = [];
const unitsView = characterView("units", (i) => {
  if (!acts) return "";
  const unit = Number($("units-unit").value), states = $("units-state").value === "c" && acts.c ? acts.c : acts.h;
  return `'${shown(acts.chars[i])}' unit ${unit}: ${fmt(states[i][unit], 4)}`;
});

function fillLayers() {
  const info = runInfo($("units-run").value);
  const layers = info ? (info.model === "scratch" ? 1 : info.layers) : 1;
  $("units-layer").replaceChildren(...Array.from({length: layers}, (_, i) => new Option(`${i}`, `${i}`)));
  $("units-layer").value = `${layers - 1}`;
  $("units-state").disabled = !info || info.model !== "lstm";
  if ($("units-state").disabled) $("units-state").value = "h";
}

function patternMask(text, source) {
  // 1 for characters inside a match of the user's pattern, else 0 (null if the pattern is empty)
  if (!source) return null;
  const mask = new Array(text.length).fill(0);
  const re = new RegExp(source, "g");
  let m;
  while ((m = re.exec(text)) !== null) {
    for (let i = m.index; i < m.index + m[0].length; i++) mask[i] = 1;
    if (m[0].length === 0) re.lastIndex += 1;
  }
  return mask.some((v) => v) && mask.some((v) => !v) ? mask : null;
}

function correlation(xs, ys) {
  const n = xs.length;
  let mx = 0, my = 0;
  for (let i = 0; i < n; i++) { mx += xs[i]; my += ys[i]; }
  mx /= n; my /= n;
  let sxy = 0, sxx = 0, syy = 0;
  for (let i = 0; i < n; i++) {
    const dx = xs[i] - mx, dy = ys[i] - my;
    sxy += dx * dy; sxx += dx * dx; syy += dy * dy;
  }
  return sxx > 0 && syy > 0 ? sxy / Math.sqrt(sxx * syy) : 0;
}

async function readUnits() {
  setStatus("units", "Reading hidden units…");
  const text = $("units-text").value;
  let mask;
  try {
    acts = await api("/api/activations", {run: $("units-run").value, text, layer: Number($("units-layer").value)});
    mask = patternMask(acts.text, $("units-pattern").value);
  } catch (e) { setStatus("units", e.message, true); return; }
  const states = $("units-state").value === "c" && acts.c ? acts.c : acts.h;
  const columns = Array.from({length: acts.units}, (_, u) => states.map((row) => row[u]));
  let label;
  if (mask) {
    const r = columns.map((col) => correlation(col, mask));
    unitOrder = r.map((v, u) => [u, v]).sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]));
    label = ([u, v]) => `unit ${u} (r = ${fmt(v, 2)} with the pattern)`;
  } else {
    unitOrder = acts.stats.map((s) => [s.unit, s.std]).sort((a, b) => b[1] - a[1]);
    label = ([u, v]) => `unit ${u} (std ${fmt(v, 3)})`;
  }
  $("units-unit").replaceChildren(...unitOrder.map((entry) => new Option(label(entry), `${entry[0]}`)));
  colourUnits();
  setStatus("units", `${acts.units} units of layer ${acts.layer} over ${acts.chars.length} characters; ` +
    (mask ? "ranked by |correlation| with the marked pattern" : "ranked by standard deviation (mark a pattern to rank by it)"));
}

function colourUnits() {
  if (!acts) return;
  const unit = Number($("units-unit").value);
  const states = $("units-state").value === "c" && acts.c ? acts.c : acts.h;
  let scale = 1;
  if ($("units-state").value === "c") scale = Math.max(1e-6, ...states.map((row) => Math.abs(row[unit])));
  unitsView.clear();
  acts.chars.forEach((c, i) => unitsView.add(c, divergingColour(states[i][unit] / scale)));
}

// ---- panel 4: two runs on the same text ----------------------------------------------------------
let compared = null;
const compareView = characterView("compare", (i) => {
  if (!compared) return "";
  const [a, b] = compared, ca = a.chars[i], cb = b.chars[i];
  if (ca.bits === null) return `'${shown(ca.char)}' first character`;
  return `'${shown(ca.char)}' ${a.run}: ${fmt(ca.bits, 2)} bits · ${b.run}: ${fmt(cb.bits, 2)} bits · ` +
    `difference ${fmt(cb.bits - ca.bits, 2)}`;
});

async function compareRuns() {
  setStatus("compare", "Scoring with both runs…");
  const text = $("compare-text").value;
  try {
    compared = await Promise.all([api("/api/score", {run: $("compare-a").value, text}),
                                  api("/api/score", {run: $("compare-b").value, text})]);
  } catch (e) { setStatus("compare", e.message, true); return; }
  const [a, b] = compared;
  if (a.chars.length !== b.chars.length) {
    setStatus("compare", "The two runs read this text differently (their preprocessing differs): not comparable", true);
    compared = null;
    return;
  }
  compareView.clear();
  a.chars.forEach((ca, i) => {
    const cb = b.chars[i];
    compareView.add(ca.char, ca.bits === null ? null : divergingColour((cb.bits - ca.bits) / 4));
  });
  setStatus("compare", `${a.run}: ${fmt(a.bpc, 4)} bits/char · ${b.run}: ${fmt(b.bpc, 4)} bits/char · ` +
    `difference ${fmt(b.bpc - a.bpc, 4)}`);
}

// ---- tabs (arrow keys move between them) ---------------------------------------------------------
function setUpTabs() {
  const tabs = Array.from(document.querySelectorAll('[role="tab"]'));
  function show(tab) {
    for (const t of tabs) {
      const on = t === tab;
      t.setAttribute("aria-selected", on ? "true" : "false");
      t.tabIndex = on ? 0 : -1;
      $(t.getAttribute("aria-controls")).hidden = !on;
    }
    tab.focus();
  }
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", () => show(tab));
    tab.addEventListener("keydown", (e) => {
      if (e.key === "ArrowRight") show(tabs[(i + 1) % tabs.length]);
      else if (e.key === "ArrowLeft") show(tabs[(i - 1 + tabs.length) % tabs.length]);
      else return;
      e.preventDefault();
    });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  setUpTabs();
  sliderOutputs();
  $("gen-start").addEventListener("click", startGeneration);
  $("gen-stop").addEventListener("click", stopGeneration);
  $("gen-prefix").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); startGeneration(); }
  });
  $("score-start").addEventListener("click", scoreText);
  $("units-start").addEventListener("click", readUnits);
  $("units-run").addEventListener("change", fillLayers);
  $("units-unit").addEventListener("change", colourUnits);
  $("units-state").addEventListener("change", () => { if (acts) readUnits(); });
  $("compare-start").addEventListener("click", compareRuns);
  loadRuns();
});
