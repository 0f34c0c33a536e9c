"""The top layer: configuration, logging, metrics, the HTTP routes, the service that builds
everything, and the command line (``cli.main``)."""
