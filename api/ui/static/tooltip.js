// A visible tooltip for the charts' marks: the <title> of the SVG group under the pointer, in a
// box beside the pointer at once (the browser's own title tooltip comes late, and not at all in
// some browsers). The <title> stays for screen readers.

/** The text of the <title> child of the mark under ``target``; "" when there is none. */
export function markTitle(target) {
  const mark = target?.closest?.("svg g");
  if (!mark) return "";
  const title = [...mark.children].find((child) => child.tagName.toLowerCase() === "title");
  return title ? title.textContent.trim() : "";
}

/** Show chart tooltips inside ``container``; returns the function that removes them. */
export function installTooltip(container) {
  const tip = document.createElement("div");
  tip.className = "tooltip";
  tip.dataset.testid = "chart-tooltip";
  tip.setAttribute("role", "tooltip");
  tip.hidden = true;
  document.body.append(tip);

  function move(event) {
    const text = markTitle(event.target);
    if (!text) {
      tip.hidden = true;
      return;
    }
    if (tip.textContent !== text) tip.textContent = text;
    tip.hidden = false;
    // beside the pointer, kept inside the window
    const x = Math.min(event.clientX + 14, window.innerWidth - tip.offsetWidth - 6);
    const y = Math.min(event.clientY + 14, window.innerHeight - tip.offsetHeight - 6);
    tip.style.left = `${Math.max(6, x)}px`;
    tip.style.top = `${Math.max(6, y)}px`;
  }
  function hide() { tip.hidden = true; }

  container.addEventListener("pointermove", move);
  container.addEventListener("pointerleave", hide);
  return () => {
    container.removeEventListener("pointermove", move);
    container.removeEventListener("pointerleave", hide);
    tip.remove();
  };
}
