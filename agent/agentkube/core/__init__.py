"""Bottom layer: contracts and models (tenant spec, naming, Fulcrum job types, settings). No I/O."""
