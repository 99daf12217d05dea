// The single-page app: hash routes (#/login, #/jobs, #/new, #/jobs/<id>), the navigation bar and
// the login guard. Each page's render(root, params) returns a cleanup function (stops its
// timers and streams) that runs before the next page renders.

import { clearSession, getToken, getUser, reportError, setFlash, setNext } from "./api.js";
import { clearNotice } from "./util.js";
import { loadVocabulary, vocabularyLoaded } from "./vocabulary.js";
import * as jobPage from "./page-job.js";
import * as jobsPage from "./page-jobs.js";
import * as loginPage from "./page-login.js";
import * as newPage from "./page-new.js";

const ROUTES = [
  { pattern: /^#\/login$/, page: loginPage, nav: null, open: true },
  { pattern: /^#\/jobs(?:\?.*)?$/, page: jobsPage, nav: "jobs" },
  { pattern: /^#\/new$/, page: newPage, nav: "new" },
  { pattern: /^#\/jobs\/([0-9a-f]{32})$/, page: jobPage, nav: "jobs" },
];

let cleanup = null;
let awaitingVocabulary = false;

function updateNav(active) {
  const nav = document.getElementById("nav");
  const loggedIn = Boolean(getToken());
  nav.hidden = !loggedIn;
  document.getElementById("nav-user").textContent = loggedIn ? getUser() : "";
  for (const link of nav.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === active);
  }
}

function route() {
  const hash = location.hash;
  const match = ROUTES.map((r) => [r, r.pattern.exec(hash)]).find(([, m]) => m);
  if (!match) {
    location.replace("#/jobs"); // "/" and unknown routes: the jobs list (hashchange follows)
    return;
  }
  const [target, params] = match;
  if (!target.open && !getToken()) {
    setNext(hash);
    location.replace("#/login");
    return;
  }
  // The pages read the API's vocabulary: fetch it once (after login), then route again (to the
  // hash of that moment).
  if (!target.open && !vocabularyLoaded()) {
    if (!awaitingVocabulary) {
      awaitingVocabulary = true;
      loadVocabulary().then(() => { awaitingVocabulary = false; route(); }, (error) => {
        awaitingVocabulary = false;
        reportError(error);
      });
    }
    return;
  }
  if (typeof cleanup === "function") {
    try { cleanup(); } catch (error) { console.error(error); }
  }
  cleanup = null;
  clearNotice();
  updateNav(target.nav);
  const view = document.getElementById("view");
  view.replaceChildren();
  view.dataset.page = target.nav || "login";
  cleanup = target.page.render(view, params.slice(1));
  window.scrollTo(0, 0);
}

document.getElementById("logout").addEventListener("click", () => {
  clearSession();
  setFlash("You are logged out.");
  location.hash = "#/login";
});
document.getElementById("notice-close").addEventListener("click", clearNotice);
window.addEventListener("hashchange", route);
// A nav link to the page already shown: no hashchange, so re-render (fresh data).
document.getElementById("nav").addEventListener("click", (event) => {
  const link = event.target.closest("a[href]");
  if (link && link.getAttribute("href") === location.hash) route();
});
route();
