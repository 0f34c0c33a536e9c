"""``python -m webservice`` from a checkout, as the original's README and older scripts say:
the same as ``python -m socketio_webservice`` and the ``socketio-webservice`` command."""

from socketio_webservice.webservice.cli import main

main()
