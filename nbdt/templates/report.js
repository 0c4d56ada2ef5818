/* nbdt evaluation report: tables, embedded SVG plots and the tree coloured by node accuracy.
   All data arrives as JSON in #nbdt-data; text is only ever set with textContent. */
(function () {
  "use strict";

  const data = JSON.parse(document.getElementById("nbdt-data").textContent);
  const tree = data.tree;
  const N = tree.label.length;
  const names = tree.display || tree.label; // the display names every output shows

  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(v, digits) {
    if (v === null || v === undefined) return "–";
    if (Array.isArray(v)) return v.map((x) => fmt(x, digits)).join(" / ");
    return Number(v).toFixed(digits === undefined ? 2 : digits);
  }
  function row(cells, header) {
    const tr = el("tr");
    cells.forEach((c) => tr.appendChild(el(header ? "th" : "td", "", c)));
    return tr;
  }

  // ------------------------------------------------------------------- summary
  /* A row per variant; where that is wider than its card (a phone), a column per variant
     instead, so that no column is cut off. */
  const summary = document.getElementById("summary");
  function drawSummary() {
    const rows = data.summary.rows.map((r) => [r.name, ...r.cells.map((c) => fmt(c))]);
    summary.className = "grid";
    summary.replaceChildren(row(["variant", ...data.summary.columns], true), ...rows.map((r) => row(r)));
    if (summary.parentElement.scrollWidth <= summary.parentElement.clientWidth) return;
    summary.className = "grid by-variant";
    summary.replaceChildren(
      row(["", ...rows.map((r) => r[0])], true),
      ...data.summary.columns.map((c, j) => row([c, ...rows.map((r) => r[j + 1])]))
    );
  }
  drawSummary();
  window.addEventListener("resize", drawSummary);
  const a = data.summary.agreement;
  document.getElementById("agreement").textContent =
    `Agreement of top-1 predictions: network–soft ${fmt(a.network_soft, 1)}%, ` +
    `network–hard ${fmt(a.network_hard, 1)}%, soft–hard ${fmt(a.soft_hard, 1)}%.`;

  // -------------------------------------------------------------------- unseen
  if (data.unseen) {
    document.getElementById("unseen-card").hidden = false;
    const table = document.getElementById("unseen");
    table.appendChild(row(["held-out class", "images", "target node", "nearest seen classes", "NBDT %", "network %"], true));
    for (const c of data.unseen.classes) {
      table.appendChild(row([c.name, String(c.images), c.target.label, c.target.relatives.join(", "), fmt(c.nbdt, 1), fmt(c.network, 1)]));
    }
    const o = data.unseen.overall;
    table.appendChild(row(["all held-out images", String(o.images), "", "", fmt(o.nbdt, 1), fmt(o.network, 1)]));
  }

  // --------------------------------------------------------------------- plots
  const plots = document.getElementById("plots");
  for (const p of data.plots) {
    const figure = el("figure");
    figure.appendChild(el("figcaption", "", p.title));
    const img = el("img");
    img.alt = p.title;
    img.src = p.src;
    figure.appendChild(img);
    plots.appendChild(figure);
  }

  // ---------------------------------------------------------------------- tree
  const kids = Array.from({ length: N }, () => []);
  const depth = new Int32Array(N);
  for (let i = 1; i < N; i++) {
    kids[tree.parent[i]].push(i);
    depth[i] = depth[tree.parent[i]] + 1;
  }
  function colour(acc) {
    if (acc === null) return "#b9c0ca";
    return `hsl(${Math.round(1.2 * acc)}, 70%, 45%)`;
  }
  const rows = new Array(N);
  const items = new Array(N);
  let selected = -1;

  function build(i) {
    const li = el("li");
    li.setAttribute("role", "treeitem");
    const button = el("button", "row");
    button.type = "button";
    button.setAttribute("data-index", String(i));
    button.setAttribute("data-id", tree.id[i]);
    button.appendChild(el("span", "twist", ""));
    const swatch = el("span", "swatch");
    swatch.style.background = colour(tree.accuracy[i]);
    button.appendChild(swatch);
    button.appendChild(el("span", "label", names[i]));
    button.appendChild(el("span", "acc", `${fmt(tree.accuracy[i], 1)}% of ${tree.samples[i]}`));
    li.appendChild(button);
    rows[i] = button;
    items[i] = li;
    if (kids[i].length) {
      const ul = el("ul");
      ul.setAttribute("role", "group");
      for (const c of kids[i]) ul.appendChild(build(c));
      li.appendChild(ul);
      if (depth[i] >= 3) li.classList.add("closed");
    }
    setTwist(i);
    return li;
  }
  /* The mark says what a click does: ▸ a closed node opens, ▾ an open one closes. */
  function setTwist(i) {
    if (!kids[i].length) return;
    const closed = items[i].classList.contains("closed");
    rows[i].querySelector(".twist").textContent = closed ? "▸" : "▾";
    rows[i].setAttribute("aria-expanded", String(!closed));
  }
  function toggle(i) {
    items[i].classList.toggle("closed");
    setTwist(i);
  }
  const root = document.getElementById("tree");
  root.appendChild(build(0));

  function show(i) {
    if (selected >= 0) rows[selected].classList.remove("selected");
    selected = i;
    rows[i].classList.add("selected");
    const detail = document.getElementById("detail");
    const parts = [el("h3", "", names[i])];
    parts.push(el("p", "note", `${fmt(tree.accuracy[i], 1)}% right of ${tree.samples[i]} images under it`));
    if (tree.confusion[i]) {
      const [reached, right] = tree.reached[i];
      parts.push(el("p", "note", `hard inference reaches it with ${reached} of them; ${right} continue to the right child`));
      const childNames = kids[i].map((c) => names[c]);
      const table = el("table", "grid confusion");
      table.appendChild(row(["true \\ chosen", ...childNames], true));
      tree.confusion[i].forEach((counts, r) => {
        const tr = row([childNames[r], ...counts.map(String)]);
        tr.children[r + 1].classList.add("diag");
        table.appendChild(tr);
      });
      const scroll = el("div", "scroll");
      scroll.appendChild(table);
      parts.push(scroll);
    }
    detail.replaceChildren(...parts);
    // Above the tree in a narrow window: brought into view when the click was further down.
    if (detail.getBoundingClientRect().top < 0) detail.scrollIntoView({ block: "start" });
  }

  root.addEventListener("click", (e) => {
    const button = e.target.closest && e.target.closest("button.row");
    if (!button) return;
    const i = Number(button.getAttribute("data-index"));
    if (kids[i].length && e.target.classList.contains("twist")) {
      toggle(i);
      return;
    }
    if (kids[i].length && i === selected) toggle(i);
    show(i);
  });

  document.documentElement.setAttribute("data-ready", "1");
})();
