"""socketio-webservice: a Socket.IO push service for several websites.

The layers, each a subpackage, import downward only (``tests/test_layers.py`` checks it):

    webservice  the configuration, the HTTP routes, the entry point
    transport   Socket.IO and HTTP in, actor messages out
    actors      one actor per connected user decides what its sockets get
    storage     the store contract, on SQLite or Redis
    sites       a site's settings, which every layer may use

Run it with ``socketio-webservice`` or ``python -m socketio_webservice``.
"""
