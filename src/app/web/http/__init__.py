"""HTTP plumbing that every door shares: who is calling (auth, credentials, proxies), limits, input guards,
errors as problem details, request ids, security headers, draining, channels, metrics and static assets."""
