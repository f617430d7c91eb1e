"""Business rules, one package per domain. Never imports litestar or dramatiq."""
