// The BabyChain run inspector: reads the public API with the key the user typed and shows runs and their steps.
// No framework, no build step, nothing loaded from elsewhere. Everything the API returns (prompts, errors,
// metadata, URLs) reaches the page as text nodes or checked http(s) URLs, never as markup.
"use strict";

(() => {
  const ACTIVE = new Set(["queued", "running"]);
  const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
  // Each open page spends the key's requests (and its rate limit, where there is one): a run page 30 a minute while
  // the run is active, the list 12 a minute; none while the tab is hidden.
  const RUN_POLL_MS = 2000;
  const LIST_POLL_MS = 5000;
  const RETRY_MAX_MS = 15000;
  const KEY_ITEM = "babychain.inspector.key";
  const BASE_ITEM = "babychain.inspector.api";

  // ------------------------------------------------------------------------------------------------ small helpers

  const $ = (selector) => document.querySelector(selector);

  // A new element; string children become text nodes (Node.append never parses markup).
  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  // An http(s) URL as a string, or null: nothing else may become a link or a media source.
  function safeUrl(value) {
    if (typeof value !== "string") return null;
    try {
      const url = new URL(value, window.location.href);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
    } catch {
      return null;
    }
  }

  // A URL without its query: presigned URLs change on every read, the file behind them does not.
  function fileIdentity(url) {
    const parsed = new URL(url);
    return parsed.origin + parsed.pathname;
  }

  function link(url, label) {
    const href = safeUrl(url);
    if (!href) return el("span", "muted", label);
    const a = el("a", null, label);
    a.href = href;
    a.target = "_blank";
    a.rel = "noopener noreferrer";
    return a;
  }

  function parseTime(value) {
    if (typeof value !== "string") return null;
    // Postgres gives microseconds; Date wants at most milliseconds.
    const ms = Date.parse(value.replace(/(\.\d{3})\d+/, "$1"));
    return Number.isNaN(ms) ? null : ms;
  }

  function clock(value) {
    const ms = parseTime(value);
    return ms === null ? "–" : new Date(ms).toLocaleTimeString([], { hour12: false });
  }

  function dateTime(value) {
    const ms = parseTime(value);
    if (ms === null) return "–";
    const d = new Date(ms);
    return `${d.toLocaleDateString()} ${d.toLocaleTimeString([], { hour12: false })}`;
  }

  function duration(ms) {
    if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
    const seconds = Math.max(0, ms) / 1000;
    if (seconds < 60) return `${seconds.toFixed(1)} s`;
    const minutes = Math.floor(seconds / 60);
    if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
    return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
  }

  // From `start` to `end`, or to now while it is still going.
  function span(start, end) {
    const a = parseTime(start);
    if (a === null) return null;
    const b = parseTime(end);
    return (b === null ? Date.now() : b) - a;
  }

  function money(amount, currency) {
    if (typeof amount !== "number") return "–";
    const digits = amount !== 0 && Math.abs(amount) < 0.01 ? 4 : 2;
    return `${amount.toFixed(digits)} ${currency || ""}`.trim();
  }

  function statusBadge(node, status) {
    node.textContent = status || "–";
    node.dataset.status = status || "";
  }

  // The text a step was asked for: `prompt`, or the text items of Seedance's `content[]`.
  function promptOf(input, stepKey) {
    const params = input && typeof input === "object" ? input[`${stepKey}_params`] : null;
    if (!params || typeof params !== "object") return "";
    if (typeof params.prompt === "string") return params.prompt;
    if (Array.isArray(params.content)) {
      return params.content
        .filter((item) => item && item.type === "text" && typeof item.text === "string")
        .map((item) => item.text)
        .join(" ");
    }
    return "";
  }

  function firstPrompt(run) {
    for (const step of run.steps || []) {
      const text = promptOf(run.input, step.step_key);
      if (text) return text;
    }
    return "";
  }

  // ------------------------------------------------------------------------------------------------ settings

  function settings() {
    const store = window.sessionStorage;
    return { base: store.getItem(BASE_ITEM) || "", key: store.getItem(KEY_ITEM) || "" };
  }

  function checkBase(value) {
    const text = value.trim().replace(/\/+$/, "");
    if (!text) return "";
    const url = safeUrl(text);
    if (!url || !/^https?:\/\//i.test(text)) throw new Error("The API base URL must start with https:// or http://.");
    return url.replace(/\/+$/, "");
  }

  function checkKey(value) {
    const key = value.trim();
    if (!/^[\x21-\x7e]*$/.test(key)) throw new Error("An API key has no spaces or non-ASCII characters.");
    return key;
  }

  // `#key=…&api=…` (what `babychain serve` prints) is taken into sessionStorage and removed from the address bar.
  function takeFragment() {
    if (window.location.hash.length < 2) return;
    const params = new URLSearchParams(window.location.hash.slice(1));
    try {
      if (params.has("api")) window.sessionStorage.setItem(BASE_ITEM, checkBase(params.get("api")));
      if (params.has("key")) window.sessionStorage.setItem(KEY_ITEM, checkKey(params.get("key")));
    } catch (error) {
      notice(error.message);
    }
    window.history.replaceState(null, "", window.location.pathname + window.location.search);
  }

  function showSettings() {
    const { base, key } = settings();
    $("#api-base").value = base;
    $("#api-key").value = key;
    $("#api-label").textContent = `${base || "this server"} · ${key ? "key set" : "no key"}`;
    if (!key) $("#settings").open = true;
  }

  function setUpSettings(onChange) {
    showSettings();
    $("#settings-form").addEventListener("submit", (event) => {
      event.preventDefault();
      try {
        const base = checkBase($("#api-base").value);
        const key = checkKey($("#api-key").value);
        window.sessionStorage.setItem(BASE_ITEM, base);
        window.sessionStorage.setItem(KEY_ITEM, key);
      } catch (error) {
        notice(error.message);
        return;
      }
      $("#settings").open = false;
      showSettings();
      notice(null);
      onChange();
    });
    $("#forget").addEventListener("click", () => {
      window.sessionStorage.removeItem(KEY_ITEM);
      showSettings();
      onChange();
    });
  }

  function notice(message) {
    const node = $("#notice");
    node.textContent = message || "";
    node.hidden = !message;
  }

  // ------------------------------------------------------------------------------------------------ the API

  class ApiProblem extends Error {
    constructor(code, message, status, retryAfterMs) {
      super(message);
      this.code = code;
      this.status = status || 0;
      this.retryAfterMs = retryAfterMs || 0; // from a 429's Retry-After, when the API lets the page read it
    }

    // Worth asking again later (the network, the server), rather than waiting for the user.
    get transient() {
      return this.status === 0 || this.status === 429 || this.status >= 500;
    }
  }

  async function api(path) {
    const { base, key } = settings();
    if (!key) {
      throw new ApiProblem("no_key", "Type an API key above (babychain serve prints the local one).", 401);
    }
    let response;
    try {
      response = await fetch(base + path, {
        headers: { Authorization: `Bearer ${key}`, Accept: "application/json" },
        cache: "no-store",
        credentials: "omit",
        referrerPolicy: "no-referrer",
      });
    } catch {
      const where = base || "this server";
      const why = base ? " (or it does not allow this page's origin: CORS, see docs/inspector.md)" : "";
      throw new ApiProblem("unreachable", `Could not reach the API at ${where}${why}; retrying.`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      const error = (body && body.error) || {};
      const message = typeof error.message === "string" ? error.message : `HTTP ${response.status}`;
      const retryAfter = Number(response.headers.get("Retry-After"));
      const retryAfterMs = Number.isFinite(retryAfter) && retryAfter > 0 ? retryAfter * 1000 : 0;
      throw new ApiProblem(String(error.code || `http_${response.status}`), message, response.status, retryAfterMs);
    }
    return body;
  }

  function explain(problem) {
    if (problem.status === 401 || problem.status === 403) $("#settings").open = true;
    return `${problem.message} (${problem.code})`;
  }

  // Calls `tick` now, and again `interval` after each answer while it says the data is live; after a failure that
  // may pass, later and later (or when Retry-After says). It pauses while the tab is hidden.
  function poller(tick, interval) {
    let timer = null;
    let failures = 0;
    let generation = 0;
    let paused = false;
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && paused) run();
    });
    async function run() {
      const mine = ++generation;
      clearTimeout(timer);
      paused = false;
      if (document.hidden) {
        paused = true;
        return;
      }
      let again;
      let wait = interval;
      try {
        again = await tick();
        failures = 0;
      } catch (error) {
        if (!(error instanceof ApiProblem)) throw error;
        notice(explain(error));
        again = error.transient;
        failures += 1;
        wait = error.retryAfterMs || Math.min(RETRY_MAX_MS, interval * 2 ** failures);
      }
      if (mine !== generation || !again) return;
      timer = setTimeout(run, wait);
    }
    return run;
  }

  // ------------------------------------------------------------------------------------------------ recent runs

  function stepDots(run) {
    const steps = run.steps || [];
    const done = steps.filter((s) => s.status === "succeeded").length;
    const dots = el("span", "dots");
    for (const step of steps) {
      const dot = el("span", "dot");
      dot.dataset.status = step.status;
      dot.title = `${step.step_key}: ${step.status}`;
      dots.append(dot);
    }
    return el("span", "steps-cell", dots, ` ${done}/${steps.length}`);
  }

  function runRow(run) {
    const row = el("tr");
    row.dataset.runId = run.id;
    const id = el("a", "mono", run.id.slice(0, 8));
    id.href = `/runs/${encodeURIComponent(run.id)}`;
    id.title = run.id;
    const status = el("span", "status");
    statusBadge(status, run.status);
    const prompt = firstPrompt(run);
    const promptCell = el("td", "prompt", prompt);
    promptCell.title = prompt;
    row.append(
      el("td", "nowrap", dateTime(run.created_at)),
      el("td", null, id),
      el("td", null, run.chain_slug),
      el("td", null, status),
      el("td", null, stepDots(run)),
      el("td", "nowrap", duration(span(run.created_at, run.completed_at))),
      el("td", null, run.mode),
      promptCell,
    );
    return row;
  }

  function runsPage() {
    const body = $("#runs tbody");
    const more = $("#more");
    let cursor = null;
    let paged = false; // after "Older runs" the list stops refreshing itself, so rows do not jump under the reader

    function query(extra) {
      const params = new URLSearchParams({ limit: "25", ...extra });
      if ($("#filter-status").value) params.set("status", $("#filter-status").value);
      if ($("#filter-chain").value) params.set("chain_slug", $("#filter-chain").value);
      return `/api/v1/chains/runs?${params}`;
    }

    function show(page, append) {
      if (!append) body.replaceChildren();
      for (const run of page.data || []) body.append(runRow(run));
      cursor = page.has_more ? page.next_cursor : null;
      more.hidden = !cursor;
      $("#empty").hidden = body.children.length > 0;
    }

    const refresh = poller(async () => {
      const page = await api(query({}));
      notice(null);
      show(page, false);
      $("#live").textContent = paged ? "" : `updated ${clock(new Date().toISOString())}`;
      return !paged;
    }, LIST_POLL_MS);

    more.addEventListener("click", async () => {
      if (!cursor) return;
      paged = true;
      try {
        show(await api(query({ cursor })), true);
        $("#live").textContent = "";
      } catch (error) {
        if (error instanceof ApiProblem) notice(explain(error));
      }
    });
    for (const select of ["#filter-status", "#filter-chain"]) {
      $(select).addEventListener("change", () => {
        paged = false;
        refresh();
      });
    }
    setUpSettings(() => {
      paged = false;
      refresh();
    });
    refresh();
  }

  // ------------------------------------------------------------------------------------------------ one run

  function fact(list, label, value, className) {
    list.append(el("div", className, el("dt", null, label), el("dd", null, value)));
  }

  function summarize(run) {
    const facts = $("#run-facts");
    facts.replaceChildren();
    fact(facts, "chain", `${run.chain_slug} (${run.chain_version})`);
    fact(facts, "mode", run.mode);
    fact(facts, "created", dateTime(run.created_at));
    fact(facts, "completed", run.completed_at ? dateTime(run.completed_at) : "–");
    fact(facts, ACTIVE.has(run.status) ? "running for" : "took", duration(span(run.created_at, run.completed_at)));
    fact(facts, "current step", run.current_step_key);
    if (run.estimate) fact(facts, "estimate", money(run.estimate.total, run.estimate.currency));
    if (run.callback) {
      const attempts = run.callback.attempts === 1 ? "1 attempt" : `${run.callback.attempts} attempts`;
      fact(facts, "callback", `${run.callback.status}, ${attempts}`);
    }
    if (run.webhook_url) fact(facts, "webhook", run.webhook_url, "wide");
    if (run.metadata) fact(facts, "metadata", el("code", null, JSON.stringify(run.metadata)), "wide");
    const outputs = (run.output && run.output.output_files) || [];
    if (outputs.length) {
      const list = el("span", "links");
      outputs.forEach((url, i) => list.append(link(url, `file ${i + 1}`), " "));
      fact(facts, "output", list);
    }
    statusBadge($("#run-status"), run.status);
    const error = $("#run-error");
    error.hidden = !run.error;
    error.textContent = run.error ? `${run.error.code}: ${run.error.message}` : "";
  }

  // A step card is built once and updated on every poll; its media element is replaced only when the file changes,
  // so a playing video keeps playing.
  function stepCard(step) {
    const card = el("li", "step");
    card.dataset.stepKey = step.step_key;
    const parts = {
      card,
      status: el("span", "status"),
      progress: el("progress", "progress"),
      facts: el("dl", "facts"),
      prompt: el("p", "prompt-text"),
      error: el("p", "error"),
      preview: el("div", "preview"),
      files: el("p", "links"),
      media: new Map(),
    };
    parts.progress.max = 1;
    const head = el(
      "div",
      "step-head",
      el("span", "step-index", String(step.step_index + 1)),
      el("span", "step-key", step.step_key),
      el("span", "kind", step.step_kind),
    );
    card.append(head, el("div", "step-status", parts.status, parts.progress), parts.preview, parts.prompt);
    card.append(parts.error, parts.facts, parts.files);
    return parts;
  }

  function placeholder(step) {
    const words = {
      queued: "waiting for its turn",
      running: "generating…",
      failed: "no output",
      canceled: "canceled",
      skipped: "skipped",
    };
    return el("div", "placeholder", words[step.status] || "no output");
  }

  function mediaFor(step, url) {
    if (step.step_kind === "video") {
      const video = document.createElement("video");
      video.controls = true;
      video.muted = true;
      video.loop = true;
      video.playsInline = true;
      video.preload = "metadata";
      video.src = url;
      return video;
    }
    const img = document.createElement("img");
    img.alt = `${step.step_key} output`;
    img.decoding = "async";
    img.src = url;
    return img;
  }

  function updatePreview(parts, step) {
    const urls = (step.generation_output_file || []).map(safeUrl).filter(Boolean);
    const wanted = new Map(urls.map((url) => [fileIdentity(url), url]));
    const same = wanted.size === parts.media.size && [...wanted.keys()].every((k) => parts.media.has(k));
    if (same && urls.length) return;
    parts.media = new Map();
    parts.preview.replaceChildren();
    for (const [identity, url] of wanted) {
      const node = mediaFor(step, url);
      parts.media.set(identity, node);
      parts.preview.append(node);
    }
    if (!urls.length) parts.preview.append(placeholder(step));
  }

  function updateStep(parts, step, run) {
    parts.card.dataset.status = step.status;
    statusBadge(parts.status, step.status);
    const running = step.status === "running";
    parts.progress.hidden = !running;
    if (running && typeof step.progress === "number") parts.progress.value = step.progress;
    else if (running) parts.progress.removeAttribute("value"); // indeterminate
    const estimate = ((run.estimate && run.estimate.steps) || []).find((e) => e.step_key === step.step_key);
    const facts = parts.facts;
    facts.replaceChildren();
    fact(facts, "model", step.model_identifier);
    if (step.provider) fact(facts, "provider", step.provider_used || step.provider);
    fact(facts, "started", clock(step.started_at));
    const took = step.started_at ? duration(span(step.started_at, step.completed_at)) : "–";
    fact(facts, step.started_at && !step.completed_at ? "running for" : "took", took);
    if (step.attempt > 1) fact(facts, "attempt", String(step.attempt));
    if (estimate) {
      const basis = estimate.basis ? ` · ${estimate.basis}` : "";
      fact(facts, "estimate", money(estimate.amount, run.estimate.currency) + basis);
    }
    const prompt = promptOf(run.input, step.step_key);
    parts.prompt.hidden = !prompt;
    parts.prompt.textContent = prompt;
    const problem = step.error || step.last_error;
    parts.error.hidden = !problem;
    parts.error.textContent = problem ? `${step.error ? "" : "retrying after "}${problem.code}: ${problem.message}` : "";
    parts.files.replaceChildren();
    (step.generation_input_file || []).forEach((url, i) => parts.files.append(link(url, `input ${i + 1}`), " "));
    (step.generation_output_file || []).forEach((url, i) => parts.files.append(link(url, `output ${i + 1}`), " "));
    updatePreview(parts, step);
  }

  function runPage() {
    const id = decodeURIComponent(window.location.pathname.split("/").pop() || "");
    const cards = new Map();
    $("#crumb-run").textContent = id.slice(0, 8);

    const refresh = poller(async () => {
      const run = await api(`/api/v1/chains/get/${encodeURIComponent(id)}`);
      notice(null);
      document.title = `${run.chain_slug} ${run.status} · BabyChain inspector`;
      $("#summary").hidden = false;
      $("#run-title").textContent = run.id;
      summarize(run);
      const list = $("#steps");
      for (const step of run.steps || []) {
        if (!cards.has(step.id)) {
          const parts = stepCard(step);
          cards.set(step.id, parts);
          list.append(parts.card);
        }
        updateStep(cards.get(step.id), step, run);
      }
      $("#raw").hidden = false;
      $("#raw-json").textContent = JSON.stringify(run, null, 2);
      const live = ACTIVE.has(run.status);
      $("#live").textContent = live ? `live · updated ${clock(new Date().toISOString())}` : "";
      document.body.dataset.runStatus = run.status;
      return live;
    }, RUN_POLL_MS);

    setUpSettings(refresh);
    if (!UUID.test(id)) {
      notice("This is not a run id.");
      return;
    }
    refresh();
  }

  // ------------------------------------------------------------------------------------------------ start

  function start() {
    takeFragment();
    if (document.body.dataset.page === "run") runPage();
    else runsPage();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
