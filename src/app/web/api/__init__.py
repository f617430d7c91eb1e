"""The JSON API's controllers (`/api/v1/...`, `/health`, the OpenAPI document): thin doors into app.domain."""
