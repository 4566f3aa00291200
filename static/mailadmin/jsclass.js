// Loaded in <head> before the body renders, so styles keyed on .js/.no-js apply at once
// (a file, not an inline script: the Content-Security-Policy runs no inline code).
document.documentElement.className = "js";
