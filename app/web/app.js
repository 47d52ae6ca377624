/* The S²CRNet page: plain JavaScript, no framework, no build step, nothing fetched from elsewhere.
 *
 * One run asks the API twice with the same inputs, in parallel: POST /curves (format=cube, strength=1: the
 * curves to 6 decimals, the mismatch score in a header) and POST /harmonize (strength=0, PNG: the server's own
 * decoded, oriented and - for layer input - composed image, lossless). The strength slider then re-renders in
 * the page by the server's own rule (model/curves.py): LUT_s(v) = rint(255·(x + s·(C(x) − x))), x = v/255, and
 * out = (LUT_s(v)·m + v·(255 − m) + 127) / 255 inside the mask m — so it matches POST /harmonize at that strength
 * within a level (ties of the rounding only). The mask is the one the server used: for a composite, the page's
 * own mask canvas is what it sends; for layer input, the server composes a white copy of the matte on black
 * (one more small request), which is the placed, scaled, feathered matte exactly.
 * Downloads ask the server again at the slider's strength, so they are full resolution with ICC profile, and are
 * named after the input (photo.heic → photo_harmonized.jpg). A file the browser cannot decode (TIFF, HEIC) is
 * shown through POST /preview: the server's own decode of it, as PNG.
 * Masks without painting: a box dragged over the composite asks POST /mask for the object inside it, which
 * becomes the mask canvas (the brush then refines it); a plain photo (no transparency) chosen as the foreground
 * is cut out by POST /mask at once, and that matte is sent as its foreground_mask.
 */
"use strict";

const $ = (id) => document.getElementById(id);
const MISMATCH_HEADER = "X-Harmonization-Mismatch";
const state = {
  mode: "composite",
  composite: null, // {file, width, height}
  maskFile: null, // the chosen mask file when its size differs from the composite's: sent as is (the API says why)
  foreground: null, // {file, width, height, matte: Uint8Array, foundMatte: Blob|null (cut out by POST /mask)}
  foregroundMask: null, // File
  background: null, // {file, width, height}
  sent: null, // the inputs of the last run: [[name, value, filename]], reused by the downloads
  curves: null, // [r, g, b]: 256 floats each, the curves at strength 1
  base: null, // ImageData: what the server decoded (strength 0)
  mask: null, // Uint8Array: the mask weight of every pixel
  out: null, // ImageData: the render at the slider's strength
};

// --- small helpers ---------------------------------------------------------------------------------------------
function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function setStatus(text) {
  $("status").textContent = text;
}

async function decodeFile(blob) {
  // The pixels as stored: EXIF orientation applied (as the server does), no colour-profile conversion.
  const bitmap = await createImageBitmap(blob, {
    imageOrientation: "from-image", colorSpaceConversion: "none", premultiplyAlpha: "none"});
  const canvas = document.createElement("canvas");
  canvas.width = bitmap.width;
  canvas.height = bitmap.height;
  const context = canvas.getContext("2d", {willReadFrequently: true});
  context.drawImage(bitmap, 0, 0);
  bitmap.close();
  return context.getImageData(0, 0, canvas.width, canvas.height);
}

async function viewable(file) {
  // {image: ImageData, url: what an <img> can show}: the file itself, or the server's decode of what the browser
  // cannot read (TIFF, HEIC), upright as the server sees it.
  try {
    return {image: await decodeFile(file), url: URL.createObjectURL(file)};
  } catch (e) {
    const form = new FormData();
    form.append("image", file, file.name);
    const answer = await post("/preview", form, "blob");
    return {image: await decodeFile(answer.response), url: URL.createObjectURL(answer.response)};
  }
}

function stem(name) {
  return name.replace(/\.[^.]*$/, "") || "image";
}

function downloadName(suffix, extension) {
  // photo.heic → photo_harmonized.jpg: named after the composite, or the background of layer input
  const input = state.mode === "composite" ? state.composite : state.background;
  return `${stem(input ? input.file.name : "image")}_${suffix}.${extension}`;
}

