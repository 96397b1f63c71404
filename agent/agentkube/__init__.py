"""AgentKube-Kamaji: a Fulcrum Core agent for Kubernetes tenant clusters on Kamaji and Proxmox VE.

Layers (enforced by import-linter, see pyproject.toml):
  cli > demo > agent > adapters | lab > core
"""

__version__ = "0.1.0"
