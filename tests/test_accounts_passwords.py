"""Password hashing: hashes made with older argon2 parameters are upgraded at the next sign-in."""

from __future__ import annotations

import httpx
from argon2 import PasswordHasher, Type
from argon2 import extract_parameters as parameters
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import get_settings
from app.domain.accounts.models import User
from app.domain.accounts.passwords import Passwords
from tests.accounts import PASSWORD, new_identity
from tests.servers import LiveServer


async def test_verify_without_a_hash_never_matches() -> None:
    passwords = Passwords(get_settings())
    assert await passwords.verify(None, PASSWORD) == (False, False)
    assert await passwords.verify(None, "") == (False, False)
    assert await passwords.verify("not an argon2 hash", PASSWORD) == (False, False)
    made = await passwords.hash(PASSWORD)
    assert await passwords.verify(made, PASSWORD) == (True, False)
    assert await passwords.verify(made, PASSWORD + "!") == (False, False)


async def stored_hash(db_session: AsyncSession, username: str) -> str:
    await db_session.rollback()  # a fresh look at what the server committed
    password_hash = await db_session.scalar(select(User.password_hash).where(User.username == username))
    assert password_hash is not None
    return password_hash


async def test_a_hash_with_other_parameters_is_rehashed_at_the_next_sign_in(
    live_server: LiveServer, db_session: AsyncSession
) -> None:
    settings = get_settings()
    identity = new_identity()
    credentials = {"username": identity["username"], "password": PASSWORD}
    with httpx.Client(base_url=live_server.url + "/api/v1", timeout=20) as api:
        assert api.post("/auth/register", json=identity).status_code == 201
        # The account's hash was made under other (older) parameters.
        older = PasswordHasher(time_cost=2, memory_cost=4096, parallelism=2, type=Type.ID).hash(PASSWORD)
        user = await db_session.scalar(select(User).where(User.username == identity["username"]))
        assert user is not None
        user.password_hash = older
        await db_session.commit()

        wrong = api.post("/auth/login", json={"username": identity["username"], "password": "wrong password!"})
        assert wrong.status_code == 401
        assert await stored_hash(db_session, identity["username"]) == older  # a failed sign-in changes nothing

        assert api.post("/auth/login", json=credentials).status_code == 200
        rehashed = await stored_hash(db_session, identity["username"])
        assert rehashed != older
        now = parameters(rehashed)
        assert (now.time_cost, now.memory_cost, now.parallelism, now.type) == (
            settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism, Type.ID,
        )  # fmt: skip
        assert PasswordHasher().verify(rehashed, PASSWORD)

        # The next sign-in finds nothing to upgrade.
        assert api.post("/auth/login", json=credentials).status_code == 200
        assert await stored_hash(db_session, identity["username"]) == rehashed
