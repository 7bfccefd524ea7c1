"""A faithful stand-in for the OCI Compute ListImages and Identity APIs, for tests and demos."""

from connector.emulator.app import Behaviour, Emulator, Stats, TokenBucket
from connector.emulator.data import Compartment, Image, World, build_world
from connector.emulator.server import Credentials, EmulatorServer, write_oci_config

__all__ = [
    "Behaviour",
    "Compartment",
    "Credentials",
    "Emulator",
    "EmulatorServer",
    "Image",
    "Stats",
    "TokenBucket",
    "World",
    "build_world",
    "write_oci_config",
]
