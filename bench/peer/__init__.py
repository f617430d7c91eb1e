"""The peer of the pipeline benchmark: the stack the service replaces, built the way its users build it.

A FastAPI app on uvicorn with async SQLAlchemy (asyncpg), JWT bearer tokens looked up per
request, and a Celery worker on Redis (broker and result backend) whose task has the
shape of the service's `demo` kind: mark the row running, then per step
`update_state("PROGRESS")`, a row update and a Redis PUBLISH, then mark it succeeded and
insert a notification row. Only `bench.peer_pipeline` uses it; it is never part of the product.

- `settings`: where the peer's database and Redis are (environment variables `PEER_*`).
- `models`: its tables (users, tasks, notifications) and `create_schema`.
- `app`: the FastAPI app (`uvicorn bench.peer.app:app`).
- `worker`: the Celery app and its task (`celery -A bench.peer.worker worker`).
- `stack`: a throw-away copy of the peer (database, redis-server, processes) for a benchmark.
"""