function objectCentre(weights, width) {
  // The mask's centroid as a share of the width: where the divider starts, so the object shows both halves.
  let sum = 0, weighted = 0;
  for (let i = 0; i < weights.length; i++) {
    sum += weights[i];
    weighted += weights[i] * (i % width);
  }
  return sum ? (weighted / sum + 0.5) / width : 0.5;
}

function maskWeights(image) {
  // model/inputs.mask_to_pil's rule: an alpha channel that is not fully opaque is the mask, else Pillow's grey
  // level of the colours (ITU-R 601-2 luma with Pillow's integer rounding).
  const d = image.data, n = d.length / 4, out = new Uint8Array(n);
  let opaque = true;
  for (let i = 0; i < n && opaque; i++) opaque = d[4 * i + 3] === 255;
  for (let i = 0, p = 0; i < n; i++, p += 4) {
    out[i] = opaque ? (d[p] * 19595 + d[p + 1] * 38470 + d[p + 2] * 7471 + 0x8000) >> 16 : d[p + 3];
  }
  return out;
}

function greyImageData(weights, width, height) {
  const image = new ImageData(width, height), d = image.data;
  for (let i = 0, p = 0; i < weights.length; i++, p += 4) {
    d[p] = d[p + 1] = d[p + 2] = weights[i];
    d[p + 3] = 255;
  }
  return image;
}

function canvasBlob(canvas) {
  return new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
}

async function pngOf(width, height, draw) {
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  draw(canvas.getContext("2d"));
  return canvasBlob(canvas);
}

function rint(t) { // numpy's rint: halves to even
  const f = Math.floor(t), d = t - f;
  const r = d > 0.5 ? f + 1 : d < 0.5 ? f : (f % 2 === 0 ? f : f + 1);
  return Math.min(255, Math.max(0, r));
}

// --- talking to the API -----------------------------------------------------------------------------------------
class ApiError extends Error {}

function formWith(extra) {
  const form = new FormData();
  for (const [name, value, filename] of [...state.sent, ...Object.entries(extra)]) {
    if (filename) form.append(name, value, filename);
    else form.append(name, value);
  }
  return form;
}

async function errorSentence(xhr) {
  // Every API error is {"detail": "<a sentence>", "code": "..."}: show the sentence.
  try {
    const text = xhr.responseType === "blob" ? await xhr.response.text() : xhr.responseText;
    const detail = JSON.parse(text).detail;
    if (typeof detail === "string" && detail) return detail;
  } catch (e) { /* not our JSON: a proxy's page, say */ }
  return `the server answered ${xhr.status} ${xhr.statusText}`.trim();
}

function post(path, form, responseType, progress) {
  // XMLHttpRequest, not fetch: only it reports upload progress.
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", path);
    xhr.responseType = responseType;
    const key = $("api-key").value.trim();
    if (key) xhr.setRequestHeader("Authorization", `Bearer ${key}`);
    if (progress) xhr.upload.onprogress = (e) => e.lengthComputable && progress(e.loaded, e.total);
    xhr.onload = async () => {
      if (xhr.status >= 200 && xhr.status < 300) resolve(xhr);
      else reject(new ApiError(await errorSentence(xhr)));
    };
    xhr.onerror = () => reject(new ApiError("could not reach the server (is it still running?)"));
    xhr.send(form);
  });
}

function uploadTracker(parts) {
  // One bar for requests that upload at the same time.
  const loaded = new Array(parts).fill(0), total = new Array(parts).fill(0);
  const bar = $("progress");
  bar.value = 0;
  bar.hidden = false;
  return (index) => (done, size) => {
    loaded[index] = done;
    total[index] = size;
    const percent = (100 * loaded.reduce((a, b) => a + b)) / Math.max(1, total.reduce((a, b) => a + b));
    bar.value = percent;
    setStatus(percent < 100 ? `Uploading… ${Math.floor(percent)}%` : "Harmonizing…");
  };
}

