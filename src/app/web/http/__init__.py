"""HTTP plumbing: middleware and the machinery every door shares (proxies, limits, credentials)."""
