"""``python -m connector``: the ``oci-images`` command."""

# Guarded: importing this module (as tools that list a package's modules do) runs nothing.
if __name__ == "__main__":
    from connector.cli import entry

    raise SystemExit(entry())
