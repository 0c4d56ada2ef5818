/* nbdt hierarchy page: a collapsible left-to-right tree in SVG with search, zoom and pan.
   The tree arrives as JSON columns in #nbdt-data; labels are only ever set with textContent. */
(function () {
  "use strict";

  const data = JSON.parse(document.getElementById("nbdt-data").textContent);
  const svg = document.getElementById("tree");
  const SVG_NS = svg.namespaceURI;
  const viewport = document.getElementById("viewport");
  const nodeLayer = document.getElementById("nodes");
  const edgeLayer = document.getElementById("edges");
  const tip = document.getElementById("tip");
  const searchBox = document.getElementById("search");
  const matchesOut = document.getElementById("matches");

  const ROW = 24; // vertical distance between rows, px
  const GAP = 48; // room for edges between a column's widest label and the next column
  const RADIUS = 4.5;
  const TEXT_X = 10; // label starts this far right of the node's centre
  const MAX_LABEL = 42; // longer labels are cut with an ellipsis (the tooltip shows them whole)
  const OPEN_ROWS = 40; // a big tree opens with as many levels as fit about this many rows
  const MIN_FIT = 0.85; // "fit" never shrinks text below this scale
  const MARGIN = 24; // px kept free around the tree when it is fitted to the window

  const N = data.label.length;
  const kids = Array.from({ length: N }, () => []);
  const depth = new Int32Array(N);
  for (let i = 1; i < N; i++) {
    // Nodes come root first, breadth first, so a parent precedes its children.
    kids[data.parent[i]].push(i);
    depth[i] = depth[data.parent[i]] + 1;
  }
  const maxDepth = depth.reduce((a, b) => Math.max(a, b), 0);
  const innerCount = kids.filter((k) => k.length > 0).length;
  const lowerLabel = data.label.map((s) => s.toLowerCase());
  // The display name (nbdt.labels): the concept that best fits the node's classes.
  const shown = data.display || data.label;
  const shortLabel = shown.map((s) => (s.length > MAX_LABEL ? s.slice(0, MAX_LABEL - 1) + "…" : s));

  const open = new Uint8Array(N);
  const onPath = new Uint8Array(N);
  const isMatch = new Uint8Array(N);
  const x = new Float64Array(N);
  const y = new Float64Array(N);
  const width = new Float64Array(N).fill(-1); // label width, measured on first display
  const els = new Array(N);
  const edgeEls = new Array(N); // edgeEls[i]: the curve from node i's parent to node i
  let visible = [];
  let extent = { w: 0, h: 0 };
  let view = { k: 1, tx: 0, ty: 0 };
  let pathNodes = [];
  let matches = [];
  let current = -1;
  let firstOpen = null; // what the first view opened: while nothing else is, a resize re-chooses

  // ------------------------------------------------------------------ measuring
  const measure = document.createElement("canvas").getContext("2d");
  const family = getComputedStyle(document.body).fontFamily;
  // Measured in bold, the weight of highlighted labels, so edges never start inside a label.
  function labelWidth(i) {
    if (width[i] < 0) {
      measure.font = "700 13px " + family;
      let w = measure.measureText(shortLabel[i]).width;
      if (kids[i].length) {
        measure.font = "11px " + family;
        w += measure.measureText("  " + data.leaves[i]).width;
      }
      if (data.moved[i]) {
        measure.font = "700 11px " + family;
        w += measure.measureText("  moved").width;
      }
      width[i] = TEXT_X + w + 4;
    }
    return width[i];
  }

  // --------------------------------------------------------------------- layout
  function isOpen(i) {
    return open[i] === 1 && kids[i].length > 0;
  }

  /* One row per visible leaf or collapsed node in preorder; an open node sits midway between its
     first and last child; each depth is a column as wide as its widest visible label. */
  function layout() {
    visible = [];
    const stack = [0];
    while (stack.length) {
      const i = stack.pop();
      visible.push(i);
      if (isOpen(i)) for (let c = kids[i].length - 1; c >= 0; c--) stack.push(kids[i][c]);
    }
    const colWidth = [];
    let rows = 0;
    for (const i of visible) {
      if (!isOpen(i)) y[i] = ROW * rows++;
      colWidth[depth[i]] = Math.max(colWidth[depth[i]] || 0, labelWidth(i));
    }
    for (let v = visible.length - 1; v >= 0; v--) {
      const i = visible[v];
      if (isOpen(i)) y[i] = (y[kids[i][0]] + y[kids[i][kids[i].length - 1]]) / 2;
    }
    const colX = [0];
    for (let d = 0; d < colWidth.length; d++) colX.push(colX[d] + colWidth[d] + GAP);
    for (const i of visible) x[i] = colX[depth[i]];
    extent = { w: colX[colWidth.length] - GAP, h: Math.max(rows - 1, 0) * ROW };
  }

  // --------------------------------------------------------------------- drawing
  function nodeElement(i) {
    if (els[i]) return els[i];
    const g = document.createElementNS(SVG_NS, "g");
    g.setAttribute("class", "node " + (kids[i].length ? "inner" : "leaf"));
    if (!data.wordnet[i]) g.classList.add("synthetic");
    if (data.moved[i]) g.classList.add("moved");
    g.setAttribute("data-id", data.id[i]);
    g.setAttribute("data-index", String(i));
    const circle = document.createElementNS(SVG_NS, "circle");
    circle.setAttribute("r", String(kids[i].length ? RADIUS : RADIUS - 1));
    // A box behind the label, shown by CSS only for search matches.
    const mark = document.createElementNS(SVG_NS, "rect");
    mark.setAttribute("class", "mark");
    mark.setAttribute("x", String(TEXT_X - 4));
    mark.setAttribute("y", "-10");
    mark.setAttribute("height", "20");
    mark.setAttribute("rx", "4");
    mark.setAttribute("width", String(labelWidth(i) - TEXT_X + 4));
    const text = document.createElementNS(SVG_NS, "text");
    text.setAttribute("x", String(TEXT_X));
    const label = document.createElementNS(SVG_NS, "tspan");
    label.setAttribute("class", "label");
    label.textContent = shortLabel[i];
    text.appendChild(label);
    if (kids[i].length) {
      const count = document.createElementNS(SVG_NS, "tspan");
      count.setAttribute("class", "count");
      count.textContent = "  " + data.leaves[i];
      text.appendChild(count);
    }
    if (data.moved[i]) {
      const tag = document.createElementNS(SVG_NS, "tspan");
      tag.setAttribute("class", "moved-tag");
      tag.textContent = "  moved";
      text.appendChild(tag);
    }
    g.append(mark, circle, text);
    els[i] = g;
    return g;
  }

  /* One path element per edge, from the end of the parent's label to the child's dot: the
     browser skips the many that are off screen (a single huge path repaints slowly). */
  function edgeElement(c) {
    if (!edgeEls[c]) {
      edgeEls[c] = document.createElementNS(SVG_NS, "path");
      edgeEls[c].setAttribute("class", "edge");
    }
    const p = data.parent[c];
    const x1 = x[p] + labelWidth(p) + 2;
    const x2 = x[c] - RADIUS - 3;
    const xm = (x1 + x2) / 2;
    edgeEls[c].setAttribute("d", `M${x1},${y[p]}C${xm},${y[p]} ${xm},${y[c]} ${x2},${y[c]}`);
    edgeEls[c].classList.toggle("on-path", onPath[c] === 1);
    return edgeEls[c];
  }

  function draw() {
    const shown = new Array(visible.length);
    const edges = [];
    const edgesOnPath = []; // drawn last, so on top
    for (let v = 0; v < visible.length; v++) {
      const i = visible[v];
      const g = nodeElement(i);
      g.setAttribute("transform", `translate(${x[i]},${y[i]})`);
      g.classList.toggle("collapsed", kids[i].length > 0 && !open[i]);
      g.classList.toggle("on-path", onPath[i] === 1);
      g.classList.toggle("match", isMatch[i] === 1);
      g.classList.toggle("current", i === current);
      if (kids[i].length) g.setAttribute("aria-expanded", open[i] ? "true" : "false");
      shown[v] = g;
      if (i !== 0) (onPath[i] ? edgesOnPath : edges).push(edgeElement(i));
    }
    nodeLayer.replaceChildren(...shown);
    edgeLayer.replaceChildren(...edges, ...edgesOnPath);
    document.getElementById("status").textContent =
      `${data.class.filter((c) => c >= 0).length} classes · ${innerCount} inner nodes · ` +
      `depth ${maxDepth} · ${visible.length} of ${N} nodes shown`;
  }

  function update() {
    layout();
    draw();
  }

  // ------------------------------------------------------------------- zoom, pan
  function applyView() {
    viewport.setAttribute("transform", `translate(${view.tx},${view.ty}) scale(${view.k})`);
  }

  function zoomAt(factor, px, py) {
    const k = Math.min(4, Math.max(0.04, view.k * factor));
    view = { k, tx: px - ((px - view.tx) * k) / view.k, ty: py - ((py - view.ty) * k) / view.k };
    applyView();
  }

  /* Fit the drawn tree to the window if it fits at a readable scale, and say whether it did;
     otherwise show it at that scale with the root at the left edge, vertically centred. With
     ``all`` (the Fit button, the 0 key) the whole drawn tree fits, however small. */
  function fit(all) {
    const box = svg.getBoundingClientRect();
    const m = MARGIN;
    const k = Math.max(0.04, Math.min(1.4, (box.width - 2 * m) / Math.max(extent.w, 1),
      (box.height - 2 * m) / Math.max(extent.h, 1)));
    const fits = k >= MIN_FIT || all === true;
    view.k = fits ? k : MIN_FIT;
    view.tx = fits ? (box.width - extent.w * k) / 2 : m + RADIUS;
    view.ty = fits ? (box.height - extent.h * k) / 2 : box.height / 2 - y[0] * view.k;
    applyView();
    return fits;
  }

  function screenPos(i) {
    return [view.tx + view.k * x[i], view.ty + view.k * y[i]];
  }

  /* After node i opens, show it with its children's labels whole: zoom out about node i as far
     as MIN_FIT if they need it, then pan left, never pushing node i past the left edge. */
  function revealChildren(i) {
    const width = svg.getBoundingClientRect().width;
    const right = Math.max(...kids[i].map((c) => x[c] + labelWidth(c)));
    const k = Math.min(view.k, Math.max(MIN_FIT, (width - 2 * MARGIN) / (right - x[i] + RADIUS)));
    const [sx, sy] = screenPos(i);
    view = { k, tx: sx - k * x[i], ty: sy - k * y[i] };
    const over = view.tx + k * right - (width - MARGIN);
    view.tx -= Math.max(0, Math.min(over, view.tx + k * (x[i] - RADIUS) - MARGIN));
    applyView();
  }

  /* Re-layout while node i stays where it is on screen, so a click never makes the tree jump. */
  function updateKeeping(i) {
    const [sx, sy] = screenPos(i);
    update();
    view.tx += sx - screenPos(i)[0];
    view.ty += sy - screenPos(i)[1];
    applyView();
  }

  /* Bring node i to the vertical centre, with as much of its path from the root as fits to
     its left: the shallowest ancestor whose column still leaves room for node i's label. */
  function centerOn(i) {
    const box = svg.getBoundingClientRect();
    const m = MARGIN;
    const right = x[i] + labelWidth(i);
    const left = ancestors(i).find((a) => view.k * (right - x[a]) <= box.width - 2 * m) ?? i;
    view.tx = m + RADIUS - view.k * x[left];
    view.ty = box.height / 2 - view.k * y[i];
    applyView();
  }

  // ---------------------------------------------------------- expand, collapse
  /* Open as many levels as fit about OPEN_ROWS rows and the window's width at the readable scale
     MIN_FIT (nothing cut at the right edge), and at least the root. With the levels above L open,
     the rows are the nodes at depth L plus the leaves above it; the columns, depths 0 to L. */
  function openLevels() {
    const atDepth = new Array(maxDepth + 1).fill(0);
    const leavesAt = new Array(maxDepth + 1).fill(0);
    const colWidth = new Array(maxDepth + 1).fill(0);
    for (let i = 0; i < N; i++) {
      atDepth[depth[i]] += 1;
      if (!kids[i].length) leavesAt[depth[i]] += 1;
      colWidth[depth[i]] = Math.max(colWidth[depth[i]], labelWidth(i));
    }
    const room = (svg.getBoundingClientRect().width - 2 * MARGIN) / MIN_FIT;
    let levels = 1;
    let leavesAbove = leavesAt[0] + leavesAt[1];
    let treeWidth = colWidth[0] + GAP + colWidth[1];
    const fits = (l) => atDepth[l] + leavesAbove <= OPEN_ROWS && treeWidth + GAP + colWidth[l] <= room;
    while (levels < maxDepth && fits(levels + 1)) {
      levels += 1;
      leavesAbove += leavesAt[levels];
      treeWidth += GAP + colWidth[levels];
    }
    open.fill(0);
    for (let i = 0; i < N; i++) if (depth[i] < levels) open[i] = 1;
  }

  function setSubtree(i, value) {
    const stack = [i];
    while (stack.length) {
      const j = stack.pop();
      open[j] = value;
      for (const c of kids[j]) stack.push(c);
    }
  }

  function ancestors(i) {
    const out = [];
    for (let j = i; j >= 0; j = data.parent[j]) out.push(j);
    return out.reverse();
  }

  // ---------------------------------------------------------------- highlight
  function highlight(i) {
    onPath.fill(0);
    pathNodes = i < 0 ? [] : ancestors(i);
    for (const j of pathNodes) onPath[j] = 1;
    for (const j of pathNodes.slice(0, -1)) open[j] = 1;
    const crumbs = document.getElementById("crumbs");
    const parts = [];
    pathNodes.forEach((j, n) => {
      if (n) {
        const sep = document.createElement("span");
        sep.className = "sep";
        sep.textContent = "›";
        parts.push(sep);
      }
      const crumb = document.createElement("span");
      crumb.className = "crumb";
      crumb.textContent = shown[j];
      parts.push(crumb);
    });
    crumbs.replaceChildren(...parts);
  }

  // ------------------------------------------------------------------- search
  function search(query) {
    searchBox.dataset.query = query; // what Enter compares with: the next Enter advances
    const q = query.trim().toLowerCase();
    isMatch.fill(0);
    matches = [];
    if (q) {
      for (let i = 0; i < N; i++) {
        if (lowerLabel[i].includes(q) || data.id[i].toLowerCase() === q || (data.wnid[i] || "").toLowerCase() === q) {
          matches.push(i);
        }
      }
      // Exact names first, then shallow before deep, then tree order.
      const exact = (i) => (lowerLabel[i] === q || data.id[i].toLowerCase() === q ? 0 : 1);
      matches.sort((a, b) => exact(a) - exact(b) || depth[a] - depth[b] || a - b);
      for (const i of matches) isMatch[i] = 1;
    }
    current = -1;
    if (matches.length) {
      goTo(0);
    } else {
      highlight(-1);
      update();
      matchesOut.textContent = q ? "no match" : "";
    }
  }

  function goTo(m) {
    if (!matches.length) return;
    const n = ((m % matches.length) + matches.length) % matches.length;
    current = matches[n];
    highlight(current);
    update();
    centerOn(current);
    matchesOut.textContent = `${n + 1} of ${matches.length}`;
  }

  let searchTimer = 0;
  searchBox.addEventListener("input", () => {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(() => search(searchBox.value), N > 500 ? 150 : 40);
  });
  searchBox.addEventListener("keydown", (e) => {
    if (e.key !== "Enter") return;
    e.preventDefault();
    clearTimeout(searchTimer);
    const n = matches.indexOf(current);
    if (n < 0 || searchBox.dataset.query !== searchBox.value) {
      searchBox.dataset.query = searchBox.value;
      search(searchBox.value);
    } else {
      goTo(e.shiftKey ? n - 1 : n + 1);
    }
  });
  document.getElementById("next").addEventListener("click", () => goTo(matches.indexOf(current) + 1));
  document.getElementById("prev").addEventListener("click", () => goTo(matches.indexOf(current) - 1));

  // -------------------------------------------------------------- tool buttons
  document.getElementById("expand").addEventListener("click", () => {
    setSubtree(0, 1);
    update();
    fit();
  });
  document.getElementById("collapse").addEventListener("click", () => {
    openLevels();
    for (const j of pathNodes.slice(0, -1)) open[j] = 1;
    update();
    fit();
  });
  document.getElementById("fit").addEventListener("click", () => fit(true));
  const zoomButton = (factor) => () => {
    const box = svg.getBoundingClientRect();
    zoomAt(factor, box.width / 2, box.height / 2);
  };
  document.getElementById("zoom-in").addEventListener("click", zoomButton(1.25));
  document.getElementById("zoom-out").addEventListener("click", zoomButton(0.8));
  document.addEventListener("keydown", (e) => {
    if (e.target === searchBox || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === "/") {
      e.preventDefault();
      searchBox.focus();
    } else if (e.key === "+" || e.key === "=") zoomButton(1.25)();
    else if (e.key === "-") zoomButton(0.8)();
    else if (e.key === "0") fit(true);
  });

  // ------------------------------------------------------- pointer: pan, click
  let drag = null;
  svg.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    const g = e.target.closest && e.target.closest("g.node");
    const onName = Boolean(g && e.target.closest("text"));
    drag = { x: e.clientX, y: e.clientY, tx: view.tx, ty: view.ty, moved: false, node: g, onName, id: e.pointerId };
  });
  svg.addEventListener("pointermove", (e) => {
    if (drag && e.pointerId === drag.id) {
      const dx = e.clientX - drag.x;
      const dy = e.clientY - drag.y;
      if (!drag.moved && Math.hypot(dx, dy) > 4) {
        drag.moved = true;
        svg.setPointerCapture(e.pointerId);
        svg.classList.add("dragging");
        tip.hidden = true;
      }
      if (drag.moved) {
        view.tx = drag.tx + dx;
        view.ty = drag.ty + dy;
        applyView();
      }
      return;
    }
    const g = e.target.closest && e.target.closest("g.node");
    if (g) showTip(Number(g.getAttribute("data-index")), e.clientX, e.clientY);
    else tip.hidden = true;
  });
  function endDrag(e) {
    if (!drag || e.pointerId !== drag.id) return;
    const { moved, node, onName } = drag;
    drag = null;
    svg.classList.remove("dragging");
    if (moved || !node || e.type !== "pointerup") return;
    const i = Number(node.getAttribute("data-index"));
    tip.hidden = true; // the drawing changes under the pointer: the next move shows a fresh tip
    if (!kids[i].length) return;
    // A name shows the node's training images; the dot (or a name without images) opens/closes.
    if (hasExamples(i) && onName) {
      showExamples(i);
      return;
    }
    if (e.altKey || e.shiftKey) setSubtree(i, open[i] ? 0 : 1);
    else open[i] = open[i] ? 0 : 1;
    updateKeeping(i);
    if (open[i]) revealChildren(i);
  }
  svg.addEventListener("pointerup", endDrag);
  svg.addEventListener("pointercancel", endDrag);
  svg.addEventListener("pointerleave", () => {
    tip.hidden = true;
  });
  svg.addEventListener(
    "wheel",
    (e) => {
      e.preventDefault();
      const box = svg.getBoundingClientRect();
      const step = e.deltaMode === 1 ? 0.05 : e.deltaMode === 2 ? 1 : 0.0022;
      zoomAt(Math.exp(-e.deltaY * step), e.clientX - box.left, e.clientY - box.top);
    },
    { passive: false }
  );

  // ------------------------------------------------------------ node examples
  /* The panel for inner node i: per child, the training images the node sends there (of that
     branch: representative; of another branch: its typical mistakes). */
  const panel = document.getElementById("examples");
  function exampleRow(title, rows, hint) {
    const group = document.createElement("div");
    group.className = "ex-group";
    const head = document.createElement("div");
    head.className = "ex-title";
    head.textContent = title;
    const strip = document.createElement("div");
    strip.className = "thumbs";
    for (const [t, label, p] of rows) {
      const img = document.createElement("img");
      img.className = "thumb";
      img.alt = label;
      img.title = `${label} · ${hint} ${(100 * p).toFixed(1)}%`;
      img.src = data.examples.thumbs[t];
      strip.append(img);
    }
    if (!rows.length) {
      const none = document.createElement("span");
      none.className = "none";
      none.textContent = "none";
      strip.append(none);
    }
    group.append(head, strip);
    return group;
  }
  function hasExamples(i) {
    return Boolean(data.examples && data.examples.nodes[i]);
  }
  function showExamples(i) {
    if (!hasExamples(i)) return;
    const title = document.createElement("h2");
    title.textContent = shown[i];
    const close = document.createElement("button");
    close.type = "button";
    close.className = "close";
    close.textContent = "×";
    close.title = "Close";
    close.addEventListener("click", () => {
      panel.hidden = true;
      panel.removeAttribute("data-node");
    });
    const lede = document.createElement("p");
    lede.className = "ex-lede";
    lede.textContent = "What this node sends to each child: its training images of that branch, and the ones it sends there by mistake.";
    const parts = [close, title, lede];
    for (const c of data.examples.nodes[i]) {
      const section = document.createElement("section");
      section.className = "ex-child";
      section.setAttribute("data-child", data.id[c.child]);
      const name = document.createElement("h3");
      name.textContent = "→ " + shown[c.child];
      section.append(
        name,
        exampleRow("representative", c.representative, "sent here with"),
        exampleRow("confused (of another branch)", c.confused, "sent here with")
      );
      parts.push(section);
    }
    panel.replaceChildren(...parts);
    panel.setAttribute("data-node", data.id[i]);
    panel.hidden = false;
    // The tree gave the panel room: keep the node in what is left of it.
    const box = svg.getBoundingClientRect();
    const [sx, sy] = screenPos(i);
    if (sx < 0 || sx + view.k * labelWidth(i) > box.width || sy < 0 || sy > box.height) centerOn(i);
  }

  // ------------------------------------------------------------------ tooltip
  function showTip(i, cx, cy) {
    const lines = [];
    const row = (name, value) => {
      const div = document.createElement("div");
      div.className = "t-row";
      const b = document.createElement("b");
      b.textContent = value;
      div.append(name + " ", b);
      lines.push(div);
    };
    const head = document.createElement("div");
    head.className = "t-label";
    head.textContent = shown[i];
    if (shown[i] !== data.label[i]) row("lowest common hypernym", data.label[i]);
    if (data.fit && data.fit[i] !== null && data.class[i] < 0) row("name fit", data.fit[i].toFixed(2));
    if (data.wnid[i]) row("WordNet id", data.wnid[i]);
    row("name", data.wordnet[i] ? "from WordNet" : "synthetic (no WordNet synset)");
    if (data.id[i] !== data.label[i] && data.id[i] !== data.wnid[i]) row("node id", data.id[i]);
    if (data.moved[i]) row("edit", "moved to a new parent");
    if (hasExamples(i)) row("click", "the name: its training images; the dot: open or close");
    if (data.class[i] >= 0) row("class index", String(data.class[i]));
    else row("classes below", String(data.leaves[i]));
    row("depth", String(depth[i]));
    tip.replaceChildren(head, ...lines);
    tip.hidden = false;
    const w = tip.offsetWidth;
    const h = tip.offsetHeight;
    tip.style.left = Math.min(cx + 14, window.innerWidth - w - 8) + "px";
    tip.style.top = (cy + 16 + h > window.innerHeight ? cy - h - 10 : cy + 16) + "px";
  }

  // -------------------------------------------------------------------- start
  // The first view: the levels that fit, the paths to what an edit moved and to --highlight's node.
  function openFirstView() {
    openLevels();
    for (let i = 0; i < N; i++) if (data.moved[i]) for (const j of ancestors(i).slice(0, -1)) open[j] = 1;
    if (data.highlight !== null) highlight(data.highlight);
    firstOpen = open.slice();
  }
  const movedCount = data.moved.reduce((a, b) => a + b, 0);
  if (movedCount) {
    document.getElementById("moved-key").hidden = false;
    document.getElementById("moved-count").textContent = String(movedCount);
  }
  if (data.examples) document.getElementById("examples-key").hidden = false;
  // Fit the tree; when it is too big to fit, keep the search's or --highlight's node in view.
  function initialView() {
    const focus = current >= 0 ? current : data.highlight;
    if (!fit() && focus !== null) centerOn(focus);
  }
  openFirstView();
  update();
  initialView();
  window.addEventListener("resize", () => {
    if (current < 0 && open.every((v, i) => v === firstOpen[i])) { openFirstView(); update(); }
    initialView();
  });
  document.documentElement.setAttribute("data-ready", "1");
})();
