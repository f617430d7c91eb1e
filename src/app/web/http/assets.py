"""Static files under content-hashed names, so browsers may cache them for a year.

At start-up every file below `static/` (the project's own and the npm packages the
build copied into `static/vendor/`) gets a name with the first 12 hex digits of its
SHA-256 (`app.css` -> `app.3f2a1b9c0d4e.css`, `htmx.min.js` -> `htmx.min.3f2a1b9c0d4e.js`).
Templates ask `static_url('app.css')`.
A hashed name is served as immutable; a plain name still works, revalidated each time.
"""

from __future__ import annotations

import hashlib
import mimetypes
from pathlib import Path, PurePosixPath

from litestar import get
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.response import File

STATIC_DIR = Path(__file__).parents[1] / "static"
URL_PREFIX = "/static"
IMMUTABLE = CacheControlHeader(public=True, max_age=31_536_000, immutable=True)
REVALIDATE = CacheControlHeader(no_cache=True)


def _hashed_name(relative: PurePosixPath, digest: str) -> str:
    return str(relative.with_name(f"{relative.stem}.{digest}{relative.suffix}"))


class StaticAssets:
    def __init__(self, root: Path = STATIC_DIR) -> None:
        self.root = root
        self.urls: dict[str, str] = {}
        self.files: dict[str, tuple[Path, bool]] = {}
        for path in sorted(root.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            relative = PurePosixPath(path.relative_to(root).as_posix())
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
            hashed = _hashed_name(relative, digest)
            self.urls[str(relative)] = f"{URL_PREFIX}/{hashed}"
            self.files[hashed] = (path, True)
            self.files[str(relative)] = (path, False)

    def url(self, name: str) -> str:
        """The cache-busting URL of a static file; a missing file is a programming error."""
        try:
            return self.urls[name]
        except KeyError:
            raise LookupError(f"No static file {name!r}: did the build copy the npm packages (make assets)?") from None

    def has(self, name: str) -> bool:
        return name in self.urls


@get(f"{URL_PREFIX}/{{name:path}}", include_in_schema=False, sync_to_thread=False, opt={"skip_logging": True})
def serve_static(name: FromPath[str], assets: NamedDependency[StaticAssets]) -> File:
    found = assets.files.get(name.lstrip("/"))
    if found is None:
        raise NotFoundException(detail=f"No static file {name}")
    path, immutable = found
    cache = IMMUTABLE if immutable else REVALIDATE
    # The type comes from the file's own name (a hashed URL has none Litestar would guess from);
    # with `nosniff`, a browser runs no script and applies no style served as octet-stream.
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return File(
        path,
        media_type=media_type,
        content_disposition_type="inline",
        headers={cache.HEADER_NAME: cache.to_header()},
    )
