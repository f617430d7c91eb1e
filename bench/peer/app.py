"""The peer's web app: FastAPI with async SQLAlchemy, as the FastAPI project templates build it.

One `AsyncSession` per request (a dependency), a JWT bearer token whose user is read from
the database on every request, pydantic bodies. `POST /api/v1/tasks` commits the task row,
then sends the Celery message with `.delay()` and answers 202 with the task.

Run with `uvicorn bench.peer.app:app` and the `PEER_*` environment (`bench.peer.settings`).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import VerifyMismatchError
from fastapi import Depends, FastAPI, HTTPException, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import OAuth2PasswordBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from bench.peer.models import Task, User
from bench.peer.settings import PeerSettings
from bench.peer.worker import run_demo

settings = PeerSettings.from_environment()
#: SQLAlchemy's default pool (5 connections + 10 overflow), as a template leaves it.
engine = create_async_engine(settings.database_url)
sessions = async_sessionmaker(engine, expire_on_commit=False)
#: Cheap hashing, as the service's benchmark sign-ups use (sign-up is not what is measured).
hasher = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
ALGORITHM = "HS256"
ACCESS_TOKEN_MINUTES = 60

app = FastAPI(title="peer")
bearer = OAuth2PasswordBearer(tokenUrl="/api/v1/auth/login")


# --- schemas ------------------------------------------------------------------------------------


class Registration(BaseModel):
    email: str = Field(max_length=320)
    username: str = Field(min_length=3, max_length=32, pattern=r"^[a-z0-9_.-]+$")
    password: str = Field(min_length=10, max_length=200)


class Credentials(BaseModel):
    username: str
    password: str


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    email: str
    username: str
    is_active: bool
    created_at: datetime


class AccessToken(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int


class DemoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int = Field(100, ge=1, le=10_000)
    step_ms: int = Field(100, ge=0, le=60_000)
    fail_at_step: int | None = Field(None, ge=1)


class TaskCreate(BaseModel):
    kind: Literal["demo"]
    title: str | None = Field(None, max_length=200)
    description: str | None = Field(None, max_length=2000)
    params: DemoParams = Field(default_factory=DemoParams)


class Progress(BaseModel):
    current: int
    total: int
    percent: float
    message: str | None


class TaskOut(BaseModel):
    id: uuid.UUID
    kind: str
    title: str
    description: str | None
    status: str
    progress: Progress
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, task: Task) -> TaskOut:
        percent = round(100 * task.progress_current / task.progress_total, 1) if task.progress_total else 0.0
        progress = Progress(
            current=task.progress_current, total=task.progress_total, percent=percent, message=task.progress_message
        )
        return cls(
            id=task.id,
            kind=task.kind,
            title=task.title,
            description=task.description,
            status=task.status,
            progress=progress,
            params=task.params,
            result=task.result,
            error=task.error,
            attempts=task.attempts,
            created_at=task.created_at,
            started_at=task.started_at,
            finished_at=task.finished_at,
        )


# --- dependencies -------------------------------------------------------------------------------


async def get_session() -> AsyncIterator[AsyncSession]:
    async with sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def current_user(session: SessionDep, token: Annotated[str, Depends(bearer)]) -> User:
    """The token's user, read from the database on every request (so a deactivated user is refused)."""
    challenge = {"WWW-Authenticate": "Bearer"}
    unauthorized = HTTPException(status.HTTP_401_UNAUTHORIZED, "Could not validate credentials", challenge)
    try:
        payload = jwt.decode(token, settings.secret_key, algorithms=[ALGORITHM])
        user_id = uuid.UUID(str(payload["sub"]))
    except (jwt.InvalidTokenError, KeyError, ValueError):
        raise unauthorized from None
    user = await session.get(User, user_id)
    if user is None or not user.is_active:
        raise unauthorized
    return user


CurrentUser = Annotated[User, Depends(current_user)]


# --- routes -------------------------------------------------------------------------------------


@app.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/api/v1/auth/register", status_code=status.HTTP_201_CREATED)
async def register(body: Registration, session: SessionDep) -> UserOut:
    taken = await session.scalar(select(User.id).where(or_(User.email == body.email, User.username == body.username)))
    if taken is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, "Email or username already taken")
    hashed = await run_in_threadpool(hasher.hash, body.password)
    user = User(email=body.email, username=body.username, hashed_password=hashed)
    session.add(user)
    await session.commit()
    await session.refresh(user)
    return UserOut.model_validate(user)


@app.post("/api/v1/auth/login")
async def login(body: Credentials, session: SessionDep) -> AccessToken:
    user = await session.scalar(select(User).where(or_(User.username == body.username, User.email == body.username)))
    try:
        if user is None or not user.is_active:
            raise VerifyMismatchError
        await run_in_threadpool(hasher.verify, user.hashed_password, body.password)
    except VerifyMismatchError:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "Incorrect username or password") from None
    expires = timedelta(minutes=ACCESS_TOKEN_MINUTES)
    claims = {"sub": str(user.id), "exp": datetime.now(UTC) + expires}
    token = jwt.encode(claims, settings.secret_key, algorithm=ALGORITHM)
    return AccessToken(access_token=token, expires_in=int(expires.total_seconds()))


@app.post("/api/v1/tasks", status_code=status.HTTP_202_ACCEPTED)
async def create_task(body: TaskCreate, session: SessionDep, user: CurrentUser, response: Response) -> TaskOut:
    """Commit the row first, then send the message: the worker must find the row it is told about."""
    task = Task(
        user_id=user.id,
        kind=body.kind,
        title=body.title or "Demo job",
        description=body.description,
        params=body.params.model_dump(exclude_none=True),
    )
    session.add(task)
    await session.commit()
    await session.refresh(task)
    run_demo.delay(str(task.id))
    response.headers["Location"] = f"/api/v1/tasks/{task.id}"
    return TaskOut.of(task)


@app.get("/api/v1/tasks/{task_id}")
async def read_task(task_id: uuid.UUID, session: SessionDep, user: CurrentUser) -> TaskOut:
    task = await session.get(Task, task_id)
    if task is None or task.user_id != user.id:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Task not found")
    return TaskOut.of(task)
