"""``python -m socketio_webservice``: run the push service (see ``--help``)."""

from .webservice.cli import main

main()
