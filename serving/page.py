"""`GET /`: one small page (no build step, no external files) where a person types a user's segment values and
history and sees what the tower read and what it recommends, with titles.

The page calls the service's own POST /recommend with `"show_history": true`. It also reads its form from the
URL (`/?history=p1,p2&segments=region=Europe&k=5`) and submits it on load, so a link shows a user's page and a
headless browser can check it with nothing but `chromium --headless --dump-dom URL` (tests/test_serving_page.py).
Titles are written with `textContent`, never as HTML, so a product name cannot inject markup into the page.
"""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>fedadapt serve</title>
<style>
 body { font-family: sans-serif; margin: 2em; max-width: 60em; }
 label { display: block; margin-top: .6em; }
 input, textarea { width: 100%; font-family: monospace; }
 table { border-collapse: collapse; margin-top: .6em; }
 td, th { border-bottom: 1px solid #ccc; padding: .2em .8em; text-align: left; }
 #error { color: #a00; }
</style>
</head>
<body>
<h1>fedadapt serve</h1>
<form id="query">
 <label>Segments (key=value, comma-separated) <input id="segments" name="segments" placeholder="region=Europe"></label>
 <label>History (item ids, oldest first, comma-separated)
  <textarea id="history" name="history" rows="3"></textarea></label>
 <label>k <input id="k" name="k" type="number" min="1" max="1000" value="10"></label>
 <button type="submit">Recommend</button>
</form>
<p id="error"></p>
<p id="banks"></p>
<h2>History the model read</h2>
<table id="history-table"><thead><tr><th>id</th><th>title</th></tr></thead><tbody></tbody></table>
<h2>Recommendations</h2>
<table id="recommendations"><thead><tr><th>#</th><th>id</th><th>title</th><th>score</th></tr></thead><tbody></tbody>
</table>
<script>
"use strict";
function cells(row, values) {
  for (const v of values) { const td = document.createElement("td"); td.textContent = String(v); row.appendChild(td); }
}
function fill(id, rows) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  for (const values of rows) { const tr = document.createElement("tr"); cells(tr, values); body.appendChild(tr); }
}
function split(text) { return text.split(",").map(s => s.trim()).filter(s => s.length > 0); }
async function recommend() {
  const segments = {};
  for (const pair of split(document.getElementById("segments").value)) {
    const at = pair.indexOf("=");
    if (at > 0) { segments[pair.slice(0, at).trim()] = pair.slice(at + 1).trim(); }
  }
  const body = {segments: segments, history: split(document.getElementById("history").value),
                k: Number(document.getElementById("k").value), show_history: true};
  document.getElementById("error").textContent = "";
  const reply = await fetch("/recommend", {method: "POST", headers: {"content-type": "application/json"},
                                           body: JSON.stringify(body)});
  const data = await reply.json();
  if (!reply.ok) { document.getElementById("error").textContent = "refused: " + data.detail; return; }
  const fallbacks = Object.entries(data.fallbacks).map(([b, why]) => b + ": " + why).join("; ");
  document.getElementById("banks").textContent = "round " + data.round + ", banks " + data.banks.join(", ") +
    (fallbacks ? " (" + fallbacks + ")" : "");
  fill("history-table", data.history.map(i => [i.id, i.title]));
  fill("recommendations", data.items.map((i, n) => [n + 1, i.id, i.title, i.score.toFixed(3)]));
  document.body.dataset.done = "yes";
}
document.getElementById("query").addEventListener("submit", e => { e.preventDefault(); recommend(); });
const params = new URLSearchParams(window.location.search);
for (const name of ["segments", "history", "k"]) {
  if (params.has(name)) { document.getElementById(name).value = params.get(name); }
}
if (params.has("history") || params.has("segments")) { recommend(); }
</script>
</body>
</html>
"""
