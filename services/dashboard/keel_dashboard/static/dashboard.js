// Keel dashboard: the run board (SSE `board` snapshots) and one run's live timeline (SSE `run_event`,
// resumed by the browser's EventSource with Last-Event-ID = the last KEEL_EVENTS sequence it got).
// Every value from the server goes into the page through textContent or a checked attribute, never
// through innerHTML, so run data cannot become markup.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  let config = { approval_url: null, approval_inbox: null, states: [] };
  let boardSource = null;
  let boardTimer = null;
  let feedSource = null;
  let selected = null; // run id shown in the detail pane
  let lastSeq = 0; // highest event sequence appended to the timeline (guards against any repeat)
  let lastBoard = null;

  function el(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (className) node.className = className;
    return node;
  }

  function stateClass(state) {
    return config.states.includes(state) ? "state state-" + state : "state";
  }

  function when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
  }

  function setLive(node, state, text) {
    node.dataset.state = state;
    node.textContent = text;
  }

  // --- filters (kept in the URL so a view can be shared) --------------------------------------------
  function readFilters() {
    const q = new URLSearchParams(location.search);
    return {
      state: q.get("state") || "",
      workflow: q.get("workflow") || "",
      window: q.get("window") || "",
      since: q.get("since") || "",
      until: q.get("until") || "",
      run: q.get("run") || "",
    };
  }

  function writeFilters(f) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(f)) if (v) q.set(k, v);
    history.replaceState(null, "", q.toString() ? "?" + q.toString() : location.pathname);
  }

  function localToIso(value) {
    if (!value) return "";
    const d = new Date(value);
    return isNaN(d.getTime()) ? "" : d.toISOString();
  }

  function boardQuery(f) {
    const q = new URLSearchParams();
    if (f.state) q.set("state", f.state);
    if (f.workflow) q.set("workflow", f.workflow);
    if (f.window === "custom") {
      if (f.since) q.set("since", localToIso(f.since));
      if (f.until) q.set("until", localToIso(f.until));
    } else if (f.window) {
      q.set("since", new Date(Date.now() - Number(f.window) * 1000).toISOString());
    }
    return q.toString();
  }

  function filtersFromForm() {
    const f = readFilters();
    f.state = $("f-state").value;
    f.workflow = $("f-workflow").value;
    f.window = $("f-window").value;
    f.since = $("f-since").value;
    f.until = $("f-until").value;
    return f;
  }

  function applyFilters(f) {
    writeFilters(f);
    $("filters").classList.toggle("custom-window", f.window === "custom");
    openBoard(f);
  }

  // --- the board --------------------------------------------------------------------------------------
  function openBoard(f) {
    if (boardSource) boardSource.close();
    if (boardTimer) clearInterval(boardTimer);
    boardSource = new EventSource("/api/runs/stream?" + boardQuery(f));
    boardSource.addEventListener("board", (e) => renderBoard(JSON.parse(e.data)));
    boardSource.onopen = () => setLive($("live"), "live", "live");
    boardSource.onerror = () => setLive($("live"), "reconnecting", "reconnecting…");
    // A sliding window ("last hour") is evaluated when the stream opens: re-open it every minute.
    if (f.window && f.window !== "custom") boardTimer = setInterval(() => openBoard(readFilters()), 60000);
  }

  function renderCounts(board) {
    const f = readFilters();
    const box = $("counts");
    box.replaceChildren();
    for (const state of config.states) {
      const b = el("button", state, stateClass(state));
      b.type = "button";
      b.dataset.state = state;
      b.setAttribute("aria-pressed", String(f.state === state));
      b.appendChild(el("span", board.counts[state] || 0, "n"));
      b.addEventListener("click", () => {
        const next = readFilters();
        next.state = next.state === state ? "" : state;
        $("f-state").value = next.state;
        applyFilters(next);
      });
      box.appendChild(b);
    }
  }

  function renderWorkflows(workflows) {
    const select = $("f-workflow");
    const current = readFilters().workflow;
    const names = new Set(workflows);
    if (current) names.add(current);
    const options = [el("option", "any")];
    options[0].value = "";
    for (const name of [...names].sort()) {
      const o = el("option", name);
      o.value = name;
      options.push(o);
    }
    select.replaceChildren(...options);
    select.value = current;
  }

  function renderBoard(board) {
    lastBoard = board;
    renderCounts(board);
    renderWorkflows(board.workflows);
    $("total").textContent = board.total + (board.total === 1 ? " run" : " runs") + (board.ready ? "" : " (loading…)");
    const rows = board.runs.map((run) => {
      const tr = el("tr");
      tr.dataset.runId = run.run_id;
      tr.dataset.state = run.status;
      if (run.run_id === selected) tr.classList.add("selected");
      const id = el("td");
      id.appendChild(el("code", run.run_id));
      tr.append(
        id,
        el("td", run.workflow),
        el("td", run.status, stateClass(run.status)),
        el("td", run.current_step || ""),
        el("td", run.steps_done),
        el("td", run.attempts),
        el("td", when(run.started_at)),
        el("td", when(run.updated_at)),
      );
      tr.addEventListener("click", () => selectRun(run.run_id));
      return tr;
    });
    $("runs").tBodies[0].replaceChildren(...rows);
    const shown = board.runs.find((r) => r.run_id === selected);
    if (shown) renderFields(shown);
  }

  // --- one run -----------------------------------------------------------------------------------------
  function renderFields(run) {
    const fields = [
      ["state", run.status],
      ["workflow", run.workflow],
      ["reason", run.reason],
      ["current step", run.current_step],
      ["steps done", run.steps_done],
      ["attempts", run.attempts],
      ["error class", run.error_class],
      ["intent key", run.intent_key],
      ["started", when(run.started_at)],
      ["updated", when(run.updated_at)],
    ];
    const dl = $("d-fields");
    dl.replaceChildren();
    for (const [name, value] of fields) {
      if (value === null || value === undefined || value === "") continue;
      dl.append(el("dt", name), el("dd", value, name === "state" ? stateClass(value) : undefined));
    }
    dl.dataset.state = run.status;
    $("d-inbox").classList.toggle("hidden", !(config.approval_inbox && run.status === "needs_approval"));
  }

  function summary(entry) {
    const body = (entry.event && entry.event.body) || {};
    const parts = [];
    if (entry.step_id) parts.push("step " + entry.step_id + (entry.attempt ? " #" + entry.attempt : ""));
    for (const key of ["tool", "error_class", "reason", "status", "next_step", "approval_id"]) {
      if (body[key] !== undefined && body[key] !== null && typeof body[key] !== "object") parts.push(key + "=" + body[key]);
    }
    return parts.join("  ");
  }

  function appendEvent(entry) {
    if (entry.seq <= lastSeq) return;
    lastSeq = entry.seq;
    const li = el("li");
    li.dataset.seq = entry.seq;
    li.dataset.type = entry.type;
    li.append(el("span", "#" + entry.seq, "seq"), el("span", entry.type, "type"), el("span", summary(entry), "meta"));
    li.title = entry.emitter + " at " + when(entry.occurred_at);
    if (entry.rejected) {
      // Stored where its type's rightful emitter never stores it: shown, never part of the run.
      li.classList.add("rejected");
      li.appendChild(el("span", "REJECTED: " + entry.rejected, "meta"));
      li.title = "not believed: " + entry.rejected;
    }
    const body = (entry.event && entry.event.body) || {};
    if (!entry.rejected && entry.type === "approval_requested" && config.approval_url && typeof body.approval_id === "string") {
      const a = el("a", "decide", "meta");
      a.href = config.approval_url + "/inbox/approvals/" + encodeURIComponent(body.approval_id);
      a.rel = "noopener";
      li.appendChild(a);
    }
    $("timeline").appendChild(li);
  }

  async function selectRun(runId) {
    if (feedSource) feedSource.close();
    selected = runId;
    lastSeq = 0;
    const f = readFilters();
    f.run = runId;
    writeFilters(f);
    $("detail").classList.remove("hidden");
    $("d-run").textContent = runId;
    $("d-audit").textContent = config.audit_command.replace("RUN_ID", runId);
    $("timeline").replaceChildren();
    for (const tr of $("runs").tBodies[0].rows) tr.classList.toggle("selected", tr.dataset.runId === runId);
    const known = lastBoard && lastBoard.runs.find((r) => r.run_id === runId);
    if (known) renderFields(known);
    try {
      const resp = await fetch("/api/runs/" + encodeURIComponent(runId));
      if (resp.ok && selected === runId) renderFields((await resp.json()).run);
    } catch (err) {
      // The board stream keeps the fields current anyway.
    }
    feedSource = new EventSource("/api/runs/" + encodeURIComponent(runId) + "/events");
    feedSource.addEventListener("run_event", (e) => appendEvent(JSON.parse(e.data)));
    feedSource.onopen = () => setLive($("d-feed"), "live", "live");
    feedSource.onerror = () => setLive($("d-feed"), "reconnecting", "reconnecting…");
  }

  // --- start -------------------------------------------------------------------------------------------
  async function start() {
    config = await (await fetch("/api/config")).json();
    if (config.approval_inbox) {
      for (const a of [$("inbox-link"), $("d-inbox")]) a.href = config.approval_inbox;
      $("inbox-link").classList.remove("hidden");
    }
    const stateSelect = $("f-state");
    for (const state of config.states) {
      const o = el("option", state);
      o.value = state;
      stateSelect.appendChild(o);
    }
    const f = readFilters();
    stateSelect.value = f.state;
    $("f-window").value = f.window;
    $("f-since").value = f.since;
    $("f-until").value = f.until;
    renderWorkflows(f.workflow ? [f.workflow] : []);
    for (const id of ["f-state", "f-workflow", "f-window", "f-since", "f-until"]) {
      $(id).addEventListener("change", () => applyFilters(filtersFromForm()));
    }
    applyFilters(f);
    if (f.run) selectRun(f.run);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
