// Live server state: every 2 s the console asks state.json and updates each state icon,
// label and Start/Stop/Pause control, so a change made anywhere (another browser, the
// API, a worker's bind error) shows without a reload. Start/Stop/Pause forms are sent
// with fetch and answer JSON; without script they post and redirect as usual.
const POLL_MS = 2000;
const ALLOWED = {
  start: (s) => s !== "started",
  stop: (s) => s !== "stopped",
  pause: (s) => s === "started",
};
const known = new Map();

function announce(text) {
  const live = document.getElementById("live-announcer");
  if (live) live.textContent = text;
}

export function applyState(server, { flash = false } = {}) {
  const id = String(server.id);
  const title = server.detail ? `${server.label}: ${server.detail}` : server.label;
  document.querySelectorAll(`[data-state-for="${id}"]`).forEach((el) => {
    if (el.dataset.state !== server.state && flash) {
      el.classList.remove("flash");
      void el.offsetWidth;
      el.classList.add("flash");
    }
    el.dataset.state = server.state;
    el.title = title;
  });
  document.querySelectorAll(`[data-state-label-for="${id}"]`).forEach((el) => {
    el.dataset.state = server.state;
    el.textContent = server.label;
  });
  document.querySelectorAll(`[data-state-text-for="${id}"]`).forEach((el) => {
    el.textContent = ` (${server.label})`;
  });
  document.querySelectorAll(`[data-server-id="${id}"] [data-state-action]`).forEach((button) => {
    button.disabled = !ALLOWED[button.dataset.stateAction](server.requested);
  });
  const before = known.get(id);
  if (before && before !== server.state) announce(`${server.name}: ${server.label}`);
  known.set(id, server.state);
}

async function poll(url) {
  if (document.hidden) return;
  try {
    const response = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (!response.ok) return;
    const data = await response.json();
    data.servers.forEach((server) => applyState(server, { flash: true }));
    document.querySelectorAll("[data-version]").forEach((el) => { el.textContent = data.version; });
  } catch {
    /* offline for a moment: the next poll tries again */
  }
}

async function sendState(form) {
  const button = form.querySelector("button");
  const token = form.querySelector("[name=csrfmiddlewaretoken]")?.value || "";
  button.disabled = true;
  try {
    const response = await fetch(form.action, {
      method: "POST",
      headers: { Accept: "application/json", "X-CSRFToken": token },
      body: new FormData(form),
      credentials: "same-origin",
    });
    const data = await response.json();
    if (data.ok) {
      applyState(data.server, { flash: true });
      announce(`${data.server.name}: ${data.server.label}`);
    } else {
      announce(data.error);
      showError(data.error);
      button.disabled = false;
    }
  } catch {
    form.submit();
  }
}

function showError(text) {
  const main = document.getElementById("main");
  if (!main) return;
  let box = main.querySelector(".alert-error[data-state-error]");
  if (!box) {
    box = document.createElement("p");
    box.className = "alert alert-error";
    box.setAttribute("role", "alert");
    box.dataset.stateError = "";
    main.prepend(box);
  }
  box.textContent = text;
}

export function initState(root) {
  if (!root) return;
  document.addEventListener("submit", (event) => {
    const form = event.target.closest("form[data-state-form]");
    if (!form) return;
    event.preventDefault();
    sendState(form);
  });
  const url = root.dataset.stateUrl;
  if (url) {
    poll(url);
    setInterval(() => poll(url), POLL_MS);
  }
}
