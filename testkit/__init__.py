"""Real parts that the tests and the bench both start: a private redis-server, the service
as a process, free ports, a sites.yml. Not part of the installed package."""
