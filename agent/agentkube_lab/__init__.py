"""The lab: loopback-only emulators of everything a deployment talks to (Fulcrum Core, a Kamaji parent
cluster and its tenants' API servers, Proxmox VE through fakepve), and the demo story that runs the agent against
them. A package of its own in the agentkube-kamaji distribution; its dependencies come with the `lab` extra. It
stands on agentkube.core only, and the agent never imports it (only `agentkube lab` and `agentkube demo` do,
lazily)."""
