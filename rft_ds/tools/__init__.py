"""Side tools: each a command of its own, none imported by a pass (view, plot, convert, evaluate,
estimate-memory, check-hostfile, tiny-model, fetch-model) and the tool-call parser they share."""
