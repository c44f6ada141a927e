// The explorer's page script (winft_lightning.explorer): plain JS, no library, no network.
// It decodes the data Python packed (explorer/pack.py) and draws it. It derives nothing that
// rounds: windows, DIP order, drop counts, U' hits and U's row argmax are Python's; the only
// set it forms is the responsive field S_p = {p} ∪ {j in window(p) : j not dropped} (SPEC 4).
"use strict";
(function () {
  let DATA;
  try {
    DATA = JSON.parse(document.getElementById("explorer-data").textContent);
  } catch (err) {
    window.explorerState = () => ({ ready: false, error: "unreadable data: " + String(err) });
    document.getElementById("error").textContent = "The explorer's data cannot be read: " + String(err);
    return;
  }
  const GH = DATA.grid[0], GW = DATA.grid[1], N = DATA.n;
  const CELL = Math.max(4, Math.floor(288 / Math.max(GH, GW)));
  const CW = CELL * GW, CH = CELL * GH;
  const state = {
    ready: false, error: null, image: 0, patch: (GH >> 1) * GW + (GW >> 1), pinned: false,
    cursor: null, alpha: DATA.start.alpha, beta: DATA.start.beta, block: DATA.blocks - 1,
    head: -1, gridLines: true, sqrt: false,
  };
  const drawn = {};
  const timing = { readyMs: null, lastDrawMs: null, lastFrameMs: null, draws: 0, clicks: [] };
  let IMAGES = [];
  let LUT = null;
  const $ = (id) => document.getElementById(id);

  // ---------------------------------------------------------------- decoding

  function bytesOf(b64) {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  async function inflate(bytes) {
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  async function decode(arr) {
    let bytes = bytesOf(arr.data);
    if (arr.deflate) bytes = await inflate(bytes);
    const buf = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
    if (arr.dtype === "u8") return new Uint8Array(buf);
    if (arr.dtype === "u16") return new Uint16Array(buf);
    if (arr.dtype === "f32") return new Float32Array(buf);
    throw new Error("unknown dtype " + arr.dtype);
  }

  async function decodeRows(block) {
    return block ? { q: await decode(block.q), scale: await decode(block.scale) } : null;
  }

  async function decodeImage(entry) {
    const image = new Blob([bytesOf(entry.image.data)], { type: entry.image.mime });
    return {
      name: entry.name, bitmap: await createImageBitmap(image),
      u: await decodeRows(entry.u),
      uArgmax: await decode(entry.u_argmax),
      hits: await Promise.all(entry.hits.map(decode)),
      windows: await Promise.all(entry.windows.map(decode)),
      order: await decode(entry.order),
      attention: await decodeRows(entry.attention),
      headAttention: await decodeRows(entry.head_attention),
      rollout: entry.rollout ? await decode(entry.rollout) : null,
      distance: entry.distance,
      winft: await decodeRows(entry.winft),
    };
  }

  // ---------------------------------------------------------------- the numbers

  const rowLevels = (rows, r) => rows.q.subarray(r * N, (r + 1) * N);
  function rowValues(rows, r) {
    const q = rowLevels(rows, r), s = rows.scale[r], out = new Array(N);
    for (let j = 0; j < N; j++) out[j] = q[j] * s;
    return out;
  }

  function attentionRows(im) {  // [rows, row index of p] for the chosen block and head
    if (state.head < 0 || !im.headAttention) return [im.attention, state.block * N + state.patch];
    return [im.headAttention, (state.block * DATA.heads + state.head) * N + state.patch];
  }

  function windowOf(im, p) {
    const w = im.windows[state.alpha];
    return [w[4 * p], w[4 * p + 1], w[4 * p + 2], w[4 * p + 3]];  // x_l, y_t, x_r, y_b
  }

  function droppedMask(im) {
    const mask = new Uint8Array(N), drop = DATA.drops[state.beta], cells = [];
    for (let i = 0; i < drop; i++) { mask[im.order[i]] = 1; cells.push(im.order[i]); }
    return [mask, cells.sort((a, b) => a - b)];
  }

  function hitsOf(im, p) {
    const bits = im.hits[state.alpha], out = [];
    for (let j = 0; j < N; j++) {
      const i = p * N + j;
      if ((bits[i >> 3] >> (i & 7)) & 1) out.push(j);
    }
    return out;
  }

  // ---------------------------------------------------------------- drawing

  const layer = document.createElement("canvas");
  layer.width = GW; layer.height = GH;
  const layerCtx = layer.getContext("2d");

  function base(ctx, im) {
    ctx.imageSmoothingEnabled = true;
    ctx.clearRect(0, 0, CW, CH);
    ctx.drawImage(im.bitmap, 0, 0, CW, CH);
    ctx.fillStyle = "rgba(0,0,0,0.25)";
    ctx.fillRect(0, 0, CW, CH);
  }

  const SQRT = new Uint8Array(256).map((_, i) => Math.round(Math.sqrt(i / 255) * 255));

  function heat(ctx, levels, alpha) {  // levels: N values in 0..255, one per cell
    const img = layerCtx.createImageData(GW, GH), d = img.data;
    for (let j = 0; j < N; j++) {
      const c = 3 * (state.sqrt ? SQRT[levels[j]] : levels[j]);
      d[4 * j] = LUT[c]; d[4 * j + 1] = LUT[c + 1]; d[4 * j + 2] = LUT[c + 2]; d[4 * j + 3] = alpha;
    }
    layerCtx.putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(layer, 0, 0, CW, CH);
  }

  function scaled(values, top) {
    const out = new Uint8Array(N);
    for (let j = 0; j < N; j++) out[j] = top > 0 ? Math.round(Math.min(1, values[j] / top) * 255) : 0;
    return out;
  }

  function fillCells(ctx, cells, style) {
    ctx.fillStyle = style;
    for (const j of cells) ctx.fillRect((j % GW) * CELL, Math.floor(j / GW) * CELL, CELL, CELL);
  }

  function box(ctx, x, y, w, h, style, width) {
    ctx.strokeStyle = style; ctx.lineWidth = width;
    ctx.strokeRect(x * CELL + width / 2, y * CELL + width / 2, w * CELL - width, h * CELL - width);
  }

  function finish(ctx) {
    if (state.gridLines && CELL >= 6) {
      ctx.strokeStyle = "rgba(255,255,255,0.16)"; ctx.lineWidth = 1;
      ctx.beginPath();
      for (let x = 1; x < GW; x++) { ctx.moveTo(x * CELL + 0.5, 0); ctx.lineTo(x * CELL + 0.5, CH); }
      for (let y = 1; y < GH; y++) { ctx.moveTo(0, y * CELL + 0.5); ctx.lineTo(CW, y * CELL + 0.5); }
      ctx.stroke();
    }
    const p = state.patch;
    box(ctx, p % GW, Math.floor(p / GW), 1, 1, state.pinned ? "#00e5ff" : "#7fdfff", 2);
  }

  function drawU(ctx, im) {
    const p = state.patch;
    base(ctx, im);
    heat(ctx, rowLevels(im.u, p), 190);
    const hits = hitsOf(im, p), m = Math.max(2, Math.round(CELL / 3));
    ctx.fillStyle = "#ffffff";
    for (const j of hits) {
      ctx.fillRect((j % GW) * CELL + (CELL - m) / 2, Math.floor(j / GW) * CELL + (CELL - m) / 2, m, m);
    }
    const top = im.uArgmax[p];
    ctx.strokeStyle = "#ff40ff"; ctx.lineWidth = 2;
    ctx.beginPath();
    ctx.arc((top % GW + 0.5) * CELL, (Math.floor(top / GW) + 0.5) * CELL, CELL * 0.45, 0, 2 * Math.PI);
    ctx.stroke();
    finish(ctx);
    drawn.hits = hits; drawn.uArgmax = top; drawn.uRow = rowValues(im.u, p);
  }

  function drawField(ctx, im) {
    const p = state.patch, [xl, yt, xr, yb] = windowOf(im, p), [mask, dropped] = droppedMask(im);
    const windowCells = [], field = [];
    for (let y = yt; y <= yb; y++) {
      for (let x = xl; x <= xr; x++) {
        const j = y * GW + x;
        windowCells.push(j);
        if (!mask[j] || j === p) field.push(j);  // S_p = {p} ∪ (window(p) \ D)
      }
    }
    if (!field.includes(p)) { field.push(p); field.sort((a, b) => a - b); }  // p outside its window
    base(ctx, im);
    fillCells(ctx, dropped, "rgba(70,70,70,0.85)");
    fillCells(ctx, field, "rgba(40,210,90,0.5)");
    box(ctx, xl, yt, xr - xl + 1, yb - yt + 1, "#ffd400", 2);
    finish(ctx);
    drawn.window = windowCells; drawn.field = field; drawn.dropped = dropped;
    drawn.windowBox = [xl, yt, xr, yb];
  }

  function drawW(ctx, im) {
    const values = rowValues(im.winft, state.patch);
    base(ctx, im);
    heat(ctx, scaled(values, DATA.blocks), 190);
    finish(ctx);
    drawn.wRow = values;
  }

  function drawAttention(ctx, im) {
    const [rows, r] = attentionRows(im);
    base(ctx, im);
    heat(ctx, rowLevels(rows, r), 190);
    finish(ctx);
    drawn.attnRow = rowValues(rows, r);
    drawn.attnBlock = state.block; drawn.attnHead = rows === im.attention ? -1 : state.head;
  }

  function drawDip(ctx, im) {
    const [, dropped] = droppedMask(im);
    base(ctx, im);
    fillCells(ctx, dropped, "rgba(70,70,70,0.9)");
    finish(ctx);
    drawn.dipDropped = dropped;
  }

  function drawRollout(ctx, im) {
    let top = 0;
    for (let j = 0; j < N; j++) top = Math.max(top, im.rollout[j]);
    base(ctx, im);
    heat(ctx, scaled(im.rollout, top), 190);
    finish(ctx);
  }

  // ---------------------------------------------------------------- text

  const fmt = (v) => (v === 0 ? "0" : Math.abs(v) >= 0.01 && Math.abs(v) < 1000 ? v.toFixed(4) : v.toExponential(3));
  const xy = (j) => `(${j % GW}, ${Math.floor(j / GW)})`;

  function readout(im) {
    const p = state.patch, [xl, yt, xr, yb] = windowOf(im, p);
    const parts = [
      `<span>patch p = ${p} ${xy(p)}${state.pinned ? " pinned (click it again to free)" : ""}</span>`,
      `<span>window ${xr - xl + 1} × ${yb - yt + 1} = ${(xr - xl + 1) * (yb - yt + 1)} patches</span>`,
      `<span>field |S_p| = ${drawn.field.length}</span>`,
      `<span>U' hits in row p: ${drawn.hits.length} (T = ${DATA.hit_counts[state.alpha]} in U)</span>`,
      `<span>|D| = ${DATA.drops[state.beta]} of ${N}</span>`,
    ];
    const j = state.cursor;
    if (j !== null) {
      let s = `<span>cursor ${xy(j)}: U[p, j] = ${fmt(drawn.uRow[j])}`;
      if (drawn.attnRow) s += ` · attention = ${fmt(drawn.attnRow[j])}`;
      if (drawn.wRow) s += ` · ΣW = ${fmt(drawn.wRow[j])}`;
      parts.push(s + "</span>");
    }
    $("readout").innerHTML = parts.join("");
  }

  function distanceTable(im) {
    if (!im.distance) { $("distance").innerHTML = ""; return; }
    const heads = im.distance[0].length;
    let lo = Infinity, hi = -Infinity;
    for (const row of im.distance) for (const v of row) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    let html = '<div class="caption">mean attention distance, in patches (per block and head; darker: farther)</div><table><tr><th>block</th>';
    for (let h = 0; h < heads; h++) html += `<th>head ${h + 1}</th>`;
    html += "<th>mean</th></tr>";
    im.distance.forEach((row, b) => {
      const mean = row.reduce((a, v) => a + v, 0) / heads;
      html += `<tr${b === state.block ? ' class="current"' : ""}><th>${b + 1}</th>`;
      for (const v of [...row, mean]) {
        const light = 96 - 44 * (hi > lo ? (v - lo) / (hi - lo) : 0);  // darker: farther
        html += `<td style="background:hsl(215,70%,${light.toFixed(0)}%)">${v.toFixed(2)}</td>`;
      }
      html += "</tr>";
    });
    $("distance").innerHTML = html + "</table>";
  }

  // ---------------------------------------------------------------- state -> page

  function redraw() {
    const im = IMAGES[state.image];
    drawU($("panel-u").getContext("2d"), im);
    drawField($("panel-field").getContext("2d"), im);
    drawn.wRow = null; drawn.attnRow = null;
    if (im.winft) drawW($("panel-w").getContext("2d"), im);
    if (im.attention) drawAttention($("panel-attn").getContext("2d"), im);
    drawDip($("panel-dip").getContext("2d"), im);
    if (im.rollout) drawRollout($("panel-rollout").getContext("2d"), im);
    $("alpha-value").textContent = `${DATA.alphas[state.alpha]} (T = ${DATA.hit_counts[state.alpha]})`;
    $("beta-value").textContent = `${DATA.betas[state.beta]} (|D| = ${DATA.drops[state.beta]})`;
    const head = state.head < 0 || !im.headAttention ? "mean over heads" : `head ${state.head + 1}`;
    $("attn-which").textContent = `block ${state.block + 1}, ${head}`;
    readout(im);
    distanceTable(im);
    document.querySelectorAll("#images button").forEach((b, i) => b.classList.toggle("active", i === state.image));
  }

  function timed(ev, kind) {
    const t0 = performance.now();
    redraw();
    const t1 = performance.now();
    timing.lastDrawMs = t1 - t0;
    timing.draws += 1;
    const start = ev && ev.timeStamp ? ev.timeStamp : t0;
    requestAnimationFrame(() => {
      timing.lastFrameMs = performance.now() - start;
      if (kind === "click") timing.clicks.push({ drawMs: t1 - t0, frameMs: timing.lastFrameMs });
    });
  }

  function cellAt(canvas, ev) {
    const r = canvas.getBoundingClientRect();
    const x = Math.min(GW - 1, Math.max(0, Math.floor(((ev.clientX - r.left) / r.width) * GW)));
    const y = Math.min(GH - 1, Math.max(0, Math.floor(((ev.clientY - r.top) / r.height) * GH)));
    return y * GW + x;
  }

  function bind() {
    document.querySelectorAll("#panels canvas").forEach((canvas) => {
      canvas.width = CW; canvas.height = CH;
      canvas.style.width = CW + "px"; canvas.style.height = CH + "px";
      canvas.addEventListener("mousemove", (ev) => {
        const c = cellAt(canvas, ev);
        if (c === state.cursor) return;
        state.cursor = c;
        if (!state.pinned) state.patch = c;
        timed(ev, "hover");
      });
      canvas.addEventListener("click", (ev) => {
        const c = cellAt(canvas, ev);
        if (state.pinned && c === state.patch) state.pinned = false;
        else { state.patch = c; state.pinned = true; }
        state.cursor = c;
        timed(ev, "click");
      });
      canvas.addEventListener("mouseleave", () => { state.cursor = null; readout(IMAGES[state.image]); });
    });
    const slider = (id, key) => {
      const el = $(id);
      el.addEventListener("input", (ev) => { state[key] = Number(el.value); timed(ev, key); });
    };
    slider("alpha", "alpha"); slider("beta", "beta");
    $("block").addEventListener("change", (ev) => { state.block = Number($("block").value); timed(ev, "block"); });
    $("head").addEventListener("change", (ev) => { state.head = Number($("head").value); timed(ev, "head"); });
    $("grid-lines").addEventListener("change", (ev) => { state.gridLines = $("grid-lines").checked; timed(ev, "grid"); });
    $("sqrt").addEventListener("change", (ev) => { state.sqrt = $("sqrt").checked; timed(ev, "sqrt"); });
  }

  function controls() {
    const a = $("alpha"), b = $("beta");
    a.max = String(DATA.alphas.length - 1); a.value = String(state.alpha);
    b.max = String(DATA.betas.length - 1); b.value = String(state.beta);
    for (let i = 0; i < DATA.blocks; i++) $("block").add(new Option(String(i + 1), String(i)));
    $("block").value = String(state.block);
    $("head").add(new Option("mean", "-1"));
    if (IMAGES.some((im) => im.headAttention)) {
      for (let h = 0; h < DATA.heads; h++) $("head").add(new Option(String(h + 1), String(h)));
    } else $("head").disabled = true;
    DATA.images.forEach((entry, i) => {
      const button = document.createElement("button");
      button.textContent = entry.name;
      button.addEventListener("click", (ev) => { state.image = i; timed(ev, "image"); });
      $("images").appendChild(button);
    });
    const any = (key) => IMAGES.some((im) => im[key]);
    $("fig-w").classList.toggle("hidden", !any("winft"));
    $("fig-attn").classList.toggle("hidden", !any("attention"));
    $("fig-rollout").classList.toggle("hidden", !any("rollout"));
    $("w-blocks").textContent = String(DATA.blocks);
    const sourceLine = Object.entries(DATA.source).map(([k, v]) => `${k}: ${v}`).join(" · ");
    $("source").textContent = `${DATA.images.length} image(s), grid ${GH} × ${GW} (N = ${N}), ` +
      `${DATA.blocks} blocks × ${DATA.heads} heads${sourceLine ? " · " + sourceLine : ""}`;
    $("note").textContent = "Hover a patch to follow it, click to pin it. Maps are stored with 8 bits " +
      "per value and one scale per row: a value is off by at most 1/510 of its row's maximum. The " +
      "windows, the DIP order, the drop counts |D| = floor(beta N), the U' hits and each U row's " +
      "maximum are stored as Python computed them; the page forms only S_p = {p} ∪ (window(p) \\ D).";
  }

  window.explorerState = function () {
    const copy = {};
    for (const [k, v] of Object.entries(drawn)) copy[k] = Array.isArray(v) ? v.slice() : v;
    return {
      ready: state.ready, error: state.error, image: state.image, patch: state.patch,
      pinned: state.pinned, cursor: state.cursor, alphaIndex: state.alpha,
      alpha: DATA.alphas[state.alpha], betaIndex: state.beta, beta: DATA.betas[state.beta],
      drop: DATA.drops[state.beta], block: state.block, head: state.head, grid: [GH, GW],
      cell: CELL, drawn: copy,
      timing: { ...timing, clicks: timing.clicks.slice() },
    };
  };

  async function init() {
    try {
      LUT = await decode(DATA.colormap);
      IMAGES = await Promise.all(DATA.images.map(decodeImage));
      controls();
      bind();
      redraw();
      timing.readyMs = performance.now();  // since the page's navigation started
      state.ready = true;
    } catch (err) {
      state.error = String(err && err.stack ? err.stack : err);
      $("error").textContent = "The explorer could not start: " + String(err);
    }
  }

  init();
})();
