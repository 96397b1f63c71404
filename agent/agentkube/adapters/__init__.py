"""Middle layer: adapters to the outside (Fulcrum HTTP client, ansible-runner, the SQLite journal).
Imports only agentkube.core; never the agent loop or the CLI."""
