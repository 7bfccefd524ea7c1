"""``python -m connector``: the ``oci-images`` command."""

# Guarded: worker processes re-import the main module (as multiprocessing does).
if __name__ == "__main__":
    from connector.cli import entry

    raise SystemExit(entry())
