"""Jobs: sign up, start long-running background jobs, watch them live, get notified when they end."""
