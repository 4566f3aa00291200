// Regions marked data-refresh="url" re-render from the server every data-interval ms
// (Current Sessions, Queues, the Dashboard). A region is left alone while focus is inside
// it, so a keyboard user is never pulled out of a row they are on. Ticked checkboxes stay
// ticked across a refresh (matched by name and value), and elements marked data-live-keep
// (a chart's canvas) are carried over by id. After each swap the region gets a
// "live:refreshed" event.
function ticked(region) {
  return new Set(
    [...region.querySelectorAll("input[type=checkbox][name]:checked")].map((box) => `${box.name}=${box.value}`),
  );
}

function swap(region, html) {
  const keep = new Map([...region.querySelectorAll("[data-live-keep][id]")].map((el) => [el.id, el]));
  const checked = ticked(region);
  const next = document.createElement("template");
  next.innerHTML = html;
  next.content.querySelectorAll("[data-live-keep][id]").forEach((slot) => {
    const old = keep.get(slot.id);
    if (old) slot.replaceWith(old);
  });
  next.content.querySelectorAll("input[type=checkbox][name]").forEach((box) => {
    if (checked.has(`${box.name}=${box.value}`)) box.checked = true;
  });
  region.replaceChildren(next.content);
  region.dispatchEvent(new CustomEvent("live:refreshed", { bubbles: true }));
}

export function initLive() {
  document.querySelectorAll("[data-refresh]").forEach((region) => {
    const every = Number(region.dataset.interval || 5000);
    let last = null;
    const refresh = async () => {
      if (document.hidden || region.contains(document.activeElement)) return;
      try {
        const response = await fetch(region.dataset.refresh, { credentials: "same-origin" });
        if (!response.ok) return;
        const html = (await response.text()).trim();
        if (html !== last && html !== region.innerHTML.trim()) swap(region, html);
        last = html;
      } catch {
        /* try again next time */
      }
    };
    setInterval(refresh, every);
  });
  document.addEventListener("submit", (event) => {
    const form = event.target.closest("form[data-confirm]");
    if (form && !window.confirm(form.dataset.confirm)) event.preventDefault();
  });
}