// --- inputs --------------------------------------------------------------------------------------------------------
async function inputsOfThisRun() {
  if (state.mode === "composite") {
    if (!state.composite) throw new ApiError("choose a composite first");
    const mask = state.maskFile ? null : maskCanvas();
    const maskBlob = state.maskFile || await canvasBlob(mask);
    const weights = state.maskFile ? null
      : maskWeights(mask.getContext("2d").getImageData(0, 0, mask.width, mask.height));
    return {fields: [["composite", state.composite.file, state.composite.file.name], ["mask", maskBlob, "mask.png"]],
            weights};
  }
  if (!state.foreground || !state.background) throw new ApiError("choose a foreground and a background first");
  const fields = [["foreground", state.foreground.file, state.foreground.file.name],
                  ["background", state.background.file, state.background.file.name]];
  if (state.foregroundMask) fields.push(["foreground_mask", state.foregroundMask, state.foregroundMask.name]);
  else if (state.foreground.foundMatte) fields.push(["foreground_mask", state.foreground.foundMatte, "matte.png"]);
  for (const name of ["x", "y", "scale", "feather"]) fields.push([name, $(name).value]);
  return {fields, weights: null};
}

async function placedMatte() {
  // The server composes a white foreground with the page's matte onto a black background of the same size and
  // placement: its PNG answer is the placed (scaled, feathered) matte, the mask the real request was rendered with.
  const fg = state.foreground, bg = state.background;
  const white = await pngOf(fg.width, fg.height, (c) => { c.fillStyle = "#fff"; c.fillRect(0, 0, fg.width, fg.height); });
  const matte = await pngOf(fg.width, fg.height, (c) => c.putImageData(greyImageData(fg.matte, fg.width, fg.height), 0, 0));
  const black = await pngOf(bg.width, bg.height, (c) => { c.fillStyle = "#000"; c.fillRect(0, 0, bg.width, bg.height); });
  const form = new FormData();
  form.append("foreground", white, "white.png");
  form.append("foreground_mask", matte, "matte.png");
  form.append("background", black, "black.png");
  for (const name of ["x", "y", "scale", "feather"]) form.append(name, $(name).value);
  form.append("strength", "0");
  form.append("format", "png");
  const answer = await post("/harmonize", form, "blob");
  return maskWeights(await decodeFile(answer.response));
}

function parseCube(text) {
  const rows = text.split("\n").filter((line) => /^[0-9.]+ [0-9.]+ [0-9.]+$/.test(line.trim()));
  const curves = [new Float64Array(256), new Float64Array(256), new Float64Array(256)];
  rows.forEach((line, v) => line.trim().split(" ").forEach((value, c) => { curves[c][v] = Number(value); }));
  return curves;
}

// --- one run -------------------------------------------------------------------------------------------------------
async function run() {
  showError("");
  const button = $("run");
  button.disabled = true;
  delete $("result").dataset.rendered;
  const started = performance.now();
  try {
    await inputsRead; // a file still being read (a large mask, a cutout being found) is part of this run
    const inputs = await inputsOfThisRun();
    state.sent = inputs.fields;
    const track = uploadTracker(2);
    const [cube, base] = await Promise.all([
      post("/curves", formWith({format: "cube", strength: "1"}), "text", track(0)),
      post("/harmonize", formWith({format: "png", strength: "0"}), "blob", track(1)),
    ]);
    setStatus("Rendering…");
    state.curves = parseCube(cube.responseText);
    state.base = await decodeFile(base.response);
    state.mask = inputs.weights || await placedMatte();
    state.out = new ImageData(state.base.width, state.base.height);
    $("mismatch").textContent = Number(cube.getResponseHeader(MISMATCH_HEADER)).toFixed(2);
    for (const id of ["before", "result"]) {
      $(id).width = state.base.width;
      $(id).height = state.base.height;
    }
    $("before").getContext("2d").putImageData(state.base, 0, 0);
    $("download-layer").hidden = state.mode !== "layer";
    $("output").hidden = false;
    $("divider").value = Math.round(100 * objectCentre(state.mask, state.base.width));
    moveDivider();
    drawCurves();
    render();
    $("output").scrollIntoView({block: "start"});
    setStatus(`Done in ${((performance.now() - started) / 1000).toFixed(1)} s: ${state.base.width}×${state.base.height}`);
  } catch (error) {
    setStatus("");
    showError(error instanceof ApiError ? error.message : `the page failed: ${error}`);
  } finally {
    button.disabled = false;
    $("progress").hidden = true;
  }
}

