"""HTML pages rendered with Jinja and enhanced with htmx."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.domain.accounts.errors import InvalidCredentials
from app.domain.accounts.passwords import Passwords
from app.domain.accounts.services import AccountService
from app.web.accounts import client_address
from app.web.auth import sign_in_browser, sign_out_browser
from app.web.limits import Limiter


class LoginForm(msgspec.Struct, frozen=True):
    username: str
    password: str


class PagesController(Controller):
    include_in_schema = False

    @get("/", name="home")
    async def home(self) -> Template:
        return Template(template_name="index.html")

    @get("/login", name="login")
    async def login_page(self) -> Template:
        return Template(template_name="login.html")

    @post("/login")
    async def login(
        self,
        request: Request[Any, Any, Any],
        data: Annotated[LoginForm, Body(media_type=RequestEncodingType.URL_ENCODED)],
        db_session: NamedDependency[AsyncSession],
        passwords: NamedDependency[Passwords],
        limiter: NamedDependency[Limiter],
        settings: NamedDependency[Settings],
    ) -> Template | Redirect:
        key = f"login:{data.username.strip().lower()}:{client_address(request)}"
        await limiter.refuse_if_over(key, settings.login_failures_per_window, settings.login_window_seconds)
        try:
            user = await AccountService(db_session, passwords, settings).authenticate(data.username, data.password)
        except InvalidCredentials:
            await limiter.count(key, settings.login_window_seconds)
            return Template(
                template_name="login.html",
                context={"error": "Wrong username or password.", "username": data.username},
                status_code=401,
            )
        await limiter.clear(key)
        sign_in_browser(request, user)
        return Redirect(path="/", status_code=303)

    @post("/logout")
    async def logout(self, request: Request[Any, Any, Any]) -> Redirect:
        sign_out_browser(request)
        return Redirect(path="/", status_code=303)
