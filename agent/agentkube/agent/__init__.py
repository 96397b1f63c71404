"""Upper layer: the agent loop that connects the Fulcrum client, the journal and the job runner."""
