// The review queue: one-click and bulk decisions, keyboard shortcuts. No build step, no dependencies.
"use strict";
(function () {
  const said = document.getElementById("said");
  const items = () => Array.from(document.querySelectorAll(".queue .item"));
  let current = 0;

  async function decide(ids, decision) {
    if (!ids.length) return;
    const response = await fetch("/api/decide", {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({ids: ids.map(Number), decision: decision}),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) { said.textContent = body.error || `failed (${response.status})`; return; }
    said.textContent = (body.said || []).join(" · ");
    for (const id of ids) { const li = document.getElementById(`row-${id}`); if (li) li.remove(); }
    focus(Math.min(current, items().length - 1));
  }

  function focus(i) {
    const all = items();
    if (!all.length) return;
    current = Math.max(0, Math.min(i, all.length - 1));
    all.forEach((li, n) => li.classList.toggle("current", n === current));
    all[current].focus({preventScroll: true});
    all[current].scrollIntoView({block: "nearest"});
  }

  function selected() {
    const picked = Array.from(document.querySelectorAll(".pick:checked")).map((c) => c.value);
    if (picked.length) return picked;
    const li = items()[current];
    return li ? [li.dataset.id] : [];
  }

  async function move(deed, target, li) {
    const response = await fetch(`/api/${deed}`, {
      method: "POST", credentials: "same-origin", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({id: Number(target)}),
    });
    const body = await response.json().catch(() => ({}));
    said.textContent = response.ok ? (body.said || []).join(" · ") : (body.error || `failed (${response.status})`);
    if (response.ok && li) li.remove();
  }

  document.addEventListener("click", (event) => {
    const moving = event.target.closest("button[data-move]");
    if (moving) { move(moving.dataset.move, moving.dataset.target, moving.closest(".item")); return; }
    const button = event.target.closest("button[data-action], button[data-bulk]");
    if (!button) return;
    if (button.dataset.action) decide([button.closest(".item").dataset.id], button.dataset.action);
    else decide(Array.from(document.querySelectorAll(".pick:checked")).map((c) => c.value), button.dataset.bulk);
  });
  document.getElementById("select-all").addEventListener("change", (event) => {
    document.querySelectorAll(".pick").forEach((c) => { c.checked = event.target.checked; });
  });
  document.addEventListener("keydown", (event) => {
    if (event.target.matches("input:not([type=checkbox]), select, textarea") || event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.toLowerCase();
    if (key === "j") focus(current + 1);
    else if (key === "k") focus(current - 1);
    else if (key === "x") { const box = items()[current]?.querySelector(".pick"); if (box) box.checked = !box.checked; }
    else if (key === "d") decide(selected(), "dismissed");
    else if (key === "c") decide(selected(), "confirmed");
    else return;
    event.preventDefault();
  });
  focus(0);
})();
