// The job page (GET /): uploads a photo with the GraphQL multipart request spec, then
// follows its job over the `job` subscription (graphql-transport-ws, through `jobqlSocket`
// from graphql-socket.js). It uses only the public API.
"use strict";

(function () {
  const TOKEN_KEY = "jobql.token";
  const UPLOAD = `mutation Upload($file: Upload!) {
  uploadAvatar(file: $file, options: {size: 256}) { id state }
}`;
  const FOLLOW = `subscription Follow($id: ID!) {
  job(id: $id) {
    state
    progress
    done
    result { ... on AvatarResult { url width height } }
    error { code message }
  }
}`;
  // Close codes the server (Strawberry) and graphql-ws use, in words.
  const CLOSE_REASONS = {
    4400: "The server did not understand a message.",
    4401: "The connection was not initialised.",
    4403: "The server refused the token.",
    4408: "The connection was not initialised in time.",
    4409: "The subscription was started twice.",
    4429: "Too many initialisation requests.",
  };

  const $ = (id) => document.getElementById(id);
  const form = $("upload-form");
  const tokenInput = $("token");
  const fileInput = $("file");
  const uploadButton = $("upload");
  const uploadProgress = $("upload-progress");
  const uploadText = $("upload-text");
  const jobId = $("job-id");
  const stateText = $("state");
  const progress = $("progress");
  const progressText = $("progress-text");
  const history = $("history");
  const errorBox = $("error");
  const preview = $("preview");
  const previewFigure = $("preview-figure");
  const avatar = $("avatar");
  const avatarFigure = $("avatar-figure");
  const avatarCaption = $("avatar-caption");

  let run = 0; // bumped by every upload; updates of an older run are dropped
  let client = null; // the graphql-ws client of the current run
  let previewUrl = null;

  class PageError extends Error {
    constructor(code, message) {
      super(message);
      this.code = code;
    }
  }

  // --- token -------------------------------------------------------------

  try {
    tokenInput.value = localStorage.getItem(TOKEN_KEY) || "";
  } catch {
    // storage disabled: the field still works for this visit
  }
  tokenInput.addEventListener("input", () => {
    try {
      localStorage.setItem(TOKEN_KEY, tokenInput.value.trim());
    } catch {
      // not remembered, that is all
    }
  });
  $("forget").addEventListener("click", () => {
    tokenInput.value = "";
    try {
      localStorage.removeItem(TOKEN_KEY);
    } catch {
      // nothing stored
    }
    tokenInput.focus();
  });

  function bearerToken() {
    // Accept the token with or without a "Bearer " in front of it.
    return tokenInput.value.trim().replace(/^bearer\s+/i, "");
  }

  // --- showing things ----------------------------------------------------

  function showError(code, message) {
    errorBox.replaceChildren();
    if (code) {
      const codeElement = document.createElement("code");
      codeElement.textContent = code;
      errorBox.append(codeElement, " ");
    }
    errorBox.append(message);
  }

  function showGraphQLErrors(errors) {
    const [first] = errors;
    const code = (first.extensions && first.extensions.code) || "GRAPHQL_ERROR";
    showError(code, first.message || "The server reported an error.");
  }

  function clearError() {
    errorBox.replaceChildren();
  }

  function setProgress(element, text, percent) {
    element.value = Math.max(0, Math.min(100, percent));
    text.textContent = `${Math.round(element.value)}\u00a0%`;
  }

  function addHistory(text) {
    const item = document.createElement("li");
    const time = new Date().toLocaleTimeString();
    item.textContent = `${time} ${text}`;
    history.append(item);
  }

  function reset(file) {
    clearError();
    history.replaceChildren();
    jobId.textContent = "–";
    stateText.textContent = "–";
    delete stateText.dataset.state;
    setProgress(progress, progressText, 0);
    uploadProgress.value = 0;
    avatarFigure.hidden = true;
    avatar.removeAttribute("src");
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    preview.src = previewUrl;
    previewFigure.hidden = false;
  }

  // --- upload (GraphQL multipart request spec) ----------------------------

  function upload(token, file, onProgress) {
    const body = new FormData();
    body.append("operations", JSON.stringify({ query: UPLOAD, variables: { file: null } }));
    body.append("map", JSON.stringify({ 0: ["variables.file"] }));
    body.append("0", file, file.name);
    return new Promise((resolve, reject) => {
      const request = new XMLHttpRequest();
      request.open("POST", "/graphql");
      request.setRequestHeader("Authorization", `Bearer ${token}`);
      request.setRequestHeader("Accept", "application/json");
      request.upload.addEventListener("progress", (event) => {
        if (event.lengthComputable) onProgress(event.loaded, event.total);
      });
      request.addEventListener("load", () => {
        let response;
        try {
          response = JSON.parse(request.responseText);
        } catch {
          reject(new PageError(`HTTP_${request.status}`, request.statusText || "Not JSON."));
          return;
        }
        if (response.errors && response.errors.length) {
          const [first] = response.errors;
          const code = (first.extensions && first.extensions.code) || `HTTP_${request.status}`;
          reject(new PageError(code, first.message));
        } else if (!response.data || !response.data.uploadAvatar) {
          reject(new PageError(`HTTP_${request.status}`, "The server sent no job."));
        } else {
          resolve(response.data.uploadAvatar);
        }
      });
      request.addEventListener("error", () =>
        reject(new PageError("NETWORK_ERROR", "Could not reach the server.")),
      );
      request.send(body);
    });
  }

  // --- the job subscription (graphql-transport-ws) -------------------------

  function follow(thisRun, token, id) {
    client = window.jobqlSocket(token);
    const ownClient = client;
    let last = "";
    ownClient.subscribe(
      { query: FOLLOW, variables: { id } },
      {
        next(result) {
          if (thisRun !== run) return;
          if (result.errors && result.errors.length) {
            showGraphQLErrors(result.errors);
          } else if (result.data && result.data.job) {
            const job = result.data.job;
            const seen = `${job.state} ${job.progress}`;
            if (seen !== last) {
              last = seen;
              addHistory(job.progress == null ? job.state : `${job.state} ${job.progress} %`);
            }
            showJob(job);
          }
        },
        error(error) {
          if (thisRun !== run) return;
          if (Array.isArray(error)) {
            showGraphQLErrors(error);
          } else if (error && typeof error.code === "number") {
            const reason = error.reason || CLOSE_REASONS[error.code] || "The connection closed.";
            showError(`WEBSOCKET_${error.code}`, reason);
          } else {
            showError("SUBSCRIPTION_ERROR", (error && error.message) || String(error));
          }
          ownClient.dispose();
        },
        complete() {
          ownClient.dispose();
        },
      },
    );
  }

  function showJob(job) {
    stateText.textContent = job.state;
    stateText.dataset.state = job.state;
    if (job.state === "SUCCESS") {
      setProgress(progress, progressText, 100);
    } else if (job.progress != null) {
      setProgress(progress, progressText, job.progress);
    }
    if (job.result && job.result.url) {
      avatar.width = job.result.width;
      avatar.height = job.result.height;
      avatar.src = job.result.url;
      avatarCaption.textContent = `Your avatar, ${job.result.width}\u00d7${job.result.height} px`;
      avatarFigure.hidden = false;
    }
    if (job.error) {
      showError(job.error.code, job.error.message);
    }
  }

  // --- putting it together -------------------------------------------------

  async function start() {
    const file = fileInput.files[0];
    const token = bearerToken();
    if (!token) {
      showError(null, "Paste a bearer token first.");
      tokenInput.focus();
      return;
    }
    if (!file) {
      showError(null, "Pick a photo first.");
      fileInput.focus();
      return;
    }
    run += 1;
    const thisRun = run;
    if (client) client.dispose();
    client = null;
    reset(file);
    uploadButton.disabled = true;
    uploadText.textContent = "Uploading…";
    try {
      const job = await upload(token, file, (loaded, total) => {
        uploadProgress.value = (100 * loaded) / total;
        uploadText.textContent = `${Math.round(loaded / 1024)} of ${Math.round(total / 1024)} KiB`;
      });
      if (thisRun !== run) return;
      uploadProgress.value = 100;
      uploadText.textContent = `Uploaded ${file.name}`;
      jobId.textContent = job.id;
      addHistory(`${job.state} (queued)`);
      showJob(job);
      follow(thisRun, token, job.id);
    } catch (error) {
      if (thisRun !== run) return;
      uploadText.textContent = "Upload failed";
      showError(error.code || "ERROR", error.message);
    } finally {
      if (thisRun === run) uploadButton.disabled = false;
    }
  }

  avatar.addEventListener("error", () => {
    if (avatar.getAttribute("src")) showError("AVATAR_NOT_LOADED", `Could not load ${avatar.src}.`);
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    start();
  });
  fileInput.addEventListener("change", () => {
    if (fileInput.files.length) start();
  });
  if (!window.graphqlWs) {
    showError("SCRIPT_MISSING", "The graphql-ws client did not load; run `make assets`.");
  }
})();