function render() {
  if (!state.base) return;
  const s = Number($("strength").value);
  $("strength-value").textContent = s.toFixed(2);
  const lut = new Uint8Array(768);
  for (let c = 0; c < 3; c++) {
    for (let v = 0; v < 256; v++) {
      const x = v / 255;
      lut[c * 256 + v] = rint((x + s * (state.curves[c][v] - x)) * 255);
    }
  }
  const source = state.base.data, out = state.out.data, mask = state.mask;
  out.set(source);
  for (let i = 0, p = 0; i < mask.length; i++, p += 4) {
    const m = mask[i];
    if (m === 0) continue;
    for (let c = 0; c < 3; c++) {
      const v = source[p + c];
      out[p + c] = Math.floor((lut[c * 256 + v] * m + v * (255 - m) + 127) / 255);
    }
  }
  $("result").getContext("2d").putImageData(state.out, 0, 0);
  $("result").dataset.rendered = s.toFixed(2);
}

let renderQueued = false;
function renderSoon() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; render(); });
}

function drawCurves() {
  const svg = $("curves"), ns = "http://www.w3.org/2000/svg";
  svg.replaceChildren();
  const line = (points, colour, dashed) => {
    const path = document.createElementNS(ns, "polyline");
    path.setAttribute("points", points);
    path.setAttribute("fill", "none");
    path.setAttribute("stroke", colour);
    path.setAttribute("stroke-width", "2");
    if (dashed) path.setAttribute("stroke-dasharray", "6 4");
    svg.append(path);
  };
  line("0,255 255,0", "#777", true);
  ["#e0302a", "#23a03a", "#2a5bd7"].forEach((colour, c) => {
    line(Array.from(state.curves[c], (y, v) => `${v},${(255 - 255 * y).toFixed(2)}`).join(" "), colour, false);
  });
}

// --- downloads: the server's own output at the slider's strength ------------------------------------------------
async function download(path, extra, filename, responseType) {
  if (!state.sent) return;
  showError("");
  try {
    const track = uploadTracker(1);
    const answer = await post(path, formWith({strength: $("strength").value, ...extra}), responseType, track(0));
    const blob = responseType === "blob" ? answer.response : new Blob([answer.responseText], {type: "text/plain"});
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = filename;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 60_000);
    setStatus(`Downloaded ${filename}`);
  } catch (error) {
    setStatus("");
    showError(error instanceof ApiError ? error.message : `the page failed: ${error}`);
  } finally {
    $("progress").hidden = true;
  }
}

// --- composite + mask, and the brush ---------------------------------------------------------------------------
function maskCanvas() {
  return $("mask-canvas");
}

async function chooseComposite() {
  const file = $("composite").files[0];
  if (!file) return;
  showError("");
  let shown;
  try {
    shown = await viewable(file);
  } catch (e) {
    state.composite = null;
    showError(e instanceof ApiError ? e.message : `the page cannot read ${file.name}: ${e}`);
    return;
  }
  state.composite = {file, width: shown.image.width, height: shown.image.height};
  $("editor-image").src = shown.url;
  const canvas = maskCanvas();
  canvas.width = state.composite.width;
  canvas.height = state.composite.height;
  clearMask();
  $("editor").hidden = false;
  $("brush-tools").disabled = false;
  if ($("mask").files[0]) await chooseMask();
  await $("editor-image").decode().catch(() => {}); // laid out at its height before scrolling
  $("run").scrollIntoView({block: "nearest"}); // a tall picture pushes the button below the fold
}

async function chooseMask() {
  const file = $("mask").files[0];
  state.maskFile = null;
  if (!file || !state.composite) return;
  const {image} = await viewable(file);
  const {width, height} = state.composite;
  if (image.width !== width || image.height !== height) {
    state.maskFile = file; // sent as it is: the API's answer says what is wrong
    return;
  }
  maskCanvas().getContext("2d").putImageData(greyImageData(maskWeights(image), width, height), 0, 0);
}

function clearMask() {
  const canvas = maskCanvas(), context = canvas.getContext("2d");
  context.fillStyle = "#000";
  context.fillRect(0, 0, canvas.width, canvas.height);
  state.maskFile = null;
}

