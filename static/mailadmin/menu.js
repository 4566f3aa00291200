// Per-server context menus (Start, Stop, Pause, New, Delete, Properties): right-click or
// Shift+F10 / the Menu key on a server in the tree, or the "…" button in a list.
let openMenu = null;
let invoker = null;

function enabledItems(menu) {
  return [...menu.querySelectorAll("[role=menuitem]")].filter((el) => !el.disabled);
}

export function closeMenu(restoreFocus = true) {
  if (!openMenu) return;
  openMenu.hidden = true;
  openMenu = null;
  if (restoreFocus && invoker) invoker.focus();
  if (invoker?.matches("[data-menu-button]")) invoker.setAttribute("aria-expanded", "false");
  invoker = null;
}

function open(menu, x, y, from) {
  closeMenu(false);
  menu.hidden = false;
  const { innerWidth: w, innerHeight: h } = window;
  const rect = menu.getBoundingClientRect();
  menu.style.left = `${Math.max(4, Math.min(x, w - rect.width - 4))}px`;
  menu.style.top = `${Math.max(4, Math.min(y, h - rect.height - 4))}px`;
  openMenu = menu;
  invoker = from;
  // A tree item's aria-expanded is its own state; only a menu button reports the menu.
  if (from?.matches("[data-menu-button]")) from.setAttribute("aria-expanded", "true");
  enabledItems(menu)[0]?.focus();
}

export function initMenus() {
  document.addEventListener("contextmenu", (event) => {
    const target = event.target.closest("[data-menu]");
    const menu = target && document.getElementById(target.dataset.menu);
    if (!menu) return;
    event.preventDefault();
    open(menu, event.clientX, event.clientY, target);
  });
  document.addEventListener("keydown", (event) => {
    const target = event.target.closest?.("[data-menu]");
    if (target && (event.key === "ContextMenu" || (event.shiftKey && event.key === "F10"))) {
      event.preventDefault();
      const rect = target.getBoundingClientRect();
      open(document.getElementById(target.dataset.menu), rect.left + 24, rect.bottom, target);
      return;
    }
    if (!openMenu) return;
    const items = enabledItems(openMenu);
    const index = items.indexOf(document.activeElement);
    const moves = { ArrowDown: index + 1, ArrowUp: index - 1, Home: 0, End: items.length - 1 };
    if (event.key in moves) {
      event.preventDefault();
      items[(moves[event.key] + items.length) % items.length]?.focus();
    } else if (event.key === "Escape") {
      event.preventDefault();
      closeMenu();
    } else if (event.key === "Tab") {
      closeMenu(false);
    }
  });
  document.addEventListener("click", (event) => {
    const button = event.target.closest("[data-menu-button]");
    if (button) {
      const rect = button.getBoundingClientRect();
      open(document.getElementById(button.dataset.menuButton), rect.right - 210, rect.bottom + 4, button);
      return;
    }
    if (openMenu && !openMenu.contains(event.target)) closeMenu(false);
  });
  window.addEventListener("resize", () => closeMenu(false));
  document.addEventListener("submit", () => closeMenu(false), true);
}
