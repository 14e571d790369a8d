// The report's page script. Data arrive as JSON in script tags of type application/json (escaped for
// that context by the builder) and reach the page only through textContent and DOM calls, never as
// markup: a prompt holding a closing script tag or an img with onerror shows as the text it is.
// (This file is inlined in a script element: it must never hold the characters that would end one.)
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const META = JSON.parse($("fj-meta").textContent);
  const INDEX = JSON.parse($("fj-index").textContent);  // per row: [correct, codes, swapDisagrees]
  const cache = new Map();
  let view = INDEX.map((_, i) => i);
  let page = 0;

  function h(tag, cls, ...kids) {
    const el = document.createElement(tag);
    if (cls) el.className = cls;
    for (const k of kids) {
      if (k === null || k === undefined || k === false) continue;
      el.append(k instanceof Node ? k : String(k));
    }
    return el;
  }

  // Rows sit in chunks: the first as plain JSON (the first screen renders at once), the rest gzipped and
  // base64-encoded, opened when a page needs them.
  // The packed chunks and their thumbnails follow this script in the file: wait until they are parsed.
  const parsed = new Promise((done) => {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", () => done());
    else done();
  });
  function plainChunk(k) {
    if (cache.has(k)) return cache.get(k);
    const el = $("fj-c" + k);
    if (el === null || el.tagName !== "SCRIPT") return null;  // packed chunks are hidden divs
    const rows = JSON.parse(el.textContent);
    cache.set(k, rows);
    return rows;
  }
  async function chunk(k) {
    const plain = plainChunk(k);
    if (plain) return plain;
    await parsed;
    const bytes = Uint8Array.from(atob($("fj-c" + k).textContent), (c) => c.charCodeAt(0));
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    const rows = JSON.parse(await new Response(stream).text());
    cache.set(k, rows);
    return rows;
  }

  function thumb(i, cls) {
    const img = h("img", cls);
    img.src = "data:" + META.mime + ";base64," + $("fj-i" + i).textContent;
    img.alt = "";
    return img;
  }

  function media(row, c) {
    const m = row.media[c];
    const box = h("figure", "cand" + (row.modality === "video" ? " strip" : ""));
    if (m.error !== null) box.append(h("div", "missing", "candidate not shown: " + m.error));
    for (const i of m.images) box.append(thumb(i, row.modality === "video" ? "frame" : "thumb"));
    const name = row.candidates[c];
    box.append(h("figcaption", null, "candidate " + (c + 1) + ": ", h("span", "path", name)));
    box.title = name;
    return box;
  }

  const who = (w) => (w === null || w === undefined ? "tie" : w === "tie" ? "tie" : "candidate " + w);

  function scoreBar(c, scoring) {
    const a = Number(c.score_1), b = Number(c.score_2);
    const bar = h("div", "bar");
    if (scoring === "rating") {
      const one = h("span", "s1"), two = h("span", "s2");
      one.style.width = (a * 5) + "%";
      two.style.width = (b * 5) + "%";
      bar.append(one, h("span", "gap"), two);
    } else {
      const total = a + b || 1;
      const one = h("span", "s1"), two = h("span", "s2");
      one.style.width = (100 * a / total) + "%";
      two.style.width = (100 * b / total) + "%";
      bar.append(one, two);
    }
    return h("div", "score", h("b", "n1", a), bar, h("b", "n2", b));
  }

  function flagged(findings, path, own) {
    return findings.filter((f) => f.path === path || (f.path.startsWith(path + ".") && own(f.path)));
  }
  function notes(list) {
    return list.length ? h("ul", "notes", ...list.map((f) =>
      h("li", "sev-" + f.severity, h("code", null, f.code), " " + f.path + ": " + f.message))) : null;
  }

  function judgmentTree(run, other) {
    const j = run.judgment;
    const findings = j.findings || [];
    const used = new Set();
    const take = (list) => { list.forEach((f) => used.add(f)); return list; };
    const dims = j.dimensions.map((d, i) => {
      const path = "dimensions[" + i + "]";
      const crit = d.criteria.map((c, k) => {
        const cp = path + ".criteria[" + k + "]";
        const fs = take(flagged(findings, cp, () => true));
        return h("li", "crit" + (fs.length ? " flag" : ""), h("div", "cname", c.name), scoreBar(c, j.scoring),
          h("div", "ev", h("span", "e1", c.evidence_1), h("span", "e2", c.evidence_2)), notes(fs));
      });
      const fs = take(flagged(findings, path, (p) => !p.startsWith(path + ".criteria[")));
      const otherDim = other && other.judgment ? other.judgment.dimensions.find((o) => o.name === d.name) : null;
      const differs = otherDim !== null && otherDim !== undefined && otherDim.winner !== d.winner;
      const t1 = d.criteria.reduce((s, c) => s + c.score_1, 0), t2 = d.criteria.reduce((s, c) => s + c.score_2, 0);
      const dim = h("details", "dim" + (fs.length ? " flag" : "") + (differs ? " disagree" : ""),
        h("summary", null, h("span", "dname", d.name), h("span", "origin", d.origin),
          h("span", "tot", t1 + " : " + t2), h("span", "win w" + d.winner, "winner: " + who(d.winner)),
          differs ? h("span", "badge swap", "other order differs") : null),
        h("p", "analysis", d.analysis), notes(fs), h("ol", "crits", ...crit));
      dim.open = fs.length > 0 || crit.some((c) => c.classList.contains("flag"));  // findings shown unasked
      return dim;
    });
    const vf = take(flagged(findings, "verdict", () => true));
    const rest = findings.filter((f) => !used.has(f));
    const verdict = h("div", "verdict" + (vf.length ? " flag" : ""),
      h("b", "win w" + j.verdict.winner, "overall: " + who(j.verdict.winner)), " ", j.verdict.analysis, notes(vf));
    return h("div", "tree", notes(rest), ...dims, verdict);
  }

  function runBlock(name, run, other) {
    const head = h("div", "runhead", h("b", null, name),
      " shown first: candidate " + run.order[0], " · " + run.status,
      run.status === "ok" ? " · winner: " + who(run.winner) : null,
      run.confidence !== null ? " · confidence " + Number(run.confidence).toFixed(3) : null,
      ...run.findings.map((c) => h("code", "code", c)));
    const body = run.status === "ok" && run.judgment ? judgmentTree(run, other) : h("pre", "err", run.error || "");
    return h("div", "run " + name, head, body);
  }

  function card(row) {
    const correct = row.correct === null ? "failed" : row.correct ? "correct" : "wrong";
    const badges = h("div", "badges", h("span", "badge " + correct, correct),
      h("span", "badge", "label: " + who(row.label)),
      row.consistent === false ? h("span", "badge swap", "swap disagrees") : null,
      row.consistent === true ? h("span", "badge", "swap agrees") : null);
    const el = h("article", "card " + correct, h("header", null, h("code", "rid", row.id), badges),
      h("p", "prompt", row.prompt), h("div", "pair", media(row, 0), media(row, 1)),
      runBlock("primary", row.primary, row.swapped));
    if (row.swapped) {
      el.append(h("details", "swapped", h("summary", null, "swapped run"),
        runBlock("swapped", row.swapped, row.primary)));
    }
    const labels = Object.entries(row.dimension_labels);
    if (labels.length) el.append(h("p", "dl", "dimension labels: " + labels.map(([k, v]) => k + " → " + who(v)).join("; ")));
    return el;
  }

  function render() {
    const size = META.pageSize;
    const pages = Math.max(1, Math.ceil(view.length / size));
    page = Math.min(page, pages - 1);
    const ids = view.slice(page * size, (page + 1) * size);
    const needed = [...new Set(ids.map((i) => Math.floor(i / META.chunkSize)))];
    const show = () => {
      const cards = ids.map((i) => card(cache.get(Math.floor(i / META.chunkSize))[i % META.chunkSize]));
      $("cards").replaceChildren(...cards);
      $("pageinfo").textContent = "page " + (page + 1) + " of " + pages + " · " + view.length + " of " + INDEX.length + " judgments";
      $("prev").disabled = page === 0;
      $("next").disabled = page >= pages - 1;
      document.body.dataset.page = String(page + 1);
      document.body.dataset.ready = "1";
    };
    if (needed.every((k) => plainChunk(k) !== null)) show();
    else Promise.all(needed.map(chunk)).then(show);
  }

  function applyFilters(keepPage) {
    const want = $("f-correct").value, code = $("f-code").value, swap = $("f-swap").checked;
    view = [];
    INDEX.forEach(([correct, codes, disagrees], i) => {
      if (want === "correct" && correct !== 1) return;
      if (want === "wrong" && correct !== 0) return;
      if (want === "failed" && correct !== null) return;
      if (code === "__none" && codes.length) return;
      if (code === "__any" && !codes.length) return;
      if (code && !code.startsWith("__") && !codes.includes(code)) return;
      if (swap && disagrees !== 1) return;
      view.push(i);
    });
    if (!keepPage) page = 0;
    render();
  }

  const codeSel = $("f-code");
  for (const [code, count] of Object.entries(META.codes)) {
    const opt = h("option", null, code + " (" + count + ")");
    opt.value = code;
    codeSel.append(opt);
  }
  for (const id of ["f-correct", "f-code", "f-swap"]) $(id).addEventListener("change", () => applyFilters(false));
  $("prev").addEventListener("click", () => { page -= 1; render(); window.scrollTo(0, $("judgments").offsetTop); });
  $("next").addEventListener("click", () => { page += 1; render(); window.scrollTo(0, $("judgments").offsetTop); });
  // A view can be linked: #f-correct=wrong&f-code=split_sum&f-swap=1&page=2 opens it filtered.
  const asked = new URLSearchParams(location.hash.slice(1));
  for (const id of ["f-correct", "f-code"]) if (asked.has(id)) $(id).value = asked.get(id);
  $("f-swap").checked = asked.get("f-swap") === "1";
  page = Math.max(0, (parseInt(asked.get("page") || "1", 10) || 1) - 1);
  applyFilters(true);
})();