function setUpBrush() {
  const canvas = maskCanvas();
  let last = null;
  const at = (event) => {
    const box = canvas.getBoundingClientRect();
    return [(event.clientX - box.left) * canvas.width / box.width, (event.clientY - box.top) * canvas.height / box.height];
  };
  const stroke = (from, to) => {
    const context = canvas.getContext("2d");
    context.strokeStyle = context.fillStyle = $("brush-erase").checked ? "#000" : "#fff";
    context.lineWidth = Math.max(1, Number($("brush-size").value) / 100 * Math.min(canvas.width, canvas.height));
    context.lineCap = "round";
    context.beginPath();
    context.moveTo(...from);
    context.lineTo(...to);
    context.stroke();
  };
  let boxFrom = null; // "drag a box": where the drag began, in composite pixels
  canvas.addEventListener("pointerdown", (event) => {
    canvas.setPointerCapture(event.pointerId);
    event.preventDefault();
    if ($("brush-box").checked) {
      boxFrom = at(event);
      showBox(boxFrom, boxFrom);
      return;
    }
    state.maskFile = null; // painting: the page's mask is what is sent
    last = at(event);
    stroke(last, last);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (boxFrom !== null) {
      showBox(boxFrom, at(event));
      return;
    }
    if (last === null) return;
    const point = at(event);
    stroke(last, point);
    last = point;
  });
  canvas.addEventListener("pointerup", (event) => {
    if (boxFrom !== null) reading(findObject)(boxFrom, at(event));
    boxFrom = last = null;
  });
  canvas.addEventListener("pointercancel", () => {
    boxFrom = last = null;
    $("box-outline").hidden = true;
  });
  $("brush-size").addEventListener("input", () => { $("brush-size-value").textContent = `${$("brush-size").value}%`; });
  $("mask-clear").addEventListener("click", clearMask);
}

function boxOf(from, to) {
  // Composite pixels, x1 and y1 exclusive, inside the image.
  const {width, height} = state.composite;
  const clamp = (v, top) => Math.min(top, Math.max(0, Math.round(v)));
  return [clamp(Math.min(from[0], to[0]), width), clamp(Math.min(from[1], to[1]), height),
          clamp(Math.max(from[0], to[0]), width), clamp(Math.max(from[1], to[1]), height)];
}

function showBox(from, to) {
  const [x0, y0, x1, y1] = boxOf(from, to), {width, height} = state.composite, outline = $("box-outline");
  outline.style.left = `${100 * x0 / width}%`;
  outline.style.top = `${100 * y0 / height}%`;
  outline.style.width = `${100 * (x1 - x0) / width}%`;
  outline.style.height = `${100 * (y1 - y0) / height}%`;
  outline.hidden = false;
}

async function askForMask(file, box) {
  // POST /mask: the object's mask (inside `box`, composite pixels) as the server found it → weights per pixel.
  const form = new FormData();
  form.append("composite", file, file.name);
  if (box) form.append("box", box.join(","));
  const answer = await post("/mask", form, "blob");
  return {blob: answer.response, weights: maskWeights(await decodeFile(answer.response))};
}

async function findObject(from, to) {
  const box = boxOf(from, to);
  showError("");
  setStatus("Finding the object in the box…");
  try {
    const {width, height} = state.composite;
    const found = await askForMask(state.composite.file, box);
    maskCanvas().getContext("2d").putImageData(greyImageData(found.weights, width, height), 0, 0);
    state.maskFile = null; // the page's mask canvas is what is sent
    $("brush-paint").checked = true; // the brush refines what was found
    $("mask-canvas").dataset.found = box.join(",");
    setStatus("Found the object: refine the mask with the brush, then harmonize");
  } catch (error) {
    setStatus("");
    showError(error instanceof ApiError ? error.message : `the page failed: ${error}`);
  } finally {
    $("box-outline").hidden = true;
  }
}

