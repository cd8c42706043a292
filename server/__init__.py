"""infer-server: a ZeroMQ ROUTER serving a (compiled) ResNet-18 through a thread pool."""
