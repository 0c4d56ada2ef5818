/* nbdt explanation page: one card per image, built from the JSON in #nbdt-data.
   Every string is set with textContent, never parsed as HTML. */
(function () {
  "use strict";

  const data = JSON.parse(document.getElementById("nbdt-data").textContent);
  const MAX_OTHERS = 12; // sibling chips shown per decision before "+n more"

  function el(tag, className, text) {
    const e = document.createElement(tag);
    if (className) e.className = className;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function pct(p) {
    return p > 0 && p < 0.0005 ? "<0.1%" : (100 * p).toFixed(1) + "%";
  }

  function bar(p) {
    const outer = el("div", "bar");
    outer.setAttribute("role", "img");
    outer.setAttribute("aria-label", pct(p));
    const fill = el("i");
    fill.style.width = (100 * p).toFixed(2) + "%";
    outer.appendChild(fill);
    return outer;
  }

  function number(p) {
    const out = el("span", "num", pct(p));
    out.setAttribute("data-probability", String(p));
    return out;
  }

  function picture(src, alt) {
    const img = el("img");
    img.alt = alt;
    img.addEventListener("load", () => {
      if (img.naturalWidth < 112) img.classList.add("pixelated");
    });
    img.src = src;
    return img;
  }

  function branch(role, mark, label, p) {
    const row = el("div", "branch " + role);
    row.append(el("span", "role", mark), el("span", "lbl", label), bar(p), number(p));
    row.querySelector(".lbl").title = label;
    return row;
  }

  /* A row of training-image thumbnails; the tooltip names the class and the score. */
  function thumbs(title, list, score) {
    const group = el("div", "ex-group");
    group.append(el("div", "ex-title", title));
    const row = el("div", "thumbs");
    for (const x of list) {
      const img = picture(x.thumbnail, x.label);
      img.classList.add("thumb");
      img.title = `${x.label} · ${score} ${x.score.toFixed(2)} · training image ${x.index}`;
      row.append(img);
    }
    if (!list.length) row.append(el("span", "none", "none"));
    group.append(row);
    return group;
  }

  /* A decision's evidence: the image under its heatmap (click or the page toggle hides the map),
     both children's typical training images and the nearest training images. */
  function evidence(s, image, overlay) {
    const examples = s.child_examples.length || s.runner_up_examples.length || s.nearest.length;
    if (!(image && typeof overlay === "string") && !examples) return null;
    const box = el("div", "evidence");
    if (image && overlay === "") {
      const fig = el("div", "heat none");
      fig.title = `no region of the image stands out in pushing "${s.label}" towards "${s.child_label}"`;
      fig.append(picture(image, ""), el("span", "none-note", "no localised evidence"));
      box.append(fig);
    } else if (image && overlay) {
      const fig = el("div", "heat");
      fig.style.setProperty("--zoom", String(1 / (data.crop_pct || 1)));
      const map = el("img", "overlay");
      map.alt = `heatmap: where the image pushed "${s.label}" towards "${s.child_label}" rather than "${s.runner_up_label}"`;
      map.src = overlay;
      fig.append(picture(image, ""), map);
      fig.title = map.alt + " (click to toggle)";
      fig.addEventListener("click", () => fig.classList.toggle("off"));
      box.append(fig);
    }
    if (examples) {
      const groups = el("div", "ex-groups");
      const child = s.child_display || s.child_label;
      const runner = s.runner_up_display || s.runner_up_label;
      groups.append(
        thumbs(`→ ${child}: typical training images`, s.child_examples, "p"),
        thumbs(`vs ${runner}: typical training images`, s.runner_up_examples, "p"),
        thumbs(`nearest training images sent to ${child}`, s.nearest, "similarity")
      );
      box.append(groups);
    }
    return box;
  }

  function step(s, children, image, overlay) {
    const li = el("li", "step");
    li.setAttribute("data-node-id", s.node_id);
    const line = el("div", "node-line");
    line.append(el("span", "node-name", s.display || s.label));
    const meta = [`entropy ${s.entropy.toFixed(2)} nats`];
    if (children) meta.push(`${children.length} children`);
    if (s.wnid) meta.push(s.wnid);
    line.append(el("span", "node-meta", meta.join(" · ")));
    const branches = el("div", "branches");
    branches.append(
      branch("taken", "→", s.child_display || s.child_label, s.probability),
      branch("runner-up", "vs", s.runner_up_display || s.runner_up_label, s.runner_up_probability)
    );
    li.append(el("span", "dot"), line, branches);
    const proof = evidence(s, image, overlay);
    if (proof) li.append(proof);
    const others = (children || []).filter((c) => c.role === "other");
    if (others.length) {
      const box = el("div", "others");
      box.append(el("span", "", "also:"));
      for (const c of others.slice(0, MAX_OTHERS)) {
        const chip = el("span", "chip");
        chip.append(el("bdi", "", c.label), " ");
        chip.append(el("small", "", String(c.leaves)));
        chip.title = `${c.label}: ${c.leaves} ${c.leaves === 1 ? "class" : "classes"}`;
        box.append(chip);
      }
      if (others.length > MAX_OTHERS) box.append(el("span", "", `+${others.length - MAX_OTHERS} more`));
      li.append(box);
    }
    return li;
  }

  /* The path at a glance: each child taken with its branch probability. */
  function trail(steps) {
    const line = el("div", "trail");
    steps.forEach((s, i) => {
      if (i) line.append(el("span", "sep", "›"));
      const hop = el("span", "hop");
      hop.append(el("bdi", "", s.child_display || s.child_label), " ");
      hop.append(el("b", "", pct(s.probability)));
      line.append(hop);
    });
    return line;
  }

  function card(item, n, total) {
    const e = item.explanation;
    const section = el("section", "card");
    section.id = `explanation-${n + 1}`;
    section.setAttribute("data-class-index", String(e.class_index));

    // Left column: the image and the top-k classes.
    const side = el("div", "side");
    if (item.image) {
      const figure = el("div", "figure");
      figure.append(picture(item.image, `input image ${n + 1}`));
      side.append(figure);
    }
    if (e.top_k.length) {
      side.append(el("h3", "", `Top ${e.top_k.length}`));
      const list = el("ol", "topk");
      for (const t of e.top_k) {
        const li = el("li", t.class_index === e.class_index ? "pred-row" : "");
        const label = el("span", "lbl", t.label);
        label.title = t.label;
        li.append(label, number(t.probability), bar(t.probability));
        list.append(li);
      }
      side.append(list);
    }

    // Right column: the prediction, the path at a glance, then every decision.
    const body = el("div", "body");
    const how = [`image ${n + 1} of ${total}`];
    if (e.mode) how.push(`${e.mode} inference`);
    if (e.node_score) how.push(`${e.node_score} node score`);
    const prob = el("div", "pred-prob");
    const big = el("span", "pct", pct(e.probability));
    big.setAttribute("data-probability", String(e.probability));
    prob.append(big, bar(e.probability));
    const facts = [`class ${e.class_index}`];
    if (e.wnid) facts.push(`WordNet ${e.wnid}`);
    facts.push(`${e.path.length} ${e.path.length === 1 ? "decision" : "decisions"}`);
    const head = [el("div", "eyebrow", how.join(" · ")), el("h2", "pred", e.label)];
    if (item.true_label !== undefined && item.true_label !== null) {
      const right = item.true_label === e.label;
      const truth = el("p", "truth " + (right ? "right" : "wrong"), "true class: ");
      truth.append(el("b", "", item.true_label), right ? " ✓" : " ✗");
      head.push(truth);
    }
    body.append(
      ...head,
      prob,
      el("div", "meta", facts.join(" · ")),
      trail(e.path),
      el("h3", "", "Decision path, root to leaf")
    );
    const path = el("ol", "path");
    e.path.forEach((s, i) =>
      path.append(step(s, item.context ? item.context[i] : null, item.image, item.overlays && item.overlays[i]))
    );
    const leaf = el("li", "step leaf");
    const line = el("div", "node-line");
    line.append(el("span", "node-name", e.label), el("span", "node-meta", `class ${e.class_index} · predicted`));
    leaf.append(el("span", "dot"), line);
    path.append(leaf);
    body.append(path);

    section.append(side, body);
    return section;
  }


  const main = document.getElementById("explanations");
  const total = data.items.length;
  main.replaceChildren(...data.items.map((item, n) => card(item, n, total)));

  const toggle = document.getElementById("heat-toggle");
  if (data.items.some((item) => item.overlays)) {
    toggle.hidden = false;
    toggle.addEventListener("click", () => {
      const off = document.body.classList.toggle("no-heat");
      toggle.textContent = off ? "Show heatmaps" : "Hide heatmaps";
      toggle.setAttribute("aria-pressed", String(!off));
    });
  }

  if (total > 1) {
    const nav = document.getElementById("index");
    nav.replaceChildren(
      ...data.items.map((item, n) => {
        const a = el("a");
        a.href = `#explanation-${n + 1}`;
        if (item.image) a.append(picture(item.image, ""));
        const name = el("span", "", `${n + 1}. `);
        name.append(el("bdi", "", item.explanation.label), " ");
        a.append(name);
        a.append(el("span", "num", pct(item.explanation.probability)));
        return a;
      })
    );
  }
  document.documentElement.setAttribute("data-ready", "1");
})();
