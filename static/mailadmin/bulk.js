// The message list's bulk actions: a "select all on this page" box, a count of the ticked
// messages, and action buttons enabled only while something is ticked. Without script the
// list still works: the buttons post whatever is ticked, and the server says if nothing was.
function initBulk(form) {
  const all = form.querySelector("[data-select-all]");
  const count = form.querySelector("[data-selected-count]");
  const buttons = [...form.querySelectorAll("[data-needs-selection]")];
  const hint = count?.textContent || "";
  const boxes = () => [...form.querySelectorAll("input[type=checkbox][name=queue_id]")];

  const update = () => {
    const every = boxes();
    const n = every.filter((box) => box.checked).length;
    buttons.forEach((button) => { button.disabled = n === 0; });
    if (count) {
      count.textContent = n ? `${n} message${n === 1 ? "" : "s"} selected` : hint;
      count.classList.toggle("has-selection", n > 0);
    }
    if (all) {
      all.checked = n > 0 && n === every.length;
      all.indeterminate = n > 0 && n < every.length;
      all.disabled = every.length === 0;
    }
  };

  if (all) {
    all.hidden = false;
    all.addEventListener("change", () => {
      boxes().forEach((box) => { box.checked = all.checked; });
      update();
    });
  }
  form.addEventListener("change", update);
  form.addEventListener("live:refreshed", update);
  update();
}

document.querySelectorAll("form[data-bulk]").forEach(initBulk);
