"""The logic between the protocol models and the runtime: one module per endpoint family."""
