// The console tree, as the WAI-ARIA navigation treeview: one tab stop, arrow keys move,
// Right/Left expand and collapse, Home/End jump. Items are links, so Enter follows them.
const STORE = "mailadmin.tree.collapsed";

function collapsedKeys() {
  try { return new Set(JSON.parse(localStorage.getItem(STORE) || "[]")); } catch { return new Set(); }
}

export function initTree(tree) {
  if (!tree) return;
  const collapsed = collapsedKeys();
  const items = () => [...tree.querySelectorAll("[role=treeitem]")].filter((el) => el.offsetParent !== null || el === document.activeElement);
  const group = (item) => document.getElementById(item.getAttribute("aria-owns") || "");
  const setExpanded = (item, open, remember = true) => {
    const sub = group(item);
    if (!sub) return;
    item.setAttribute("aria-expanded", String(open));
    sub.hidden = !open;
    const key = item.dataset.treeKey;
    if (remember && key) {
      if (open) collapsed.delete(key); else collapsed.add(key);
      localStorage.setItem(STORE, JSON.stringify([...collapsed]));
    }
  };
  tree.querySelectorAll("[role=treeitem][aria-owns]").forEach((item) => {
    if (collapsed.has(item.dataset.treeKey) && !group(item)?.querySelector("[aria-current]")) {
      setExpanded(item, false, false);
    }
  });
  const all = [...tree.querySelectorAll("[role=treeitem]")];
  const current = tree.querySelector("[aria-current=page]") || all[0];
  all.forEach((el) => { el.tabIndex = el === current ? 0 : -1; });
  const focus = (el) => {
    if (!el) return;
    all.forEach((other) => { other.tabIndex = -1; });
    el.tabIndex = 0;
    el.focus();
  };
  const parentOf = (item) => {
    const owner = item.closest("[role=group]");
    return owner ? tree.querySelector(`[aria-owns="${owner.id}"]`) : null;
  };
  tree.addEventListener("click", (event) => {
    const item = event.target.closest("[role=treeitem][aria-owns]");
    if (item && event.offsetX < 0) {  // the twisty drawn left of the item
      event.preventDefault();
      setExpanded(item, item.getAttribute("aria-expanded") !== "true");
    }
  });
  tree.addEventListener("keydown", (event) => {
    const item = event.target.closest("[role=treeitem]");
    if (!item || event.altKey || event.ctrlKey || event.metaKey) return;
    const visible = items();
    const index = visible.indexOf(item);
    const expanded = item.getAttribute("aria-expanded");
    let handled = true;
    switch (event.key) {
      case "ArrowDown": focus(visible[index + 1]); break;
      case "ArrowUp": focus(visible[index - 1]); break;
      case "Home": focus(visible[0]); break;
      case "End": focus(visible[visible.length - 1]); break;
      case "ArrowRight":
        if (expanded === "false") setExpanded(item, true);
        else if (expanded === "true") focus(group(item)?.querySelector("[role=treeitem]"));
        break;
      case "ArrowLeft":
        if (expanded === "true") setExpanded(item, false);
        else focus(parentOf(item));
        break;
      case " ": item.click(); break;
      default: handled = false;
    }
    if (handled) event.preventDefault();
  });
}
