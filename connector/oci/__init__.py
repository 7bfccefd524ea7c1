"""The OCI side: signed requests, credentials, regions and realms, retries and rate control,
and the listings of images and compartments."""
