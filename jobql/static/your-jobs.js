// "Your jobs" on the job page (GET /): the caller's recent jobs from the `jobs` query,
// kept live by the `jobs` subscription (graphql-transport-ws, through `jobqlSocket` from
// graphql-socket.js), with Cancel on jobs still running and Retry
// on jobs that failed (retryably) or were cancelled. It uses only the public API.
"use strict";

(function () {
  const SHOWN = 20;
  const FIELDS =
    "id kind state progress done attempts createdAt retryOf error { code message retryable }";
  // Within one delivery of a job, the order of its states (a retry's next delivery counts
  // one more attempt).
  const STATE_ORDER = { PENDING: 0, STARTED: 1, PROGRESS: 2, RETRY: 3 };
  const LIST_AGAIN_MS = 300; // after the feed connects: its subscription is in place by then
  const LIST = `query YourJobs($first: Int!) { jobs(first: $first) { edges { node { ${FIELDS} } } } }`;
  const FEED = `subscription YourJobsFeed { jobs { ${FIELDS} } }`;
  const CANCEL = `mutation CancelJob($id: ID!) { cancelJob(id: $id) { ${FIELDS} } }`;
  const RETRY = `mutation RetryJob($id: ID!) { retryJob(id: $id) { ${FIELDS} } }`;
  const TOKEN_SETTLES_MS = 400; // after the last keystroke in the token field

  const $ = (id) => document.getElementById(id);
  const tokenInput = $("token");
  const table = $("jobs");
  const rows = $("jobs-rows");
  const statusText = $("jobs-status");
  const errorBox = $("jobs-error");

  const jobs = new Map(); // id -> the latest job seen
  let generation = 0; // bumped by every (re)load; answers of an older one are dropped
  let feed = null; // the graphql-ws client of the current generation
  let settling = null;

  class JobsError extends Error {
    constructor(code, message) {
      super(message);
      this.code = code;
    }
  }

  function bearerToken() {
    return tokenInput.value.trim().replace(/^bearer\s+/i, "");
  }

  function showError(code, message) {
    errorBox.replaceChildren();
    const codeElement = document.createElement("code");
    codeElement.textContent = code;
    errorBox.append(codeElement, " ", message);
  }

  async function graphql(token, query, variables) {
    const response = await fetch("/graphql", {
      method: "POST",
      headers: {
        "Content-Type": "application/json",
        Accept: "application/json",
        Authorization: `Bearer ${token}`,
      },
      body: JSON.stringify({ query, variables }),
    });
    let payload;
    try {
      payload = await response.json();
    } catch {
      throw new JobsError(`HTTP_${response.status}`, response.statusText || "Not JSON.");
    }
    if (payload.errors && payload.errors.length) {
      const [first] = payload.errors;
      const code = (first.extensions && first.extensions.code) || `HTTP_${response.status}`;
      throw new JobsError(code, first.message || "The server reported an error.");
    }
    return payload.data;
  }

  // --- the table ------------------------------------------------------------

  function canRetry(job) {
    return job.state === "REVOKED" || (job.state === "FAILURE" && !!job.error && job.error.retryable);
  }

  function stateCell(job) {
    const cell = document.createElement("td");
    const state = document.createElement("span");
    state.className = "job-state";
    state.dataset.state = job.state;
    state.textContent = job.state;
    cell.append(state);
    if (job.state === "PROGRESS" && job.progress != null) cell.append(` ${job.progress}\u00a0%`);
    if (job.error) {
      const code = document.createElement("code");
      code.textContent = job.error.code;
      code.title = job.error.message;
      cell.append(" ", code);
    }
    return cell;
  }

  function actionButton(job) {
    const button = document.createElement("button");
    button.type = "button";
    if (!job.done) {
      button.textContent = "Cancel";
      button.addEventListener("click", () => act(button, CANCEL, "cancelJob", job.id));
    } else if (canRetry(job)) {
      button.textContent = "Retry";
      button.addEventListener("click", () => act(button, RETRY, "retryJob", job.id));
    } else {
      return null;
    }
    button.setAttribute("aria-label", `${button.textContent} job ${job.id}`);
    return button;
  }

  function row(job) {
    const tr = document.createElement("tr");
    tr.dataset.jobId = job.id;
    const id = document.createElement("td");
    const code = document.createElement("code");
    code.textContent = job.id.slice(0, 8);
    code.title = job.id;
    id.append(code);
    if (job.retryOf) {
      const note = document.createElement("span");
      note.className = "hint";
      note.textContent = `retry of ${job.retryOf.slice(0, 8)}`;
      id.append(note);
    }
    const kind = document.createElement("td");
    kind.textContent = job.kind;
    const created = document.createElement("td");
    created.textContent = new Date(job.createdAt).toLocaleTimeString();
    const action = document.createElement("td");
    const button = actionButton(job);
    if (button) action.append(button);
    tr.append(id, kind, stateCell(job), created, action);
    return tr;
  }

  function render() {
    const newest = [...jobs.values()].sort((a, b) => (a.createdAt < b.createdAt ? 1 : -1));
    for (const old of newest.slice(SHOWN)) jobs.delete(old.id);
    rows.replaceChildren(...newest.slice(0, SHOWN).map(row));
    table.hidden = jobs.size === 0;
    statusText.textContent = jobs.size === 0 ? "No jobs yet: upload a photo." : "";
  }

  // Where a snapshot of a job stands: one from the list, the feed or a mutation's answer
  // may arrive after a newer one, and must not replace it.
  function place(job) {
    if (job.done) return [Infinity, 0, 0];
    return [job.attempts, STATE_ORDER[job.state] ?? 0, job.progress ?? -1];
  }

  function isOlder(job, than) {
    const [a, b] = [place(job), place(than)];
    for (let i = 0; i < a.length; i += 1) {
      if (a[i] !== b[i]) return a[i] < b[i];
    }
    return false;
  }

  function remember(job) {
    const known = jobs.get(job.id);
    if (!known || !isOlder(job, known)) jobs.set(job.id, job);
  }

  function seen(job) {
    remember(job);
    render();
  }

  async function act(button, mutation, field, id) {
    const token = bearerToken();
    const thisGeneration = generation;
    button.disabled = true;
    errorBox.replaceChildren();
    try {
      const data = await graphql(token, mutation, { id });
      if (thisGeneration === generation && data[field]) seen(data[field]);
    } catch (error) {
      if (thisGeneration === generation) showError(error.code || "ERROR", error.message);
      button.disabled = false;
    }
  }

  // --- loading and following ------------------------------------------------

  function subscribe(thisGeneration, token) {
    // What changed between the page's first list and the feed's start is read again.
    feed = window.jobqlSocket(token, {
      connected: () => setTimeout(() => list(thisGeneration, token).catch(() => {}), LIST_AGAIN_MS),
    });
    const ownFeed = feed;
    ownFeed.subscribe(
      { query: FEED },
      {
        next(result) {
          if (thisGeneration !== generation) return;
          if (result.errors && result.errors.length) {
            const [first] = result.errors;
            showError((first.extensions && first.extensions.code) || "GRAPHQL_ERROR", first.message);
          } else if (result.data && result.data.jobs) {
            seen(result.data.jobs);
          }
        },
        error(error) {
          if (thisGeneration !== generation) return;
          const message = (error && (error.reason || error.message)) || "The live feed stopped.";
          showError(Array.isArray(error) ? "GRAPHQL_ERROR" : "FEED_STOPPED", message);
          ownFeed.dispose();
        },
        complete() {
          ownFeed.dispose();
        },
      },
    );
  }

  async function list(thisGeneration, token) {
    const data = await graphql(token, LIST, { first: SHOWN });
    if (thisGeneration !== generation) return;
    for (const { node } of data.jobs.edges) remember(node);
    render();
  }

  async function load() {
    generation += 1;
    const thisGeneration = generation;
    if (feed) feed.dispose();
    feed = null;
    jobs.clear();
    render();
    errorBox.replaceChildren();
    const token = bearerToken();
    if (!token) {
      statusText.textContent = "Paste a bearer token to see your jobs.";
      return;
    }
    statusText.textContent = "Loading…";
    if (window.graphqlWs) subscribe(thisGeneration, token);
    try {
      await list(thisGeneration, token);
    } catch (error) {
      if (thisGeneration !== generation) return;
      statusText.textContent = "";
      showError(error.code || "ERROR", error.message);
    }
  }

  tokenInput.addEventListener("input", () => {
    clearTimeout(settling);
    settling = setTimeout(load, TOKEN_SETTLES_MS);
  });
  $("forget").addEventListener("click", load);
  load();
})();
