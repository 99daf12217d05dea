// The REST client of the UI: the bearer token (sessionStorage), fetch with Authorization, error
// bodies ({code, message, field?, errors?}) as ApiError, 401 -> back to the login page, and
// downloads through fetch (the token cannot ride on a plain link).

import { showNotice } from "./util.js";

export const API = "/api/v1";
const TOKEN_KEY = "normsearch.token";
const USER_KEY = "normsearch.user";
const FLASH_KEY = "normsearch.flash";
const NEXT_KEY = "normsearch.next";

export function getToken() { return sessionStorage.getItem(TOKEN_KEY); }
export function getUser() { return sessionStorage.getItem(USER_KEY) || ""; }

export function setSession(token, userName) {
  sessionStorage.setItem(TOKEN_KEY, token);
  sessionStorage.setItem(USER_KEY, userName || "");
}

export function clearSession() {
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(USER_KEY);
}

/** A message for the login page to show once (e.g. why the user was sent there). */
export function setFlash(message) { sessionStorage.setItem(FLASH_KEY, message); }
export function takeFlash() {
  const message = sessionStorage.getItem(FLASH_KEY);
  sessionStorage.removeItem(FLASH_KEY);
  return message;
}

/** Where to go after logging in (the page that sent the user to the login page). */
export function setNext(hash) { if (hash && !hash.startsWith("#/login")) sessionStorage.setItem(NEXT_KEY, hash); }
export function takeNext() {
  const hash = sessionStorage.getItem(NEXT_KEY);
  sessionStorage.removeItem(NEXT_KEY);
  return hash || "#/jobs";
}

export class ApiError extends Error {
  constructor(status, body, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.body = body;
  }
}

/** The token was refused: forget it and go to the login page with a message. */
export function sessionExpired(message) {
  clearSession();
  setFlash(message || "Your token was not accepted (401): log in again.");
  setNext(location.hash);
  location.hash = "#/login";
}

async function errorFrom(response) {
  const body = await response.json().catch(() => null); // not JSON: the status line only
  const message = (body && body.message) || `${response.status} ${response.statusText || "error"}`;
  return new ApiError(response.status, body, message);
}

/**
 * fetch() an API path with the token. Returns the parsed JSON body (``raw: true``: the Response).
 * Throws ApiError for an error status (401 also ends the session) or a network failure.
 */
export async function request(path, { method = "GET", json, yaml, headers = {}, signal,
  raw = false, token = getToken(), allow = [] } = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, signal };
  if (token) init.headers.Authorization = `Bearer ${token}`;
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = typeof json === "string" ? json : JSON.stringify(json);
  } else if (yaml !== undefined) { // a YAML text: the API parses it (POST /jobs, /spec/validate)
    init.headers["Content-Type"] = "application/yaml";
    init.body = yaml;
  }
  let response;
  try {
    response = await fetch(path.startsWith("/") ? path : `${API}/${path}`, init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw new ApiError(0, null, `The API could not be reached (${error.message}).`);
  }
  if (!response.ok && !allow.includes(response.status)) {
    const error = await errorFrom(response);
    if (response.status === 401 && token === getToken()) sessionExpired(
      `Your session ended (${error.message}). Log in again.`);
    throw error;
  }
  if (raw) return response;
  if (response.status === 204) return null;
  return response.json();
}

/** Show an error in the global notice (aborts and 401s are handled elsewhere). */
export function reportError(error) {
  if (!error || error.name === "AbortError") return;
  if (error instanceof ApiError && error.status === 401) return;
  console.error(error);
  showNotice(error.message || String(error));
}

/** The filename of a Content-Disposition header (RFC 6266: filename* before filename). */
export function dispositionFilename(header, fallback) {
  if (!header) return fallback;
  const star = /filename\*\s*=\s*([^']*)'[^']*'([^;]+)/i.exec(header);
  if (star) {
    try { return decodeURIComponent(star[2].trim().replace(/^"|"$/g, "")); } catch { /* below */ }
  }
  const plain = /filename\s*=\s*("([^"]*)"|[^;]+)/i.exec(header);
  if (plain) return (plain[2] ?? plain[1]).trim();
  return fallback;
}

/** Download an API file with the token: fetch -> Blob -> object URL -> <a download>. */
export async function download(path, fallbackName) {
  const response = await request(path, { raw: true, headers: { Accept: "*/*" } });
  const blob = await response.blob();
  const name = dispositionFilename(response.headers.get("Content-Disposition"), fallbackName);
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  link.hidden = true;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
  return name;
}
