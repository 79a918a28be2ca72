"""Domain-free SVDD core: model interface, rewards, values, selection rules and decoders."""
