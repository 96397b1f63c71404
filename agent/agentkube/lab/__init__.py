"""The lab: loopback-only emulators of everything a deployment talks to (Fulcrum Core, a Kamaji parent
cluster and its tenants' API servers, Proxmox VE through fakepve). Middle layer: imports only agentkube.core."""
