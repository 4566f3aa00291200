// Regions marked data-refresh="url" re-render from the server every data-interval ms
// (Current Sessions, the Dashboard). A region is left alone while focus is inside it,
// so a keyboard user is never pulled out of a row they are on.
export function initLive() {
  document.querySelectorAll("[data-refresh]").forEach((region) => {
    const every = Number(region.dataset.interval || 5000);
    const refresh = async () => {
      if (document.hidden || region.contains(document.activeElement)) return;
      try {
        const response = await fetch(region.dataset.refresh, { credentials: "same-origin" });
        if (!response.ok) return;
        const html = await response.text();
        if (html.trim() !== region.innerHTML.trim()) region.innerHTML = html;
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
