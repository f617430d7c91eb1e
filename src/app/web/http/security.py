"""Security headers on every response.

Pages load scripts and styles from this origin only and run no inline script. The
interactive API docs at /schema are the one exception: Swagger UI boots from an inline
script (its files still come from this origin).

When PUBLIC_BASE_URL is https, Strict-Transport-Security tells browsers to use https only
for a year (a TLS proxy in front makes the request itself look like http here). Pages
opened from emailed links have a token in their path: they send no Referer at all.
"""

from __future__ import annotations

from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.config.redaction import TOKEN_PATHS

STRICT_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'self'; "
    "form-action 'self'; frame-ancestors 'none'"
)
DOCS_CSP = STRICT_CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'").replace(
    "style-src 'self'", "style-src 'self' 'unsafe-inline'"
)
COMMON = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "strict-origin-when-cross-origin",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}
HSTS = "max-age=31536000; includeSubDomains"


class SecurityHeadersMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, docs_path: str = "/schema", *, https: bool = False) -> None:
        self.docs_path = docs_path
        self.common = {**COMMON, "strict-transport-security": HSTS} if https else COMMON

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        path: str = scope["path"]
        csp = DOCS_CSP if path == self.docs_path or path.startswith(self.docs_path + "/") else STRICT_CSP
        secret_path = path.startswith(TOKEN_PATHS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                headers.setdefault("content-security-policy", csp)
                if secret_path:
                    headers["referrer-policy"] = "no-referrer"
                for name, value in self.common.items():
                    headers.setdefault(name, value)
            await send(message)

        await next_app(scope, receive, send_with_headers)
