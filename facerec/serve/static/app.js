// facerec web page: upload or camera -> POST v1/search -> draw face boxes, 3x3 grid of the top 9.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  // last: the photo last searched, searched again when the model or the faces mode changes
  const state = { image: null, faces: [], active: 0, stream: null, last: null, decision: null, showNearest: false };

  // "1 in 100" for a target FPIR of 0.01: how a person reads a rate.
  function oneIn(rate) {
    const n = Math.round(1 / rate);
    return `about 1 in ${n.toLocaleString("en")}`;
  }

  // What a match means, in words: the open-set decision of the gallery searched.
  function meaning(d) {
    if (!d || d.threshold == null) return "";
    return `“Likely the same person” is said so that ${oneIn(d.target_fpir)} searches of someone who is not in ` +
      `the gallery shows a false match (a gallery of ${d.gallery_size.toLocaleString("en")} faces).`;
  }

  function decisionTitle(d) {
    if (!d || d.threshold == null) return "";
    const how = d.method === "gallery" ? `measured on this gallery's own faces (${d.nonmated_searches} searches)`
      : "from the model's calibration";
    return `same person iff distance ≤ ${d.threshold.toFixed(3)}, ${how}; target false positive identification ` +
      `rate ${d.target_fpir}, N = ${d.gallery_size}`;
  }

  function setStatus(text, isError) {
    const s = $("status");
    s.textContent = text;
    s.classList.toggle("error", !!isError);
  }

  // A server started with --read-token answers searches and images only with it: the page asks for
  // it on the first 401 and keeps it in this tab's memory only (never in storage: it is a credential).
  function authHeaders() {
    const t = $("token").value.trim();
    return t ? { Authorization: "Bearer " + t } : {};
  }

  // Thumbnails are protected too when a read token is set: an <img src> cannot send a header, so
  // they are fetched with it and shown from blob URLs.
  function showThumbnail(img, url) {
    if (!$("token").value.trim()) {
      img.src = url;
      return;
    }
    fetch(url, { headers: authHeaders() })
      .then((r) => (r.ok ? r.blob() : null))
      .then((b) => { if (b) img.src = URL.createObjectURL(b); })
      .catch(() => null);
  }

  async function loadModels() {
    try {
      const r = await fetch("v1/models");
      const info = await r.json();
      const sel = $("model");
      sel.innerHTML = "";
      state.models = {};
      for (const m of info.models) {
        state.models[m.name] = m;
        const o = document.createElement("option");
        o.value = m.name;
        o.textContent = `${m.name} (${m.backbone}, d=${m.embedding_dim}, ${m.index_kind})`;
        if (m.default) o.selected = true;
        sel.appendChild(o);
      }
      showCard();
      $("gallery-info").textContent = `gallery: ${info.gallery_rows.toLocaleString("en")} faces`;
      $("gallery-info").title = `gallery version ${info.gallery_version}`;
      state.labelled = info.gallery_labelled !== false;
    } catch (e) {
      setStatus("Could not load the model list: " + e, true);
    }
  }

  // What the chosen model is: its weights, training data, measured LFW accuracy and how it decides.
  function showCard() {
    const m = (state.models || {})[$("model").value];
    const el = $("model-card");
    if (!m || !el) return;
    const lfw = m.lfw_accuracy_pct == null ? "LFW accuracy not measured yet"
      : `LFW accuracy ${m.lfw_accuracy_pct.toFixed(2)} %` + (m.lfw_measured_on ? ` (${m.lfw_measured_on})` : "");
    const d = m.open_set;
    const search = d && d.threshold != null ? ` Search: ${meaning(d)}`
      : " Search: no same-person decision (the model is not calibrated and the gallery cannot be measured): " +
        "results are only the most similar faces.";
    // Verify (1:1, two photos) keeps the model's calibrated false accept rate.
    const cal = m.calibration;
    const point = cal && cal.operating_points.find((p) => p.resolvable && p.far === cal.default_far);
    const verify = !point ? "" : ` Verify (two photos): same person iff distance ≤ ${point.threshold.toFixed(3)} ` +
      `(false accept rate ${point.far}; ${(100 * point.tar_mean).toFixed(1)} % of genuine pairs accepted on held-out ` +
      `people of ${cal.data.name}).`;
    el.textContent = `Weights: ${m.weights || "?"}. Training data: ${m.training_data || "?"}. ${lfw}.` + search + verify +
      (m.untrained ? " Warning: this model was never trained on faces." : "");
    el.title = decisionTitle(d);
    el.classList.toggle("error", !!m.untrained);
    // folded whatever it says; a model that never saw faces is named on the fold itself
    $("about-model").querySelector("summary").textContent = m.untrained
      ? "About this model — warning: it was never trained on faces" : "About this model";
    $("about-model").classList.toggle("error", !!m.untrained);
  }

  function drawPreview() {
    const c = $("preview");
    if (!state.image) {  // no photo (or one the browser cannot show): no stale earlier photo either
      c.width = 0;
      c.height = 0;
      return;
    }
    const img = state.image;
    c.width = img.naturalWidth || img.width;
    c.height = img.naturalHeight || img.height;
    const ctx = c.getContext("2d");
    ctx.drawImage(img, 0, 0);
    ctx.lineWidth = Math.max(2, c.width / 150);
    // With several faces each box carries the number of its "face N" button, so a person can tell
    // which face the results are for without guessing from the colours.
    const size = Math.max(12, Math.round(c.width / 30));
    ctx.font = `bold ${size}px sans-serif`;
    ctx.textBaseline = "top";
    state.faces.forEach((f, i) => {
      const colour = i === state.active ? "#00e676" : "#ffab00";
      ctx.strokeStyle = colour;
      ctx.strokeRect(f.box.x, f.box.y, f.box.w, f.box.h);
      if (state.faces.length < 2) return;
      const label = String(i + 1);
      const w = ctx.measureText(label).width + size / 2;
      const y = Math.max(0, f.box.y - size - 4);
      ctx.fillStyle = colour;
      ctx.fillRect(f.box.x, y, w, size + 4);
      ctx.fillStyle = "#000";
      ctx.fillText(label, f.box.x + size / 4, y + 2);
    });
  }

  function renderFaceTabs() {
    const tabs = $("face-tabs");
    tabs.innerHTML = "";
    if (state.faces.length < 2) return;
    state.faces.forEach((f, i) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = `face ${i + 1}`;
      b.title = `the face in the box marked ${i + 1} on the photo`;
      b.setAttribute("aria-pressed", String(i === state.active));
      b.className = i === state.active ? "active" : "";
      b.onclick = () => { state.active = i; renderFaceTabs(); drawPreview(); renderResults(); };
      tabs.appendChild(b);
    });
  }

  // "No match in the gallery" instead of nine strangers: when no result of this face is within the
  // gallery's same-person threshold (search's face.match === false).
  function showNoMatch(face) {
    const box = $("no-match");
    box.hidden = !(face && face.match === false && !state.showNearest);
    if (box.hidden) return false;
    $("no-match-text").textContent = "No match in the gallery: none of the " +
      `${face.results.length} most similar faces is close enough to be this person.`;
    $("no-match-text").title = decisionTitle(state.decision);
    return true;
  }

  function closeness(h) {
    return `distance ${h.distance.toFixed(3)} (0 = identical photos)`;
  }

  function renderResults() {
    const list = $("results");
    list.innerHTML = "";
    const face = state.faces[state.active];
    const m = $("meaning");
    m.textContent = face ? meaning(state.decision) : "";
    m.title = decisionTitle(state.decision);
    m.hidden = !m.textContent;
    if (showNoMatch(face) || !face) return;
    const tpl = $("result-tpl");
    // A face too far to pass by itself, but labelled as the person another hit matched: the
    // gallery's label says who it is, so the page says that (not the distance). An unlabelled
    // folder's people are the server's clustering, not a label anyone gave: the page says so.
    const matched = new Set(face.results.filter((h) => h.same_person === true).map((h) => h.identity));
    for (const h of face.results.slice(0, 9)) {
      const li = tpl.content.firstElementChild.cloneNode(true);
      li.dataset.rank = h.rank;
      li.dataset.imageId = h.image_id;
      li.dataset.distance = h.distance;
      li.dataset.identity = h.identity;
      showThumbnail(li.querySelector("img"), h.thumbnail_url);
      const who = h.display_name || `person ${h.identity}`;
      li.querySelector("img").alt = `gallery photo of ${who}`;
      li.querySelector(".rank").textContent = `#${h.rank}`;
      const ident = li.querySelector(".identity");
      ident.textContent = who;
      ident.title = `identity ${h.identity}, photo ${h.image_id}`;
      // The numbers stay one hover away: the words say what they mean.
      li.title = closeness(h) + (state.decision && state.decision.threshold != null
        ? `; same person at ≤ ${state.decision.threshold.toFixed(3)}` : "");
      li.querySelector(".distance").textContent = "";
      li.dataset.samePerson = String(h.same_person);
      li.classList.toggle("same-person", h.same_person === true);
      li.classList.toggle("stranger", h.same_person === false);
      const sameLabel = h.same_person === false && matched.has(h.identity);
      li.classList.toggle("same-label", sameLabel);
      li.querySelector(".verdict").textContent = h.same_person === true ? "likely the same person"
        : sameLabel ? (state.labelled === false ? "same person by the clustering" : "same person by the gallery's label")
        : "";
      const agree = li.querySelector(".agreement");
      if (h.attribute_agreement !== null && h.rank > 1) {
        agree.textContent = `${(100 * h.attribute_agreement).toFixed(0)} % of traits as #1`;
        agree.title = "share of the labelled CelebA attributes (hair, glasses, smiling, …) equal to those of the first result";
      }
      const attrs = li.querySelector(".attrs");
      const on = Object.entries(h.attributes).filter(([, v]) => v === 1).map(([k]) => k);
      for (const a of on) {
        const s = document.createElement("span");
        s.textContent = a.replace(/_/g, " ");
        attrs.appendChild(s);
      }
      if (!on.length) attrs.textContent = "(no attribute labels)";
      list.appendChild(li);
    }
  }

  // The server's message (its texts are written for people); a body that is not the API's JSON
  // (a proxy's error page) falls back to the HTTP status.
  async function errorText(r) {
    let detail = "";
    try {
      const body = await r.json();
      detail = body && typeof body.detail === "string" ? body.detail : "";
    } catch (e) { /* not JSON */ }
    if (r.status === 503) detail = detail || "the server is busy";
    return `Error ${r.status}: ${detail || r.statusText || "the request failed"}` +
      (r.status === 503 ? " — try again in a moment." : "");
  }

  async function search(blob, name) {
    state.last = { blob, name };
    state.faces = [];
    state.showNearest = false;
    renderResults();
    renderFaceTabs();
    const url = URL.createObjectURL(blob);
    const img = new Image();
    await new Promise((ok, bad) => { img.onload = ok; img.onerror = () => bad(new Error("not an image")); img.src = url; })
      .catch(() => null);
    // Drawn only when it is a sane size: the server refuses more than 40 MP anyway, and a
    // decompression bomb must not take the browser down with it.
    state.image = img.naturalWidth && img.naturalWidth * img.naturalHeight <= 40e6 ? img : null;
    drawPreview();
    setStatus("Searching…");
    const form = new FormData();
    form.append("image", blob, name || "photo.jpg");
    form.append("k", "9");
    form.append("model", $("model").value);
    form.append("faces", $("faces").value);
    let r, body;
    try {
      r = await fetch("v1/search", { method: "POST", body: form, headers: authHeaders() });
    } catch (e) {
      setStatus("Could not reach the server; check the connection and try again.", true);
      return;
    }
    if (state.last === null || state.last.blob !== blob) return;  // a newer search started meanwhile
    if (r.status === 401) {
      $("token-label").hidden = false;
      $("token").focus();
      setStatus(($("token").value.trim() ? "Wrong read token" : "This server needs a read token") +
        ": enter it beside the model and the photo is searched again.", true);
      return;
    }
    if (!r.ok) {
      setStatus(await errorText(r), true);
      return;
    }
    try {
      body = await r.json();
    } catch (e) {
      setStatus("The server sent an answer this page cannot read; try again.", true);
      return;
    }
    state.faces = body.faces;
    state.decision = body.decision && body.decision.threshold != null ? body.decision : null;
    state.active = 0;
    drawPreview();
    renderFaceTabs();
    renderResults();
    const first = body.faces[0];
    const found = `${body.faces.length} face${body.faces.length === 1 ? "" : "s"} found`;
    const took = ` (${body.model}, ${body.timing_ms.total.toFixed(0)} ms)`;
    let answer;
    if (!state.decision || !first) {
      answer = `The ${first ? Math.min(9, first.results.length) : 0} most similar faces in the gallery; ` +
        "no same-person decision is available for this model.";
    } else if (first.match) {
      const n = first.results.filter((h) => h.same_person).length;
      answer = `Likely the same person: ${n} of the most similar faces` + (n === 1 ? " is a match." : " are matches.");
    } else {
      answer = "No match in the gallery.";
    }
    if (state.decision && body.faces.length > 1) {
      // the line speaks of every face, not only the first (each face's tab shows its own answer)
      answer = body.faces.map((f, i) => `face ${i + 1}: ${f.match ? "likely someone in the gallery" : "no match"}`)
        .join("; ") + ".";
    }
    setStatus(`${answer} ${found}${took}.`);
  }

  $("file").addEventListener("change", (ev) => {
    const f = ev.target.files[0];
    if (f) search(f, f.name);
    ev.target.value = "";
  });

  async function startCamera() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      setStatus("This browser has no camera access (getUserMedia); it needs https or localhost.", true);
      return;
    }
    try {
      state.stream = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: false });
    } catch (e) {
      setStatus("Camera not available: " + e.message, true);
      return;
    }
    const v = $("video");
    v.srcObject = state.stream;
    v.hidden = false;
    $("preview").hidden = true;
    $("camera-shoot").hidden = false;
    $("camera-stop").hidden = false;
    setStatus("Camera on: press “Take photo”.");
  }

  function stopCamera() {
    if (state.stream) state.stream.getTracks().forEach((t) => t.stop());
    state.stream = null;
    $("video").hidden = true;
    $("preview").hidden = false;
    $("camera-shoot").hidden = true;
    $("camera-stop").hidden = true;
  }

  function shoot() {
    const v = $("video");
    const c = document.createElement("canvas");
    c.width = v.videoWidth;
    c.height = v.videoHeight;
    c.getContext("2d").drawImage(v, 0, 0);
    stopCamera();
    c.toBlob((blob) => search(blob, "camera.jpg"), "image/jpeg", 0.92);
  }

  $("show-nearest").onclick = () => { state.showNearest = true; renderResults(); };
  $("camera-start").onclick = startCamera;
  $("camera-stop").onclick = stopCamera;
  $("camera-shoot").onclick = shoot;
  // A new model or faces mode answers the same photo again.
  function rerun() {
    if (state.last) search(state.last.blob, state.last.name);
  }
  $("model").onchange = () => { showCard(); rerun(); };
  $("faces").onchange = rerun;
  $("token").onchange = rerun;
  // Enter in the token field searches again (a password field fires no change on Enter)
  $("token").addEventListener("keydown", (ev) => { if (ev.key === "Enter") { ev.preventDefault(); rerun(); } });
  loadModels();
})();
