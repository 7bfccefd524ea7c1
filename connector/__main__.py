"""``python -m connector``: the ``oci-images`` command."""

from connector.cli import main

raise SystemExit(main())
