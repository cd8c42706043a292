"""infer-client: load generation, metrics and GPU polling against one or more infer-servers."""
