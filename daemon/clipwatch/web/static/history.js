// The history page: undo an action. No build step, no dependencies.
"use strict";
(function () {
  const said = document.getElementById("said");
  document.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-undo]");
    if (!button) return;
    button.disabled = true;
    const response = await fetch("/api/undo", {
      method: "POST", credentials: "same-origin", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({id: Number(button.dataset.undo)}),
    });
    const body = await response.json().catch(() => ({}));
    said.textContent = response.ok ? (body.said || []).join(" · ") : (body.error || `failed (${response.status})`);
    if (response.ok) button.replaceWith(document.createTextNode("undone"));
    else button.disabled = false;
  });
})();
