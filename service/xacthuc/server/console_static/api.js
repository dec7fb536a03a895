// The console's JSON API. The API key lives in sessionStorage only (this tab, until it
// closes) and travels in the Authorization header, never in a URL.

const KEY = "xacthuc.apiKey";
const VKEY = "xacthuc.verifierKey";

export class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.reason = body.reason || "";
    this.metadata = body.metadata || {};
  }
}

export const session = {
  key: () => sessionStorage.getItem(KEY),
  setKey: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
  pinned: () => localStorage.getItem(VKEY) || "",
  pin: (value) => localStorage.setItem(VKEY, value.trim()),
};

function url(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") query.set(name, String(value));
  }
  const text = query.toString();
  return `api/${path}${text ? `?${text}` : ""}`;
}

async function call(path, params, key = session.key()) {
  return fetch(url(path, params), {
    headers: { Authorization: `Bearer ${key || ""}` },
    cache: "no-store",
    credentials: "omit",
    referrerPolicy: "no-referrer",
  });
}

export async function getJson(path, params, key) {
  const response = await call(path, params, key);
  const body = await response.json();
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}

export async function getBlob(path, params) {
  const response = await call(path, params);
  if (!response.ok) throw new ApiError(response.status, await response.json());
  return { blob: await response.blob(), range: response.headers.get("X-Record-Range") || "" };
}
