// The property sheet: tabs (arrow keys move, as in a Windows property sheet), sub-dialogs
// with their own OK / Cancel (Cancel puts the dialog's fields back), "limit to" boxes
// that enable their number, and Apply enabled once something changed.
function values(root) {
  return [...root.querySelectorAll("input, select, textarea")].map((el) =>
    el.type === "checkbox" || el.type === "radio" ? el.checked : el.type === "file" ? null : el.value);
}

function restore(root, saved) {
  [...root.querySelectorAll("input, select, textarea")].forEach((el, i) => {
    if (saved[i] === null) return;
    if (el.type === "checkbox" || el.type === "radio") el.checked = saved[i];
    else el.value = saved[i];
  });
}

function initTabs(form) {
  const tabs = [...form.querySelectorAll("[role=tab]")];
  const active = form.querySelector("[data-active-tab]");
  const select = (tab, focus = true) => {
    tabs.forEach((t) => {
      const on = t === tab;
      t.setAttribute("aria-selected", String(on));
      t.tabIndex = on ? 0 : -1;
      document.getElementById(t.getAttribute("aria-controls")).hidden = !on;
    });
    active.value = tab.dataset.tab;
    form.action = tab.href;
    history.replaceState(null, "", tab.href);
    if (focus) tab.focus();
  };
  tabs.forEach((tab, i) => {
    tab.addEventListener("click", (event) => { event.preventDefault(); select(tab); });
    tab.addEventListener("keydown", (event) => {
      const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (to === undefined) return;
      event.preventDefault();
      select(tabs[(to + tabs.length) % tabs.length]);
    });
  });
}

function initDialogs(form) {
  form.querySelectorAll("[data-dialog]").forEach((button) => {
    const dialog = document.getElementById(button.dataset.dialog);
    if (!dialog || typeof dialog.showModal !== "function") return;
    let saved = null;
    if (dialog.querySelector(".field-error")) {
      button.classList.add("has-error");
      button.setAttribute("aria-description", "has fields to correct");
    }
    // Put the fields back before the dialog hides: "close" fires in a later task, and
    // nothing may observe a closed dialog that still shows the cancelled values.
    const putBack = () => {
      if (!saved) return;
      restore(dialog, saved);
      saved = null;
      form.dispatchEvent(new Event("input"));
    };
    button.addEventListener("click", () => {
      saved = values(dialog);
      dialog.showModal();
      dialog.querySelector("input:not([type=hidden]), select, textarea")?.focus();
    });
    dialog.querySelector("[data-dialog-ok]")?.addEventListener("click", () => {
      saved = null;
      dialog.close();
    });
    dialog.querySelector("[data-dialog-cancel]")?.addEventListener("click", () => {
      putBack();
      dialog.close();
    });
    dialog.addEventListener("cancel", putBack);  // Escape
    // Chromium may close on Escape without a "cancel" event (close-watcher abuse rules):
    // any close that did not come through OK is a cancel.
    dialog.addEventListener("close", () => {
      putBack();
      button.focus();
    });
  });
  const panel = form.querySelector(".tabpanel:not([hidden])");
  const first = panel?.querySelector("[data-dialog].has-error");
  if (first) first.click();
}

function initLimits(form) {
  form.querySelectorAll("[data-enables]").forEach((box) => {
    const target = document.getElementById(box.dataset.enables);
    if (!target) return;
    const sync = () => { target.readOnly = !box.checked; target.classList.toggle("muted", !box.checked); };
    box.addEventListener("change", sync);
    sync();
  });
}

export function initSheet(form) {
  initTabs(form);
  initLimits(form);
  initDialogs(form);
  const apply = form.querySelector("[data-apply]");
  if (apply && !form.querySelector(".field-error")) {
    apply.disabled = true;
    const dirty = () => { apply.disabled = false; };
    form.addEventListener("input", dirty);
    form.addEventListener("change", dirty);
  }
}