// --- foreground + background, placed by dragging ---------------------------------------------------------------
async function chooseForeground() {
  const file = $("foreground").files[0];
  const maskFile = $("foreground-mask").files[0] || null;
  state.foregroundMask = maskFile;
  if (!file) return;
  const {image} = await viewable(file);
  let matte = new Uint8Array(image.width * image.height), opaque = true;
  for (let i = 0; i < matte.length; i++) {
    matte[i] = image.data[4 * i + 3]; // RGBA: its alpha; RGB: 255
    opaque = opaque && matte[i] === 255;
  }
  let foundMatte = null;
  if (maskFile) {
    const maskImage = (await viewable(maskFile)).image;
    if (maskImage.width === image.width && maskImage.height === image.height) matte = maskWeights(maskImage);
  } else if (opaque) { // a plain photo: the server cuts its subject out, as POST /harmonize would
    setStatus("Cutting out the foreground's subject…");
    try {
      const found = await askForMask(file, null);
      [matte, foundMatte] = [found.weights, found.blob];
      setStatus("The foreground was a plain photo: its subject was cut out automatically");
    } catch (error) {
      setStatus("");
      showError(error instanceof ApiError ? error.message : `the page failed: ${error}`);
    }
  }
  const firstTime = !state.foreground;
  state.foreground = {file, width: image.width, height: image.height, matte, foundMatte};
  const shown = $("stage-foreground"); // the cutout as it will be pasted
  shown.width = image.width;
  shown.height = image.height;
  for (let i = 0; i < matte.length; i++) image.data[4 * i + 3] = matte[i];
  shown.getContext("2d").putImageData(image, 0, 0);
  if (firstTime) centreForeground();
  placeForeground();
}

async function chooseBackground() {
  const file = $("background").files[0];
  if (!file) return;
  const {image, url} = await viewable(file);
  state.background = {file, width: image.width, height: image.height};
  $("stage-background").src = url;
  centreForeground();
  placeForeground();
}

function centreForeground() {
  const fg = state.foreground, bg = state.background;
  if (!fg || !bg) return;
  const scale = Math.min(1, Math.floor(100 * Math.min(0.6 * bg.width / fg.width, 0.6 * bg.height / fg.height)) / 100);
  $("scale").value = Math.max(0.01, scale);
  $("x").value = Math.round((bg.width - fg.width * scale) / 2);
  $("y").value = Math.round((bg.height - fg.height * scale) / 2);
}

function placeForeground() {
  const fg = state.foreground, bg = state.background;
  $("stage").hidden = $("stage-hint").hidden = !bg;
  const shown = $("stage-foreground");
  shown.hidden = !fg || !bg;
  if (!fg || !bg) return;
  const scale = Number($("scale").value) || 1;
  shown.style.left = `${100 * Number($("x").value) / bg.width}%`;
  shown.style.top = `${100 * Number($("y").value) / bg.height}%`;
  shown.style.width = `${100 * fg.width * scale / bg.width}%`;
  shown.style.height = `${100 * fg.height * scale / bg.height}%`;
}

function setUpStage() {
  const shown = $("stage-foreground");
  let drag = null, pinch = null;
  const pointers = new Map(); // pointerId → [clientX, clientY]: one drags, two pinch
  const spread = () => { const [a, b] = [...pointers.values()]; return Math.hypot(a[0] - b[0], a[1] - b[1]) || 1; };
  const pixelsPerScreenPixel = () => state.background.width / $("stage-background").getBoundingClientRect().width;
  const setScale = (scale) => {
    $("scale").value = Math.min(20, Math.max(0.01, Math.round(scale * 100) / 100));
    placeForeground();
  };
  const rescale = (factor) => setScale((Number($("scale").value) || 1) * factor);
  shown.addEventListener("pointerdown", (event) => {
    shown.setPointerCapture(event.pointerId);
    pointers.set(event.pointerId, [event.clientX, event.clientY]);
    if (pointers.size === 2) { // a second finger: pinch to scale, no more dragging
      drag = null;
      pinch = {spread: spread(), scale: Number($("scale").value) || 1};
    } else if (pointers.size === 1) {
      drag = {x: Number($("x").value), y: Number($("y").value), clientX: event.clientX, clientY: event.clientY};
    }
    event.preventDefault();
  });
  shown.addEventListener("pointermove", (event) => {
    if (!pointers.has(event.pointerId)) return;
    pointers.set(event.pointerId, [event.clientX, event.clientY]);
    if (pinch && pointers.size === 2) {
      setScale(pinch.scale * spread() / pinch.spread);
      return;
    }
    if (!drag) return;
    const k = pixelsPerScreenPixel();
    $("x").value = Math.round(drag.x + (event.clientX - drag.clientX) * k);
    $("y").value = Math.round(drag.y + (event.clientY - drag.clientY) * k);
    placeForeground();
  });
  for (const type of ["pointerup", "pointercancel"]) {
    shown.addEventListener(type, (event) => {
      pointers.delete(event.pointerId);
      drag = pinch = null;
    });
  }
  shown.addEventListener("wheel", (event) => { event.preventDefault(); rescale(Math.exp(-event.deltaY / 500)); });
  shown.addEventListener("keydown", (event) => {
    const step = event.shiftKey ? 10 : 1;
    const moves = {ArrowLeft: ["x", -step], ArrowRight: ["x", step], ArrowUp: ["y", -step], ArrowDown: ["y", step]};
    if (moves[event.key]) {
      const [name, delta] = moves[event.key];
      $(name).value = Number($(name).value) + delta;
      placeForeground();
    } else if (event.key === "+" || event.key === "=") rescale(1.05);
    else if (event.key === "-") rescale(1 / 1.05);
    else return;
    event.preventDefault();
  });
  for (const name of ["x", "y", "scale"]) $(name).addEventListener("input", placeForeground);
}

