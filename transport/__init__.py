"""Socket.IO and HTTP in, actor messages out: one namespace per site, POST /send, the node bus
between nodes, the auth gate, and in ``socketio_adapter`` every use of python-socketio and
python-engineio internals. It decides nothing about delivery."""
