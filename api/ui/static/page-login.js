// #/login: ask for an API token, check it with GET /api/v1/me, keep it in sessionStorage.

import { ApiError, request, setSession, takeFlash, takeNext } from "./api.js";
import { showNotice } from "./util.js";

export function render(root) {
  root.innerHTML = `
    <section class="card login">
      <h1>Log in</h1>
      <p class="muted">Paste an API token. Create one with
        <code>normsearch token create --user NAME</code>; <code>make demo</code> saves one at
        <code>runs/demo-token</code>. The token is kept in this browser tab only.</p>
      <form id="login-form" autocomplete="off">
        <label for="token-input">API token</label>
        <input id="token-input" name="token" type="password" data-testid="token-input"
          spellcheck="false" autocomplete="off" required>
        <p class="form-error" data-testid="login-error" id="login-error" role="alert" hidden></p>
        <button type="submit" class="button primary" data-testid="login-button">Log in</button>
      </form>
    </section>`;
  const form = root.querySelector("#login-form");
  const input = root.querySelector("#token-input");
  const errorBox = root.querySelector("#login-error");
  const button = root.querySelector("[data-testid=login-button]");
  const flash = takeFlash();
  if (flash) showNotice(flash, "warning");
  input.focus();

  let alive = true;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = input.value.trim();
    errorBox.hidden = true;
    if (!token) {
      errorBox.textContent = "Enter a token.";
      errorBox.hidden = false;
      return;
    }
    button.disabled = true;
    try {
      const me = await request("/api/v1/me", { token });
      if (!alive) return;
      setSession(token, me.name);
      location.hash = takeNext();
    } catch (error) {
      if (!alive) return;
      errorBox.textContent = error instanceof ApiError && error.status === 401
        ? `This token was not accepted: ${error.message}`
        : error.message;
      errorBox.hidden = false;
    } finally {
      button.disabled = false;
    }
  });
  return () => { alive = false; };
}
