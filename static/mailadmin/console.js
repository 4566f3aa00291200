// Entry point of the console's progressive enhancement. Every page works without it.
import { initTree } from "./tree.js";
import { initMenus } from "./menu.js";
import { initState } from "./state.js";
import { initSheet } from "./sheet.js";
import { initLive } from "./live.js";

initTree(document.querySelector("[role=tree]"));
initMenus();
initState(document.querySelector(".console"));
document.querySelectorAll("form[data-sheet]").forEach(initSheet);
initLive();

const toggle = document.querySelector("[data-tree-toggle]");
const pane = document.getElementById("tree-pane");
if (toggle && pane) {
  toggle.addEventListener("click", () => {
    const open = pane.classList.toggle("open");
    toggle.setAttribute("aria-expanded", String(open));
  });
}
