// ESLint (flat config) for the web UI's JavaScript: eslint's recommended rules everywhere; the UI
// modules (api/ui/static) run in the browser, their unit tests (tests/ui/js) under `node --test`.
// `make js` runs it; package.json pins the versions.

import js from "@eslint/js";
import globals from "globals";

export default [
  { ignores: ["node_modules/", ".venv/"] },
  js.configs.recommended,
  {
    // Every file is an ES module (the UI has no build step: the browser loads these files).
    languageOptions: { ecmaVersion: 2024, sourceType: "module" },
    linterOptions: { reportUnusedDisableDirectives: "error" },
  },
  {
    files: ["api/ui/static/**/*.js"],
    languageOptions: { globals: globals.browser },
  },
  {
    files: ["tests/ui/js/**/*.{js,mjs}", "eslint.config.js"],
    languageOptions: { globals: globals.node },
  },
];
