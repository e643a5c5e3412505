"""A small landing page and the first-run setup form, served without any build step."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from waystation import __version__

router = APIRouter(include_in_schema=False)

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem;line-height:1.5;
color:#1b1f24;background:#f6f8fa}
@media (prefers-color-scheme:dark){body{color:#e6edf3;background:#0d1117}a{color:#58a6ff}}
label{display:block;margin-top:1rem}input{font:inherit;padding:.4rem;width:100%;box-sizing:border-box}
button{margin-top:1rem;font:inherit;padding:.5rem 1rem}#msg{margin-top:1rem;font-weight:600}
"""

_LANDING = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>Waystation</title>
<style>{_STYLE}</style></head><body>
<h1>Waystation {__version__}</h1>
<p>The station is running.</p>
<ul>
<li><a href="/api/docs">API documentation</a> (log in with <code>POST /api/v1/auth/login</code>)</li>
<li><a href="/readyz">Readiness</a> · <a href="/metrics">Metrics</a></li>
</ul>
</body></html>"""

_SETUP = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>Waystation setup</title>
<style>{_STYLE}</style></head><body>
<h1>Create the owner account</h1>
<form id="f">
<label for="u">Username</label><input id="u" name="username" autocomplete="username" required>
<label for="p">Password (at least 8 characters)</label>
<input id="p" name="password" type="password" autocomplete="new-password" minlength="8" required>
<button type="submit">Create owner</button></form>
<p id="msg" role="status"></p>
<script>
const token = new URLSearchParams(location.search).get("token") || "";
document.getElementById("f").addEventListener("submit", async (e) => {{
  e.preventDefault();
  const body = {{token, username: e.target.username.value, password: e.target.password.value}};
  const r = await fetch("/api/v1/auth/setup", {{method: "POST",
    headers: {{"Content-Type": "application/json"}}, body: JSON.stringify(body)}});
  const data = await r.json();
  document.getElementById("msg").textContent = r.ok
    ? "Owner created. You can now log in through the API." : (data.detail || "Setup failed");
}});
</script></body></html>"""


@router.get("/", response_class=HTMLResponse)
async def landing() -> str:
    return _LANDING


@router.get("/setup", response_class=HTMLResponse)
async def setup_page() -> str:
    return _SETUP
