"""The web door: the Litestar app factory, API controllers, htmx pages and the live stream."""