// --- wiring ------------------------------------------------------------------------------------------------------
function chooseMode() {
  state.mode = $("mode-layer").checked ? "layer" : "composite";
  $("composite-inputs").hidden = state.mode !== "composite";
  $("layer-inputs").hidden = state.mode !== "layer";
}

function moveDivider() {
  const at = $("divider").value;
  $("result").style.clipPath = `inset(0 0 0 ${at}%)`;
  $("divider-line").style.left = `${at}%`;
}

async function readServerInfo() {
  try {
    const info = await (await fetch("/info")).json();
    if (info.model && typeof info.model.strength === "number") {
      $("strength").value = info.model.strength; // the weights' own strength: what the API applies by default
      $("strength-value").textContent = info.model.strength.toFixed(2);
    }
    if (info.auth) $("key-hint").textContent = "(this server needs one)";
  } catch (e) { /* the page works without it */ }
}

function guarded(handler) {
  return (...args) => handler(...args).catch((error) => showError(`the page failed: ${error}`));
}

let inputsRead = Promise.resolve(); // the last chosen file's reading (decode, mask, cutout): a run waits for it
function reading(handler) {
  return (...args) => {
    const done = guarded(handler)(...args);
    inputsRead = inputsRead.then(() => done);
    return done;
  };
}

document.addEventListener("DOMContentLoaded", () => {
  for (const id of ["mode-composite", "mode-layer"]) $(id).addEventListener("change", chooseMode);
  $("composite").addEventListener("change", reading(chooseComposite));
  $("mask").addEventListener("change", reading(chooseMask));
  $("foreground").addEventListener("change", reading(chooseForeground));
  $("foreground-mask").addEventListener("change", reading(chooseForeground));
  $("background").addEventListener("change", reading(chooseBackground));
  $("run").addEventListener("click", run);
  $("strength").addEventListener("input", renderSoon);
  $("divider").addEventListener("input", moveDivider);
  const format = () => $("download-format").value;
  $("download").addEventListener("click", () => download("/harmonize", {format: format()},
                                                          downloadName("harmonized", format() === "png" ? "png" : "jpg"), "blob"));
  $("download-layer").addEventListener("click", () => download("/harmonize", {output: "layer", format: "png"},
                                                                downloadName("layer", "png"), "blob"));
  $("download-cube").addEventListener("click", () => download("/curves", {format: "cube"}, downloadName("curves", "cube"),
                                                               "text"));
  $("download-json").addEventListener("click", () => download("/curves", {format: "json"}, downloadName("curves", "json"),
                                                               "text"));
  // a phone or tablet (its main pointer is a finger): the layer hint speaks of fingers and pinching
  if (matchMedia("(pointer: coarse)").matches) document.body.classList.add("touch");
  setUpBrush();
  setUpStage();
  chooseMode();
  moveDivider();
  readServerInfo();
});
